//! ListObjects (v1) and ListObjectsV2.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use insitu_catalog::{ListQuery, ObjectPage};

use super::access::readable_bucket;
use serde::Serialize;

use super::{xml, S3Request};
use crate::auth::sigv4::uri_encode;
use crate::error::{S3Error, S3Result};
use crate::limits::MAX_LIST_KEYS;
use crate::Gateway;

pub fn max_keys(req: &S3Request, name: &str) -> S3Result<usize> {
    match req.query(name) {
        None => Ok(MAX_LIST_KEYS),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| (n as usize).min(MAX_LIST_KEYS))
            .ok_or_else(|| {
                S3Error::invalid_argument(format!(
                    "Provided {name} not an integer or within integer range"
                ))
            }),
    }
}

/// With `encoding-type=url`, keys and prefixes are URL-encoded in the XML.
pub struct Encoder(bool);

impl Encoder {
    pub fn from_request(req: &S3Request) -> S3Result<Self> {
        match req.query("encoding-type") {
            None => Ok(Self(false)),
            Some("url") => Ok(Self(true)),
            Some(_) => Err(S3Error::invalid_argument(
                "Invalid Encoding Method specified in Request",
            )),
        }
    }

    pub fn enc(&self, s: &str) -> String {
        if self.0 {
            uri_encode(s, true)
        } else {
            s.to_string()
        }
    }

    /// `EncodingType` in a response: `url` when keys were encoded.
    pub fn encoding_type(&self) -> Option<&'static str> {
        self.0.then_some("url")
    }
}

/// A ListObjects (v1 or v2) answer, element for element in S3's order;
/// the elements of the other version are left out.
#[derive(Serialize)]
#[serde(rename = "ListBucketResult")]
struct ListXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Prefix")]
    prefix: String,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
    #[serde(rename = "MaxKeys")]
    max_keys: usize,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    encoding_type: Option<&'static str>,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "KeyCount", skip_serializing_if = "Option::is_none")]
    key_count: Option<usize>,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    continuation_token: Option<&'a str>,
    #[serde(rename = "StartAfter", skip_serializing_if = "Option::is_none")]
    start_after: Option<String>,
    #[serde(
        rename = "NextContinuationToken",
        skip_serializing_if = "Option::is_none"
    )]
    next_continuation_token: Option<String>,
    #[serde(rename = "Marker", skip_serializing_if = "Option::is_none")]
    marker: Option<String>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    #[serde(rename = "Contents")]
    contents: Vec<ContentsXml>,
    #[serde(rename = "CommonPrefixes")]
    common_prefixes: Vec<xml::CommonPrefix>,
}

#[derive(Serialize)]
struct ContentsXml {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Owner", skip_serializing_if = "Option::is_none")]
    owner: Option<xml::Principal>,
    #[serde(rename = "StorageClass")]
    storage_class: &'static str,
}

pub async fn list_objects(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?;
    readable_bucket(gw, req.principal(), bucket).await?;
    let e = Encoder::from_request(req)?;
    let v2 = match req.query("list-type") {
        None => false,
        Some("2") => true,
        Some(_) => return Err(S3Error::invalid_argument("Invalid list-type")),
    };
    let prefix = req.query("prefix").unwrap_or("");
    let delimiter = req.query("delimiter").filter(|d| !d.is_empty());
    let max = max_keys(req, "max-keys")?;

    let token = if v2 {
        match req.query("continuation-token") {
            Some(t) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        S3Error::invalid_argument("The continuation token provided is incorrect")
                    })?,
            ),
            None => None,
        }
    } else {
        None
    };
    let start_after = if v2 {
        token
            .clone()
            .or_else(|| req.query("start-after").map(str::to_string))
    } else {
        req.query("marker").map(str::to_string)
    };

    let page = if max == 0 {
        ObjectPage::default()
    } else {
        gw.catalog
            .list_objects(
                bucket,
                &ListQuery {
                    prefix: prefix.to_string(),
                    delimiter: delimiter.map(str::to_string),
                    start_after: start_after.filter(|s| !s.is_empty()),
                    max,
                },
            )
            .await?
    };

    let fetch_owner = !v2 || req.query("fetch-owner") == Some("true");
    let next = page.last.as_deref().filter(|_| page.is_truncated);
    let body = ListXml {
        xmlns: xml::NS,
        name: bucket,
        // S3 echoes a V1 listing's Prefix as sent even under
        // encoding-type=url (botocore decodes it only for V2).
        prefix: if v2 {
            e.enc(prefix)
        } else {
            prefix.to_string()
        },
        delimiter: delimiter.map(|d| e.enc(d)),
        max_keys: max,
        encoding_type: e.encoding_type(),
        truncated: page.is_truncated,
        key_count: v2.then(|| page.objects.len() + page.common_prefixes.len()),
        continuation_token: req.query("continuation-token").filter(|_| v2),
        start_after: req.query("start-after").filter(|_| v2).map(|s| e.enc(s)),
        next_continuation_token: next
            .filter(|_| v2)
            .map(|l| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l.as_bytes())),
        marker: (!v2).then(|| e.enc(req.query("marker").unwrap_or(""))),
        next_marker: next.filter(|_| !v2).map(|l| e.enc(l)),
        contents: page
            .objects
            .iter()
            .map(|(key, obj)| ContentsXml {
                key: e.enc(key),
                last_modified: xml::iso8601(obj.last_modified_ms),
                etag: format!("\"{}\"", obj.etag),
                size: obj.size,
                owner: fetch_owner.then(|| xml::Principal::tenant(&obj.owner)),
                storage_class: "STANDARD",
            })
            .collect(),
        common_prefixes: page
            .common_prefixes
            .iter()
            .map(|p| xml::CommonPrefix { prefix: e.enc(p) })
            .collect(),
    };
    xml::to_response(StatusCode::OK, &body)
}
