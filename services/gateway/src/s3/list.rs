//! ListObjects (v1) and ListObjectsV2.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use insitu_catalog::{ListQuery, ObjectPage};

use super::access::readable_bucket;
use super::{xml, xml_response, S3Request};
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

    pub fn elem(&self, out: &mut String, name: &str, value: &str) {
        xml::elem(out, name, &self.enc(value));
    }

    pub fn write_type(&self, out: &mut String) {
        if self.0 {
            xml::elem(out, "EncodingType", "url");
        }
    }
}

fn contents(out: &mut String, e: &Encoder, page: &ObjectPage, fetch_owner: bool) {
    for (key, obj) in &page.objects {
        out.push_str("<Contents>");
        e.elem(out, "Key", key);
        xml::elem(out, "LastModified", &xml::iso8601(obj.last_modified_ms));
        xml::elem(out, "ETag", &format!("\"{}\"", obj.etag));
        xml::elem(out, "Size", &obj.size.to_string());
        if fetch_owner {
            xml::owner(out, &obj.owner);
        }
        xml::elem(out, "StorageClass", "STANDARD");
        out.push_str("</Contents>");
    }
    for p in &page.common_prefixes {
        out.push_str("<CommonPrefixes>");
        e.elem(out, "Prefix", p);
        out.push_str("</CommonPrefixes>");
    }
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

    let mut out = format!("{}<ListBucketResult xmlns=\"{}\">", xml::HEADER, xml::NS);
    xml::elem(&mut out, "Name", bucket);
    e.elem(&mut out, "Prefix", prefix);
    if let Some(d) = delimiter {
        e.elem(&mut out, "Delimiter", d);
    }
    xml::elem(&mut out, "MaxKeys", &max.to_string());
    e.write_type(&mut out);
    xml::elem(
        &mut out,
        "IsTruncated",
        if page.is_truncated { "true" } else { "false" },
    );
    if v2 {
        xml::elem(
            &mut out,
            "KeyCount",
            &(page.objects.len() + page.common_prefixes.len()).to_string(),
        );
        if let Some(t) = req.query("continuation-token") {
            xml::elem(&mut out, "ContinuationToken", t);
        }
        if let Some(sa) = req.query("start-after") {
            e.elem(&mut out, "StartAfter", sa);
        }
        if page.is_truncated {
            if let Some(last) = &page.last {
                let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes());
                xml::elem(&mut out, "NextContinuationToken", &t);
            }
        }
    } else {
        e.elem(&mut out, "Marker", req.query("marker").unwrap_or(""));
        if page.is_truncated {
            if let Some(last) = &page.last {
                e.elem(&mut out, "NextMarker", last);
            }
        }
    }
    let fetch_owner = !v2 || req.query("fetch-owner") == Some("true");
    contents(&mut out, &e, &page, fetch_owner);
    out.push_str("</ListBucketResult>");
    Ok(xml_response(StatusCode::OK, out))
}
