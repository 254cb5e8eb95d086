//! SigV4 for the helpers' own requests to the task endpoint, with the
//! task's credentials from its environment. Small on purpose: the helper
//! is a static binary mounted into every container.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding, as SigV4 wants it: unreserved characters stay.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (UTC).
pub fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The headers that sign a request: `x-amz-date`, `x-amz-content-sha256`
/// and `authorization`. `query` is already canonical (sorted, encoded).
pub fn sign(
    c: &Credentials,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    payload_sha256: &str,
    now_secs: u64,
) -> Vec<(String, String)> {
    sign_with(c, method, path, query, host, payload_sha256, &[], now_secs)
}

/// `sign`, with `extra` headers (lower-case names) signed too and
/// returned with the others, to send.
#[allow(clippy::too_many_arguments)]
pub fn sign_with(
    c: &Credentials,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    payload_sha256: &str,
    extra: &[(&str, &str)],
    now_secs: u64,
) -> Vec<(String, String)> {
    let date = amz_date(now_secs);
    let day = &date[..8];
    let mut headers: Vec<(String, String)> = vec![
        ("x-amz-date".into(), date.clone()),
        ("x-amz-content-sha256".into(), payload_sha256.to_string()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.trim().to_string())),
    );
    let mut canonical_headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("host", host)])
        .collect();
    canonical_headers.sort();
    let signed = canonical_headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let lines: String = canonical_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();
    let canonical = format!("{method}\n{path}\n{query}\n{lines}\n{signed}\n{payload_sha256}");
    let scope = format!("{day}/{}/s3/aws4_request", c.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", c.secret_key).as_bytes(), day);
    for part in [c.region.as_str(), "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &to_sign));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            c.access_key
        ),
    ));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_796_600_000), "20261206T233320Z");
    }

    #[test]
    fn signatures_verify_as_the_endpoint_checks_them() {
        use insitu_sigv4 as v4;
        let c = Credentials {
            access_key: "TASKKEY".into(),
            secret_key: "s3cr3t/with+symbols".into(),
            region: "us-east-1".into(),
        };
        let (path, query) = ("/bkt/a%20b/c%2Bd", "list-type=2&prefix=x%2Fy");
        let h = sign(
            &c,
            "GET",
            path,
            query,
            "127.0.0.1:9555",
            EMPTY_SHA256,
            1_796_600_000,
        );
        let auth = v4::parse_authorization(&h[2].1).expect("a parsable Authorization");
        let headers = vec![
            ("host".to_string(), "127.0.0.1:9555".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), h[0].1.clone()),
        ];
        let canonical = v4::canonical_request(
            "GET",
            &v4::canonical_uri(path),
            &v4::canonical_query(query, None),
            &headers,
            &auth.signed_headers,
            EMPTY_SHA256,
        );
        let to_sign = v4::string_to_sign(&h[0].1, &auth.scope.as_string(), &canonical);
        let key = v4::SigningKey::derive(&c.secret_key, &auth.scope).expect("a signing key");
        assert_eq!(key.sign(&to_sign), auth.signature);
        assert_eq!(uri_encode("a b/c+d", true), "a%20b/c%2Bd");
    }
}
