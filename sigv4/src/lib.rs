//! SigV4 primitives: canonical requests, strings to sign and signatures,
//! shared by the gateway and the storage nodes' task endpoint.
//! Signing keys and HMACs come from `aws-sigv4`; the canonical request is
//! rebuilt here from what the client actually sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{NaiveDate, NaiveDateTime};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// RFC 3986 unreserved characters stay as they are; everything else is
/// percent-encoded, as SigV4 requires.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH: &AsciiSet = &STRICT.remove(b'/');

pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    utf8_percent_encode(s, if keep_slash { PATH } else { STRICT }).to_string()
}

/// Decodes percent escapes; invalid UTF-8 is kept lossily, which can only
/// make a signature fail, never pass wrongly.
pub fn uri_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// S3 signs the path as the client encoded it, without normalisation.
pub fn canonical_uri(raw_path: &str) -> String {
    uri_encode(&uri_decode(raw_path), true)
}

/// A query parameter's name or value as the request means it: `+` is a
/// space, as in a form. The signature covers this same reading, so `+` and
/// `%2B` (which mean different things) never sign alike.
pub fn query_decode(s: &str) -> String {
    uri_decode(&s.replace('+', " "))
}

/// Query parameters sorted by encoded name then value, minus `exclude`.
pub fn canonical_query(raw_query: &str, exclude: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&query_decode(k), false),
                uri_encode(&query_decode(v), false),
            )
        })
        .filter(|(k, _)| Some(k.as_str()) != exclude)
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Header values are trimmed and runs of spaces collapsed to one.
pub fn canonical_header_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    canonical_headers: &[(String, String)],
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    let mut s = format!("{method}\n{canonical_uri}\n{canonical_query}\n");
    for (name, value) in canonical_headers {
        s.push_str(name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(signed_headers);
    s.push('\n');
    s.push_str(payload_hash);
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The credential scope: `date/region/service/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Scope {
    pub fn as_string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    fn time(&self) -> Option<SystemTime> {
        let d = NaiveDate::parse_from_str(&self.date, "%Y%m%d").ok()?;
        let secs = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
    }
}

/// A derived signing key, reused for every chunk of a streaming upload.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    pub fn derive(secret: &str, scope: &Scope) -> Option<Self> {
        let t = scope.time()?;
        let key =
            aws_sigv4::sign::v4::generate_signing_key(secret, t, &scope.region, &scope.service);
        Some(Self(key.as_ref().to_vec()))
    }

    pub fn sign(&self, string_to_sign: &str) -> String {
        aws_sigv4::sign::v4::calculate_signature(&self.0, string_to_sign.as_bytes())
    }
}

/// Constant-time comparison, so a forger learns nothing from timing.
pub fn signatures_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Parses `YYYYMMDD'T'HHMMSS'Z'` into seconds since the epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|d| d.and_utc().timestamp())
}

/// Parses `AWS4-HMAC-SHA256 Credential=.../scope, SignedHeaders=a;b, Signature=hex`.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthorizationHeader {
    pub access_key_id: String,
    pub scope: Scope,
    pub signed_headers: String,
    pub signature: String,
}

pub fn parse_credential(cred: &str) -> Option<(String, Scope)> {
    let mut parts = cred.rsplitn(5, '/');
    let terminator = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    let date = parts.next()?;
    let akid = parts.next()?;
    if terminator != "aws4_request" || date.len() != 8 || akid.is_empty() {
        return None;
    }
    Some((
        akid.to_string(),
        Scope {
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        },
    ))
}

pub fn parse_authorization(v: &str) -> Option<AuthorizationHeader> {
    let rest = v.strip_prefix(ALGORITHM)?.trim_start();
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for field in rest.split(',') {
        let (k, val) = field.trim().split_once('=')?;
        match k {
            "Credential" => cred = Some(val),
            "SignedHeaders" => signed = Some(val),
            "Signature" => sig = Some(val),
            _ => return None,
        }
    }
    let (access_key_id, scope) = parse_credential(cred?)?;
    Some(AuthorizationHeader {
        access_key_id,
        scope,
        signed_headers: signed?.to_string(),
        signature: sig?.to_string(),
    })
}

/// String to sign for one `aws-chunked` chunk.
pub fn chunk_string_to_sign(
    amz_date: &str,
    scope: &str,
    previous: &str,
    chunk_sha256: &str,
) -> String {
    format!("{ALGORITHM}-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}")
}

/// String to sign for the trailer of a signed `aws-chunked` upload.
pub fn trailer_string_to_sign(
    amz_date: &str,
    scope: &str,
    previous: &str,
    trailer_sha256: &str,
) -> String {
    format!("{ALGORITHM}-TRAILER\n{amz_date}\n{scope}\n{previous}\n{trailer_sha256}")
}

#[cfg(test)]
mod tests {
    //! Vectors from AWS's SigV4 test suite (`get-vanilla`,
    //! `get-vanilla-query-order-key-case`, `post-x-www-form-urlencoded`) and
    //! from the S3 documentation's worked examples (GET with Range, and the
    //! chunked upload of 66 560 bytes of `a`).
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn suite_scope() -> Scope {
        Scope {
            date: "20150830".into(),
            region: "us-east-1".into(),
            service: "service".into(),
        }
    }

    fn sign_suite(
        method: &str,
        query: &str,
        headers: &[(&str, &str)],
        signed: &str,
        payload: &str,
    ) -> String {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), canonical_header_value(v)))
            .collect();
        let creq = canonical_request(
            method,
            &canonical_uri("/"),
            &canonical_query(query, None),
            &headers,
            signed,
            payload,
        );
        let sts = string_to_sign("20150830T123600Z", &suite_scope().as_string(), &creq);
        SigningKey::derive(SECRET, &suite_scope())
            .unwrap()
            .sign(&sts)
    }

    #[test]
    fn aws_suite_get_vanilla() {
        let sig = sign_suite(
            "GET",
            "",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "host;x-amz-date",
            EMPTY_SHA256,
        );
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        let sig = sign_suite(
            "GET",
            "Param2=value2&Param1=value1",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "host;x-amz-date",
            EMPTY_SHA256,
        );
        assert_eq!(
            sig,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn aws_suite_post_x_www_form_urlencoded() {
        let sig = sign_suite(
            "POST",
            "",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "content-type;host;x-amz-date",
            &sha256_hex(b"Param1=value1"),
        );
        assert_eq!(
            sig,
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    /// The S3 documentation's examples use a slightly different secret
    /// from the SigV4 test suite's.
    const S3_DOCS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn s3_example_scope() -> Scope {
        Scope {
            date: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        }
    }

    #[test]
    fn s3_docs_get_object_with_range() {
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let creq = canonical_request(
            "GET",
            &canonical_uri("/test.txt"),
            "",
            &headers,
            "host;range;x-amz-content-sha256;x-amz-date",
            EMPTY_SHA256,
        );
        let sts = string_to_sign("20130524T000000Z", &s3_example_scope().as_string(), &creq);
        let sig = SigningKey::derive(S3_DOCS_SECRET, &s3_example_scope())
            .unwrap()
            .sign(&sts);
        assert_eq!(
            sig,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn s3_docs_chunked_upload_signatures() {
        let scope = s3_example_scope().as_string();
        let key = SigningKey::derive(S3_DOCS_SECRET, &s3_example_scope()).unwrap();
        let headers = vec![
            ("content-encoding".to_string(), "aws-chunked".to_string()),
            ("content-length".to_string(), "66824".to_string()),
            ("host".to_string(), "s3.amazonaws.com".to_string()),
            (
                "x-amz-content-sha256".to_string(),
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".to_string(),
            ),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
            (
                "x-amz-decoded-content-length".to_string(),
                "66560".to_string(),
            ),
            (
                "x-amz-storage-class".to_string(),
                "REDUCED_REDUNDANCY".to_string(),
            ),
        ];
        let creq = canonical_request(
            "PUT",
            &canonical_uri("/examplebucket/chunkObject.txt"),
            "",
            &headers,
            "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        );
        let seed = key.sign(&string_to_sign("20130524T000000Z", &scope, &creq));
        assert_eq!(
            seed,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        );
        let c1 = key.sign(&chunk_string_to_sign(
            "20130524T000000Z",
            &scope,
            &seed,
            &sha256_hex(&[b'a'; 65536]),
        ));
        assert_eq!(
            c1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let c2 = key.sign(&chunk_string_to_sign(
            "20130524T000000Z",
            &scope,
            &c1,
            &sha256_hex(&[b'a'; 1024]),
        ));
        assert_eq!(
            c2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let c3 = key.sign(&chunk_string_to_sign(
            "20130524T000000Z",
            &scope,
            &c2,
            EMPTY_SHA256,
        ));
        assert_eq!(
            c3,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn parses_authorization_header() {
        let h = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(h.access_key_id, "AKID");
        assert_eq!(h.scope.region, "us-east-1");
        assert_eq!(h.signed_headers, "host;x-amz-date");
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=x").is_none());
        assert!(parse_authorization("Basic abc").is_none());
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/b/a%20b/c+d"), "/b/a%20b/c%2Bd");
        assert_eq!(canonical_query("b=2&a=1&acl", None), "a=1&acl=&b=2");
        assert_eq!(
            canonical_query("X-Amz-Signature=x&a=%2f", Some("X-Amz-Signature")),
            "a=%2F"
        );
        assert_eq!(canonical_header_value("  a   b  c "), "a b c");
        assert!(
            signatures_match("abc", "abc")
                && !signatures_match("abc", "abd")
                && !signatures_match("a", "ab")
        );
    }
}
