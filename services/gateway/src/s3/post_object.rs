//! POST Object: browser uploads with an HTML form, authorised by a SigV4
//! signed policy document instead of a signed request.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use insitu_catalog::ObjectHeaders;
use serde_json::Value;

use super::access::writable_bucket;
use super::put::{commit_object, store_body, validate_key};
use super::{xml, S3Request};
use crate::auth::sigv2;
use crate::auth::sigv4::{self, SigningKey};
use crate::auth::{Authenticator, Principal};
use crate::body::{BodyExpectations, ChecksumClaim};
use crate::checksum;
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{MAX_POST_FIELDS, MAX_POST_FIELD_BYTES, MAX_POST_FORM_BYTES, MAX_PUT_BYTES};
use crate::Gateway;

fn malformed(msg: impl Into<String>) -> S3Error {
    S3Error::new(S3ErrorCode::MalformedPostRequest, msg)
}

fn policy_error(msg: impl Into<String>) -> S3Error {
    S3Error::new(
        S3ErrorCode::AccessDenied,
        format!("Invalid according to Policy: {}", msg.into()),
    )
}

/// Fields that need no policy condition. A checksum can only make the
/// upload fail, so it grants nothing the policy would have to allow.
fn exempt(name: &str) -> bool {
    matches!(
        name,
        "policy" | "x-amz-signature" | "file" | "awsaccesskeyid" | "signature"
    ) || name.starts_with("x-ignore-")
        || checksum::from_header_name(name).is_some()
        || name == "x-amz-checksum-algorithm"
}

/// Checks a decoded policy document against the form. Returns the allowed
/// content length range.
pub(super) fn check_policy(
    policy: &Value,
    fields: &BTreeMap<String, String>,
    now: i64,
) -> S3Result<(u64, u64)> {
    let expiration = policy
        .get("expiration")
        .and_then(Value::as_str)
        .filter(|e| is_iso8601_utc(e))
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .ok_or_else(|| {
            S3Error::new(
                S3ErrorCode::InvalidPolicyDocument,
                "Invalid Policy: Invalid 'expiration' value.",
            )
        })?;
    if expiration.timestamp() < now {
        return Err(policy_error("Policy expired."));
    }
    let conditions = policy
        .get("conditions")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            S3Error::new(
                S3ErrorCode::InvalidPolicyDocument,
                "Invalid Policy: missing conditions.",
            )
        })?;
    let mut covered = std::collections::BTreeSet::new();
    let mut range = (0, MAX_PUT_BYTES);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    for c in conditions {
        match c {
            Value::Object(map) => {
                if map.len() != 1 {
                    return Err(S3Error::new(
                        S3ErrorCode::InvalidPolicyDocument,
                        "Invalid Policy: a condition object holds exactly one field.",
                    ));
                }
                for (k, v) in map {
                    let k = k.to_ascii_lowercase();
                    let want = v.as_str().unwrap_or_default();
                    if field(&k) != want {
                        return Err(policy_error(format!(
                            "Policy Condition failed: [\"eq\", \"${k}\", \"{want}\"]"
                        )));
                    }
                    covered.insert(k);
                }
            }
            Value::Array(a) if a.len() == 3 => {
                let op = a[0].as_str().unwrap_or_default().to_ascii_lowercase();
                if op == "content-length-range" {
                    let bound = |v: &Value| {
                        v.as_u64().ok_or_else(|| {
                            S3Error::new(
                                S3ErrorCode::InvalidPolicyDocument,
                                "Invalid Policy: content-length-range takes two non-negative integers.",
                            )
                        })
                    };
                    let (min, max) = (bound(&a[1])?, bound(&a[2])?);
                    range = (min, max.min(MAX_PUT_BYTES));
                    continue;
                }
                let name = a[1]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('$')
                    .to_ascii_lowercase();
                let want = a[2].as_str().unwrap_or_default();
                let ok = match op.as_str() {
                    "eq" => field(&name) == want,
                    "starts-with" => field(&name).starts_with(want),
                    _ => {
                        return Err(S3Error::new(
                            S3ErrorCode::InvalidPolicyDocument,
                            format!("Invalid Policy: unknown condition {op:?}"),
                        ))
                    }
                };
                if !ok {
                    return Err(policy_error(format!(
                        "Policy Condition failed: [\"{op}\", \"${name}\", \"{want}\"]"
                    )));
                }
                covered.insert(name);
            }
            _ => {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidPolicyDocument,
                    "Invalid Policy: malformed condition.",
                ))
            }
        }
    }
    for name in fields.keys() {
        if !exempt(name) && name != "bucket" && !covered.contains(name) {
            return Err(policy_error(format!("Extra input fields: {name}")));
        }
    }
    Ok(range)
}

/// S3's policy `expiration`: ISO 8601 in UTC, `2026-01-01T12:00:00Z` or
/// with fractions of a second; other RFC 3339 spellings (a space for the
/// `T`, an offset) are refused as S3 refuses them.
fn is_iso8601_utc(e: &str) -> bool {
    let b = e.as_bytes();
    b.len() >= 20 && b[10] == b'T' && b[b.len() - 1] == b'Z'
}

/// Verifies the form's SigV4 policy signature and returns the signer.
async fn authenticate_form(
    gw: &Gateway,
    fields: &BTreeMap<String, String>,
    now: i64,
) -> S3Result<(Principal, (u64, u64))> {
    let auth = Authenticator {
        catalog: gw.catalog.as_ref(),
        root: &gw.config.root,
        region: &gw.config.region,
    };
    let Some(signature) = fields.get("x-amz-signature") else {
        if let Some(akid) = fields.get("awsaccesskeyid") {
            return authenticate_form_v2(&auth, akid, fields, now).await;
        }
        if fields.contains_key("policy") {
            return Err(malformed("A policy was given without x-amz-signature."));
        }
        return Ok((Principal::Anonymous, (0, MAX_PUT_BYTES)));
    };
    if fields.get("x-amz-algorithm").map(String::as_str) != Some(sigv4::ALGORITHM) {
        return Err(malformed("x-amz-algorithm must be AWS4-HMAC-SHA256"));
    }
    let cred = fields
        .get("x-amz-credential")
        .ok_or_else(|| malformed("x-amz-credential is missing"))?;
    let (akid, scope) =
        sigv4::parse_credential(cred).ok_or_else(|| malformed("x-amz-credential is malformed"))?;
    let policy_b64 = fields
        .get("policy")
        .ok_or_else(|| malformed("policy is missing"))?;
    auth.check_scope(&scope, S3ErrorCode::InvalidArgument)?;
    let (principal, secret) = auth.lookup(&akid).await?;
    let key = SigningKey::derive(&secret, &scope)
        .ok_or_else(|| malformed("x-amz-credential has a bad date"))?;
    if !sigv4::signatures_match(&key.sign(policy_b64), signature) {
        return Err(S3Error::new(
            S3ErrorCode::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    let range = checked_policy(policy_b64, fields, now)?;
    Ok((principal, range))
}

/// A SigV2 form: `AWSAccessKeyId`, `policy`, and `signature`, the base64
/// HMAC-SHA1 of the policy as sent.
async fn authenticate_form_v2(
    auth: &Authenticator<'_>,
    akid: &str,
    fields: &BTreeMap<String, String>,
    now: i64,
) -> S3Result<(Principal, (u64, u64))> {
    let policy_b64 = fields
        .get("policy")
        .ok_or_else(|| malformed("policy is missing"))?;
    let signature = fields
        .get("signature")
        .ok_or_else(|| malformed("signature is missing"))?;
    let (principal, secret) = auth.lookup(akid).await?;
    if !sigv4::signatures_match(&sigv2::sign(&secret, policy_b64), signature) {
        return Err(S3Error::new(
            S3ErrorCode::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    let range = checked_policy(policy_b64, fields, now)?;
    Ok((principal, range))
}

/// The policy document decoded and checked against the form's fields:
/// the allowed content length.
fn checked_policy(
    policy_b64: &str,
    fields: &BTreeMap<String, String>,
    now: i64,
) -> S3Result<(u64, u64)> {
    let policy_json = base64::engine::general_purpose::STANDARD
        .decode(policy_b64.trim())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| {
            S3Error::new(
                S3ErrorCode::InvalidPolicyDocument,
                "Invalid Policy: the policy is not base64-encoded JSON.",
            )
        })?;
    check_policy(&policy_json, fields, now)
}

pub async fn post_object(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?.to_string();
    let content_type = req.header("content-type").unwrap_or_default().to_string();
    if !content_type.starts_with("multipart/form-data") {
        return Err(S3Error::new(
            S3ErrorCode::MethodNotAllowed,
            "The specified method is not allowed against this resource.",
        ));
    }
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| malformed(format!("bad multipart boundary: {e}")))?;
    let raw = req.take_raw_body().into_data_stream();
    let mut form = multer::Multipart::new(raw, boundary);
    let mut fields = BTreeMap::new();
    let mut total_field_bytes = 0usize;
    let file = loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| {
                malformed(format!(
                    "The body of your POST request is not well-formed multipart/form-data: {e}"
                ))
            })?
            .ok_or_else(|| {
                S3Error::invalid_argument("POST requires exactly one file upload per request.")
            })?;
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if name == "file" {
            break field;
        }
        // Fields are read before the policy is checked, so their number and
        // total size are capped: an anonymous form must not fill memory.
        if fields.len() >= MAX_POST_FIELDS {
            return Err(malformed("too many form fields"));
        }
        let mut value = Vec::new();
        let mut field = field;
        while let Some(chunk) = field.chunk().await.map_err(|e| malformed(e.to_string()))? {
            if value.len() + chunk.len() > MAX_POST_FIELD_BYTES {
                return Err(malformed(format!("form field {name} is too long")));
            }
            total_field_bytes += chunk.len();
            if total_field_bytes > MAX_POST_FORM_BYTES {
                return Err(malformed("the form fields are too large"));
            }
            value.extend_from_slice(&chunk);
        }
        fields.insert(name, String::from_utf8_lossy(&value).into_owned());
    };
    fields.insert("bucket".to_string(), bucket.clone());
    // The key's `${filename}` is the file's name, and the policy's
    // conditions hold for the key that results, as in S3.
    let filename = file.file_name().unwrap_or_default().to_string();
    if let Some(k) = fields.get_mut("key") {
        *k = k.replace("${filename}", &filename);
    }
    let now = chrono::Utc::now().timestamp();
    let (principal, (min_len, max_len)) = authenticate_form(gw, &fields, now).await?;
    let b = writable_bucket(gw, &principal, &bucket).await?;

    let key = fields
        .get("key")
        .ok_or_else(|| S3Error::invalid_argument("Bucket POST must contain a field named 'key'."))?
        .clone();
    validate_key(&key)?;
    let owner = principal.tenant().unwrap_or(&b.owner).to_string();
    let acl = match fields.get("acl") {
        None => Default::default(),
        Some(a) => insitu_catalog::Acl::from_canned(a, &owner, &b.owner)
            .ok_or_else(|| S3Error::invalid_argument(format!("Unsupported canned ACL {a:?}")))?,
    };
    let mut headers = ObjectHeaders {
        content_type: fields
            .get("content-type")
            .cloned()
            .or_else(|| file.content_type().map(ToString::to_string)),
        cache_control: fields.get("cache-control").cloned(),
        content_disposition: fields.get("content-disposition").cloned(),
        content_encoding: fields.get("content-encoding").cloned(),
        expires: fields.get("expires").cloned(),
        ..Default::default()
    };
    let mut meta_bytes = 0;
    for (k, v) in &fields {
        let stored_as_header = k.starts_with("x-amz-meta-")
            || matches!(
                k.as_str(),
                "content-type"
                    | "cache-control"
                    | "content-disposition"
                    | "content-encoding"
                    | "expires"
            );
        if stored_as_header {
            super::put::check_header_value(k, v)?;
        }
        if let Some(m) = k.strip_prefix("x-amz-meta-") {
            meta_bytes += m.len() + v.len();
            headers.user_metadata.insert(m.to_string(), v.clone());
        }
    }
    if meta_bytes > crate::limits::MAX_USER_METADATA_BYTES {
        return Err(S3Error::new(
            S3ErrorCode::MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size (2 KB).",
        ));
    }
    let body = file
        .map_err(|e| {
            S3Error::new(
                S3ErrorCode::IncompleteBody,
                format!("The file upload was incomplete: {e}"),
            )
        })
        .boxed();
    let mut claims = fields
        .iter()
        .filter_map(|(k, v)| Some((checksum::from_header_name(k)?, v.clone())));
    let claim = claims.next();
    if claims.next().is_some() {
        return Err(S3Error::invalid_request(
            "Expecting a single x-amz-checksum- field. Multiple checksum Types are not allowed.",
        ));
    }
    let expect = BodyExpectations {
        max_length: max_len,
        checksum: claim.map(|(alg, v)| (alg, ChecksumClaim::Header(v))),
        ..Default::default()
    };
    let stored = store_body(gw, body, expect, None).await.map_err(|e| {
        if e.code == S3ErrorCode::EntityTooLarge {
            S3Error::new(
                S3ErrorCode::EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed size",
            )
        } else {
            e
        }
    })?;
    if stored.blob.size < min_len {
        gw.nodes
            .delete_everywhere(&stored.blob.id, &stored.blob.replicas)
            .await;
        return Err(S3Error::new(
            S3ErrorCode::EntityTooSmall,
            "Your proposed upload is smaller than the minimum allowed size",
        ));
    }
    let rec = commit_object(
        gw,
        &b,
        &key,
        (owner, acl),
        headers,
        &stored,
        &insitu_catalog::WriteCondition::None,
    )
    .await?;
    let etag = format!("\"{}\"", rec.etag);
    let location = format!("/{bucket}/{key}");
    if let Some(redirect) = fields
        .get("success_action_redirect")
        .filter(|r| !r.is_empty())
    {
        let sep = if redirect.contains('?') { '&' } else { '?' };
        let target = format!(
            "{redirect}{sep}bucket={}&key={}&etag={}",
            sigv4::uri_encode(&bucket, false),
            sigv4::uri_encode(&key, false),
            sigv4::uri_encode(&etag, false)
        );
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(http::header::LOCATION, target)
            .header(http::header::ETAG, &etag)
            .body(Body::empty())
            .map_err(super::built_error);
    }
    match fields.get("success_action_status").map(String::as_str) {
        Some("200") => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::ETAG, &etag)
            .body(Body::empty())
            .map_err(super::built_error),
        Some("201") => {
            let mut r = xml::to_response(
                StatusCode::CREATED,
                &PostResponseXml {
                    location: &location,
                    bucket: &bucket,
                    key: &key,
                    etag: &etag,
                },
            )?;
            if let Ok(v) = http::HeaderValue::from_str(&etag) {
                r.headers_mut().insert(http::header::ETAG, v);
            }
            Ok(r)
        }
        _ => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(http::header::ETAG, &etag)
            .header(http::header::LOCATION, location)
            .body(Body::empty())
            .map_err(super::built_error),
    }
}

#[derive(serde::Serialize)]
#[serde(rename = "PostResponse")]
struct PostResponseXml<'a> {
    #[serde(rename = "Location")]
    location: &'a str,
    #[serde(rename = "Bucket")]
    bucket: &'a str,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "ETag")]
    etag: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_conditions() {
        let policy = serde_json::json!({
            "expiration": "2100-01-01T00:00:00Z",
            "conditions": [{"bucket": "b"}, ["starts-with", "$key", "up/"], ["content-length-range", 1, 100]]
        });
        let mut f = BTreeMap::new();
        f.insert("bucket".to_string(), "b".to_string());
        f.insert("key".to_string(), "up/x".to_string());
        assert_eq!(check_policy(&policy, &f, 0).unwrap(), (1, 100));
        f.insert("key".to_string(), "down/x".to_string());
        assert_eq!(
            check_policy(&policy, &f, 0).unwrap_err().code,
            S3ErrorCode::AccessDenied
        );
        f.insert("key".to_string(), "up/x".to_string());
        f.insert("x-amz-meta-extra".to_string(), "1".to_string());
        assert!(check_policy(&policy, &f, 0).is_err());
        let expired = serde_json::json!({"expiration": "2000-01-01T00:00:00Z", "conditions": []});
        assert!(check_policy(&expired, &BTreeMap::new(), 1_000_000_000_000).is_err());
    }

    /// What S3 refuses as a malformed policy (400), not as a failed
    /// condition (403): another date spelling, an empty condition, a
    /// negative length.
    #[test]
    fn malformed_policies_are_invalid_policy_documents() {
        let mut f = BTreeMap::new();
        f.insert("bucket".to_string(), "b".to_string());
        f.insert("key".to_string(), "k".to_string());
        for policy in [
            serde_json::json!({"expiration": "2100-01-01 00:00:00+00:00", "conditions": [{"bucket": "b"}, {"key": "k"}]}),
            serde_json::json!({"expiration": "2100-01-01T00:00:00Z", "conditions": [{}]}),
            serde_json::json!({"expiration": "2100-01-01T00:00:00Z", "conditions": [{"bucket": "b"}, {"key": "k"}, ["content-length-range", -1, 0]]}),
        ] {
            let e = check_policy(&policy, &f, 0).unwrap_err();
            assert_eq!(e.code, S3ErrorCode::InvalidPolicyDocument, "{policy}");
            assert_eq!(e.code.status(), http::StatusCode::BAD_REQUEST);
        }
        let fine = serde_json::json!({"expiration": "2100-01-01T00:00:00.000Z", "conditions": [{"bucket": "b"}, {"key": "k"}]});
        assert!(check_policy(&fine, &f, 0).is_ok());
    }
}
