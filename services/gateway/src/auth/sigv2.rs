//! AWS Signature Version 2, as older tools still send it (s3cmd's v2
//! mode, boto2-era code, and the POST forms and presigned URLs of the
//! conformance suite): `Authorization: AWS KEY:SIGNATURE`, the query form
//! (`AWSAccessKeyId`, `Expires`, `Signature`), and the POST policy's
//! `signature`. Each is base64 HMAC-SHA1 over a string to sign, compared
//! in constant time.
//!
//! SigV2 signs no payload hash: a body is checked only against a
//! `Content-MD5` it sends. Every `x-amz-*` header is part of the string
//! to sign, so none can be added or changed without the key.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;

/// Query parameters that name a sub-resource, and so are signed as part
/// of the resource (sorted, as AWS sorts them).
const SUBRESOURCES: &[&str] = &[
    "acl",
    "attributes",
    "cors",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// base64(HMAC-SHA1(secret, text)).
pub fn sign(secret: &str, text: &str) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes a key of any length.
        return String::new();
    };
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The parts of `Authorization: AWS KEY:SIGNATURE`.
pub fn parse_authorization(v: &str) -> Option<(&str, &str)> {
    let (key, signature) = v.strip_prefix("AWS ")?.trim().split_once(':')?;
    (!key.is_empty() && !signature.is_empty()).then_some((key, signature))
}

/// The resource as signed: the bucket named by a virtual host, then the
/// path as sent, then the sub-resources of the query in order.
pub fn canonical_resource(
    host_bucket: Option<&str>,
    raw_path: &str,
    query: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    if let Some(b) = host_bucket {
        out.push('/');
        out.push_str(b);
    }
    out.push_str(if raw_path.is_empty() { "/" } else { raw_path });
    let subs: Vec<String> = query
        .iter()
        .filter(|(k, _)| SUBRESOURCES.contains(&k.as_str()))
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if !subs.is_empty() {
        out.push('?');
        out.push_str(&subs.join("&"));
    }
    out
}

/// Whether the signed resource could stand for another query: a signed
/// sub-resource whose value holds a `&` (`partNumber=2%26uploadId%3Du1`
/// signs as `partNumber=2&uploadId=u1`, the string a real UploadPart
/// signs, yet routes as a plain PUT). Such a request is refused.
pub fn ambiguous(query: &BTreeMap<String, String>) -> bool {
    query
        .iter()
        .any(|(k, v)| SUBRESOURCES.contains(&k.as_str()) && v.contains('&'))
}

/// `x-amz-*` headers as signed: lower-case names in order, each with its
/// values joined by commas, one per line.
fn canonical_amz_headers(headers: &HeaderMap) -> String {
    let mut amz: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name.as_str().starts_with("x-amz-") {
            amz.entry(name.as_str()).or_default().push(
                String::from_utf8_lossy(value.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    amz.iter()
        .map(|(k, v)| format!("{k}:{}\n", v.join(",")))
        .collect()
}

/// The string to sign. `date` is the `Date` header (empty when the
/// request sends `x-amz-date`, which is then among the amz headers), or
/// the query form's `Expires`.
pub fn string_to_sign(method: &str, headers: &HeaderMap, date: &str, resource: &str) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    format!(
        "{method}\n{}\n{}\n{date}\n{}{resource}",
        header("content-md5"),
        header("content-type"),
        canonical_amz_headers(headers)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's SigV2 documentation ("Object GET").
    #[test]
    fn matches_the_documented_example() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            "awsexamplebucket1.us-west-1.s3.amazonaws.com"
                .parse()
                .unwrap(),
        );
        headers.insert("date", "Tue, 27 Mar 2007 19:36:42 +0000".parse().unwrap());
        let resource = canonical_resource(
            Some("awsexamplebucket1"),
            "/photos/puppy.jpg",
            &BTreeMap::new(),
        );
        let sts = string_to_sign(
            "GET",
            &headers,
            "Tue, 27 Mar 2007 19:36:42 +0000",
            &resource,
        );
        assert_eq!(
            sts,
            "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg"
        );
        assert_eq!(
            sign("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &sts),
            "qgk2+6Sv9/oM7G3qLEjTH1a1l1g="
        );
    }

    #[test]
    fn a_subresource_value_cannot_stand_for_others() {
        let mut q = BTreeMap::new();
        q.insert("partNumber".to_string(), "2&uploadId=u1".to_string());
        assert!(ambiguous(&q));
        let mut q = BTreeMap::new();
        q.insert(
            "response-content-disposition".to_string(),
            "attachment; filename=\"a=b\"".to_string(),
        );
        q.insert("prefix".to_string(), "a&b".to_string());
        assert!(!ambiguous(&q));
    }

    #[test]
    fn amz_headers_and_subresources_are_signed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-meta-b", "two".parse().unwrap());
        headers.append("x-amz-meta-a", " one ".parse().unwrap());
        headers.append("x-amz-meta-a", "uno".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        let mut q = BTreeMap::new();
        q.insert("uploadId".to_string(), "u1".to_string());
        q.insert("partNumber".to_string(), "2".to_string());
        q.insert("prefix".to_string(), "ignored".to_string());
        let resource = canonical_resource(None, "/b/k%20x", &q);
        assert_eq!(resource, "/b/k%20x?partNumber=2&uploadId=u1");
        assert_eq!(
            string_to_sign("PUT", &headers, "", &resource),
            "PUT\n\ntext/plain\n\nx-amz-meta-a:one,uno\nx-amz-meta-b:two\n/b/k%20x?partNumber=2&uploadId=u1"
        );
        assert_eq!(parse_authorization("AWS AKID:c2ln"), Some(("AKID", "c2ln")));
        assert_eq!(parse_authorization("AWS AKID"), None);
        assert_eq!(parse_authorization("AWS4-HMAC-SHA256 x"), None);
    }
}
