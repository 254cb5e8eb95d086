//! SigV4 header authentication of a task's request with its own secret,
//! with the gateway's rules: every `x-amz-*` header sent is signed, and the
//! request's date is within the allowed skew.

use http::HeaderMap;
use insitu_sigv4 as v4;

/// How far a request's date may be from the node's clock, as for S3.
const MAX_SKEW_SECS: i64 = 15 * 60;

/// Why a request was refused (an S3 error code and message).
#[derive(Debug)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// The access key a request claims, if it carries a SigV4 header.
pub fn access_key(headers: &HeaderMap) -> Result<(String, v4::AuthorizationHeader), Refused> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refused(
                "AccessDenied",
                "a task's requests must be signed with its credentials",
            )
        })?;
    let auth = v4::parse_authorization(value).ok_or_else(|| {
        refused(
            "AuthorizationHeaderMalformed",
            "the Authorization header is malformed",
        )
    })?;
    Ok((auth.access_key_id.clone(), auth))
}

/// Checks `auth` over the request with `secret`.
pub fn verify(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    auth: &v4::AuthorizationHeader,
    secret: &str,
    now: i64,
) -> Result<(), Refused> {
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(refused("AccessDenied", "the host header must be signed"));
    }
    for name in headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-amz-") && !signed.contains(&n) {
            return Err(refused(
                "AccessDenied",
                format!("{n} is sent but not signed"),
            ));
        }
    }
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused("AccessDenied", "x-amz-date is missing"))?;
    let t = v4::parse_amz_date(date)
        .ok_or_else(|| refused("AccessDenied", "x-amz-date is not a date"))?;
    if (now - t).abs() > MAX_SKEW_SECS {
        return Err(refused(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        ));
    }
    if !date.starts_with(&auth.scope.date) || auth.scope.service != "s3" {
        return Err(refused(
            "AccessDenied",
            "the credential scope does not match the request",
        ));
    }
    let mut canonical_headers = Vec::with_capacity(signed.len());
    for name in &signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| v4::canonical_header_value(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() {
            return Err(refused(
                "AccessDenied",
                format!("signed header {name} is missing"),
            ));
        }
        canonical_headers.push((name.to_string(), values.join(",")));
    }
    let payload = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused("AccessDenied", "x-amz-content-sha256 is missing"))?;
    let canonical = v4::canonical_request(
        method,
        &v4::canonical_uri(raw_path),
        &v4::canonical_query(raw_query, None),
        &canonical_headers,
        &auth.signed_headers,
        payload,
    );
    let to_sign = v4::string_to_sign(date, &auth.scope.as_string(), &canonical);
    let key = v4::SigningKey::derive(secret, &auth.scope)
        .ok_or_else(|| refused("AccessDenied", "the credential scope's date is not a date"))?;
    if !v4::signatures_match(&key.sign(&to_sign), &auth.signature) {
        return Err(refused(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(())
}
