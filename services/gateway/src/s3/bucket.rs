//! Bucket operations: list, create, head, location, delete, and
//! DeleteObjects (a bucket-level POST).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::access::{owned_bucket, writable_bucket};
use super::{empty_response, xml, S3Request};
use crate::auth::Principal;
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{MAX_DELETE_KEYS, MAX_LIST_BUCKETS, MAX_XML_BODY_BYTES};
use crate::Gateway;

/// S3 bucket naming rules: 3–63 characters of lower-case letters, digits,
/// dots and hyphens; starting and ending with a letter or digit; no `..`;
/// not an IP address; none of the reserved prefixes and suffixes.
pub fn validate_bucket_name(name: &str) -> S3Result<()> {
    let bad = |why: &str| {
        S3Error::new(
            S3ErrorCode::InvalidBucketName,
            format!("The specified bucket is not valid: {why}"),
        )
        .with_resource(name)
    };
    if !(3..=63).contains(&name.len()) {
        return Err(bad("bucket names must be 3 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(bad(
            "bucket names may contain only lower-case letters, digits, dots and hyphens",
        ));
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(bad(
            "bucket names must begin and end with a letter or digit",
        ));
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(bad(
            "bucket names must not contain adjacent dots or dots next to hyphens",
        ));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(bad("bucket names must not look like an IP address"));
    }
    if name.starts_with("xn--")
        || name.starts_with("sthree-")
        || name.ends_with("-s3alias")
        || name.ends_with("--ol-s3")
    {
        return Err(bad("bucket names must not use a reserved prefix or suffix"));
    }
    Ok(())
}

pub fn require_user(req: &S3Request) -> S3Result<&str> {
    req.principal().tenant().ok_or_else(S3Error::access_denied)
}

pub async fn list_buckets(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tenant = require_user(req)?;
    let max = match req.query("max-buckets") {
        None => MAX_LIST_BUCKETS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_BUCKETS).contains(n))
            .ok_or_else(|| {
                S3Error::invalid_argument(format!(
                    "max-buckets must be an integer between 1 and {MAX_LIST_BUCKETS}"
                ))
            })?,
    };
    let prefix = req.query("prefix").unwrap_or("");
    // The token is the last name a page gave, opaque to the client.
    let after = match req.query("continuation-token") {
        None | Some("") => None,
        Some(t) => Some(
            b64.decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| S3Error::invalid_argument("The continuation token is not valid."))?,
        ),
    };
    let mut buckets: Vec<_> = gw
        .catalog
        .list_buckets(tenant)
        .await?
        .into_iter()
        .filter(|b| b.name.starts_with(prefix))
        .filter(|b| after.as_ref().is_none_or(|a| b.name.as_str() > a.as_str()))
        .collect();
    buckets.sort_by(|a, b| a.name.cmp(&b.name));
    let more = buckets.len() > max;
    buckets.truncate(max);
    let body = BucketsXml {
        xmlns: xml::NS,
        owner: xml::Principal::tenant(tenant),
        buckets: BucketListXml {
            buckets: buckets
                .iter()
                .map(|b| BucketXml {
                    name: &b.name,
                    creation_date: xml::iso8601(b.created_ms),
                })
                .collect(),
        },
        continuation_token: buckets
            .last()
            .filter(|_| more)
            .map(|last| b64.encode(&last.name)),
        prefix: (!prefix.is_empty()).then_some(prefix),
    };
    xml::to_response(StatusCode::OK, &body)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateBucketConfiguration {
    location_constraint: Option<String>,
}

pub async fn create_bucket(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let tenant = require_user(&req)?.to_string();
    let name = req.bucket()?.to_string();
    validate_bucket_name(&name)?;
    let acl = super::acl::header_acl(gw, &req, &tenant, &tenant)
        .await?
        .unwrap_or_default();
    let body = req.read_verified_body(MAX_XML_BODY_BYTES).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let conf: CreateBucketConfiguration = xml::parse(&body)?;
        if let Some(loc) = conf.location_constraint.filter(|l| !l.is_empty()) {
            if loc != gw.config.region {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidArgument,
                    format!("The location constraint {loc:?} is incompatible with this endpoint's region {:?}.", gw.config.region),
                ));
            }
        }
    }
    match gw.catalog.create_bucket(&name, &tenant, acl.clone()).await {
        Ok(_) => tracing::info!(bucket = %name, tenant = %tenant, "bucket created"),
        // In us-east-1, S3 lets the owner create its bucket again: nothing
        // changes (its objects stay). A different ACL would be a change,
        // which is refused as S3 gateways refuse it. Elsewhere, S3 reports
        // the repeat.
        Err(insitu_catalog::CatalogError::BucketAlreadyOwnedByYou(_))
            if gw.config.region == "us-east-1" =>
        {
            let same_acl = gw
                .catalog
                .get_bucket(&name)
                .await?
                .is_some_and(|b| b.owner == tenant && b.acl == acl);
            if !same_acl {
                return Err(S3Error::new(
                    S3ErrorCode::BucketAlreadyExists,
                    "The requested bucket name is not available; you own it, with another ACL.",
                ));
            }
        }
        Err(e) => return Err(e.into()),
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::LOCATION, format!("/{name}"))
        .body(axum::body::Body::empty())
        .map_err(super::built_error)
}

pub async fn head_bucket(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    super::access::readable_bucket(gw, req.principal(), req.bucket()?).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header("x-amz-bucket-region", &gw.config.region)
        .body(axum::body::Body::empty())
        .map_err(super::built_error)
}

pub async fn get_location(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    owned_bucket(gw, req.principal(), req.bucket()?).await?;
    // us-east-1 is reported as an empty constraint, as S3 does.
    let region = if gw.config.region == "us-east-1" {
        ""
    } else {
        gw.config.region.as_str()
    };
    xml::to_response(
        StatusCode::OK,
        &LocationXml {
            xmlns: xml::NS,
            region,
        },
    )
}

pub async fn delete_bucket(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let name = req.bucket()?;
    owned_bucket(gw, req.principal(), name).await?;
    gw.catalog.delete_bucket(name).await?;
    tracing::info!(bucket = %name, "bucket deleted");
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// A DeleteObjects body (`DeleteRequest::parse`).
pub(super) struct DeleteRequest {
    quiet: bool,
    objects: Vec<DeleteEntry>,
}

struct DeleteEntry {
    key: String,
    version_id: Option<String>,
}

impl DeleteRequest {
    /// Reads a DeleteObjects body. Keys keep their text exactly as sent:
    /// an S3 key may begin or end with spaces, which a serde reading of
    /// the XML would trim (and then delete another key, or none).
    pub(super) fn parse(body: &[u8]) -> S3Result<Self> {
        use quick_xml::events::Event;
        let malformed = || {
            S3Error::new(
                S3ErrorCode::MalformedXml,
                "The XML you provided was not well-formed or did not validate against our published schema",
            )
        };
        let mut reader = quick_xml::Reader::from_reader(body);
        let mut path: Vec<Vec<u8>> = Vec::new();
        let mut text = String::new();
        let mut out = DeleteRequest {
            quiet: false,
            objects: Vec::new(),
        };
        let mut entry: Option<(Option<String>, Option<String>)> = None;
        let mut seen_root = false;
        loop {
            let event = reader.read_event().map_err(|_| malformed())?;
            match event {
                Event::Start(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    if path.is_empty() {
                        if seen_root || name != b"Delete" {
                            return Err(malformed());
                        }
                        seen_root = true;
                    }
                    path.push(name);
                    text.clear();
                    if path_is(&path, &[b"Delete", b"Object"]) {
                        entry = Some((None, None));
                    }
                }
                Event::Empty(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    if path.is_empty() {
                        if seen_root || name != b"Delete" {
                            return Err(malformed());
                        }
                        seen_root = true;
                        continue;
                    }
                    path.push(name);
                    text.clear();
                    end_element(&path, &text, &mut out, &mut entry).map_err(|_| malformed())?;
                    path.pop();
                }
                Event::Text(t) => {
                    let t = t.unescape().map_err(|_| malformed())?;
                    text.push_str(&t);
                }
                Event::CData(c) => {
                    text.push_str(std::str::from_utf8(&c).map_err(|_| malformed())?);
                }
                Event::End(_) => {
                    end_element(&path, &text, &mut out, &mut entry).map_err(|_| malformed())?;
                    path.pop();
                    text.clear();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !seen_root || !path.is_empty() {
            return Err(malformed());
        }
        Ok(out)
    }
}

fn path_is(path: &[Vec<u8>], want: &[&[u8]]) -> bool {
    path.len() == want.len() && path.iter().zip(want).all(|(a, b)| a.as_slice() == *b)
}

/// What the end of the element at `path`, whose text is `text`, adds to
/// a DeleteObjects request.
fn end_element(
    path: &[Vec<u8>],
    text: &str,
    out: &mut DeleteRequest,
    entry: &mut Option<(Option<String>, Option<String>)>,
) -> Result<(), ()> {
    if path_is(path, &[b"Delete", b"Quiet"]) {
        out.quiet = match text.trim() {
            "true" => true,
            "false" | "" => false,
            _ => return Err(()),
        };
    } else if path_is(path, &[b"Delete", b"Object", b"Key"]) {
        entry.as_mut().ok_or(())?.0 = Some(text.to_string());
    } else if path_is(path, &[b"Delete", b"Object", b"VersionId"]) {
        entry.as_mut().ok_or(())?.1 = Some(text.trim().to_string());
    } else if path_is(path, &[b"Delete", b"Object"]) {
        let (key, version_id) = entry.take().ok_or(())?;
        out.objects.push(DeleteEntry {
            key: key.ok_or(())?,
            version_id,
        });
    }
    Ok(())
}

pub async fn delete_objects(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let name = req.bucket()?.to_string();
    let principal = req.principal().clone();
    super::access::bucket(gw, &name).await?;
    let allowed = writable_bucket(gw, &principal, &name).await;
    // Per-key results are for callers who proved who they are; nobody
    // anonymous gets a body read on a bucket they may not write.
    if let (Err(e), Principal::Anonymous) = (&allowed, &principal) {
        return Err(e.clone());
    }
    // A body nothing else binds (SigV2, UNSIGNED-PAYLOAD) must carry its
    // MD5 or a checksum, as S3 requires: otherwise a captured request
    // could be replayed with another list of keys.
    let unsigned = matches!(req.auth.payload, crate::auth::PayloadCheck::Unsigned);
    let has_digest = req.header("content-md5").is_some()
        || req.headers.keys().any(|k| {
            k.as_str().starts_with("x-amz-checksum-") && k.as_str() != "x-amz-checksum-algorithm"
        });
    if unsigned && !has_digest {
        return Err(S3Error::new(
            S3ErrorCode::InvalidRequest,
            "Missing required header for this request: Content-MD5",
        ));
    }
    let body = req.read_verified_body(MAX_XML_BODY_BYTES).await?;
    let parsed = DeleteRequest::parse(&body)?;
    if parsed.objects.is_empty() || parsed.objects.len() > MAX_DELETE_KEYS {
        return Err(S3Error::new(
            S3ErrorCode::MalformedXml,
            "A Delete request must name between 1 and 1000 objects.",
        ));
    }
    let mut entries = Vec::new();
    for entry in parsed.objects {
        let result = match (&allowed, entry.version_id.as_deref()) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Some(v)) if v != "null" => Err(S3Error::new(
                S3ErrorCode::NoSuchVersion,
                "The specified version does not exist.",
            )),
            (Ok(_), _) => gw
                .catalog
                .delete_object(&name, &entry.key)
                .await
                .map_err(S3Error::from),
        };
        match result {
            Ok(_) if parsed.quiet => {}
            Ok(_) => entries.push(DeleteEntryXml::Deleted {
                key: entry.key,
                version_id: entry.version_id,
            }),
            Err(e) => entries.push(DeleteEntryXml::Error {
                key: entry.key,
                code: e.code.as_str(),
                message: e.message,
            }),
        }
    }
    xml::to_response(
        StatusCode::OK,
        &DeleteResultXml {
            xmlns: xml::NS,
            entries,
        },
    )
}

#[derive(Serialize)]
#[serde(rename = "LocationConstraint")]
struct LocationXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "$text")]
    region: &'a str,
}

#[derive(Serialize)]
#[serde(rename = "ListAllMyBucketsResult")]
struct BucketsXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Owner")]
    owner: xml::Principal,
    #[serde(rename = "Buckets")]
    buckets: BucketListXml<'a>,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    continuation_token: Option<String>,
    #[serde(rename = "Prefix", skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
}

#[derive(Serialize)]
struct BucketListXml<'a> {
    #[serde(rename = "Bucket")]
    buckets: Vec<BucketXml<'a>>,
}

#[derive(Serialize)]
struct BucketXml<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "CreationDate")]
    creation_date: String,
}

/// A DeleteObjects answer: a `<Deleted>` or an `<Error>` per key, in the
/// order the keys were given.
#[derive(Serialize)]
#[serde(rename = "DeleteResult")]
struct DeleteResultXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "$value")]
    entries: Vec<DeleteEntryXml>,
}

#[derive(Serialize)]
enum DeleteEntryXml {
    Deleted {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "VersionId", skip_serializing_if = "Option::is_none")]
        version_id: Option<String>,
    },
    Error {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Code")]
        code: &'static str,
        #[serde(rename = "Message")]
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.1", "a1b", &"a".repeat(63)] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "a_b",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "_insitu",
            &"a".repeat(64),
        ] {
            assert_eq!(
                validate_bucket_name(bad).unwrap_err().code,
                S3ErrorCode::InvalidBucketName,
                "{bad}"
            );
        }
    }
}
