//! Buckets are unversioned. Backup and sync tools still ask, so
//! GetBucketVersioning says so, and ListObjectVersions lists every object
//! as its only version, `null`.

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::ListQuery;

use super::access::{owned_bucket, readable_bucket};
use super::list::{max_keys, Encoder};
use serde::Serialize;

use super::{xml, S3Request};
use crate::error::S3Result;
use crate::Gateway;

pub async fn get_versioning(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    owned_bucket(gw, req.principal(), req.bucket()?).await?;
    xml::to_response(StatusCode::OK, &VersioningXml { xmlns: xml::NS })
}

pub async fn list_object_versions(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?;
    readable_bucket(gw, req.principal(), bucket).await?;
    let e = Encoder::from_request(req)?;
    let prefix = req.query("prefix").unwrap_or("");
    let delimiter = req.query("delimiter").filter(|d| !d.is_empty());
    let max = max_keys(req, "max-keys")?;
    let key_marker = req.query("key-marker").filter(|m| !m.is_empty());
    let page = gw
        .catalog
        .list_objects(
            bucket,
            &ListQuery {
                prefix: prefix.to_string(),
                delimiter: delimiter.map(str::to_string),
                start_after: key_marker.map(str::to_string),
                max: max.max(1),
            },
        )
        .await?;

    let next = page.last.as_deref().filter(|_| page.is_truncated);
    let body = VersionsXml {
        xmlns: xml::NS,
        name: bucket,
        prefix: e.enc(prefix),
        key_marker: e.enc(key_marker.unwrap_or("")),
        version_id_marker: req.query("version-id-marker").unwrap_or(""),
        delimiter: delimiter.map(|d| e.enc(d)),
        max_keys: max,
        encoding_type: e.encoding_type(),
        truncated: page.is_truncated,
        next_key_marker: next.map(|l| e.enc(l)),
        next_version_id_marker: next.map(|_| "null"),
        versions: page
            .objects
            .iter()
            .map(|(key, obj)| VersionXml {
                key: e.enc(key),
                version_id: "null",
                is_latest: true,
                last_modified: xml::iso8601(obj.last_modified_ms),
                etag: format!("\"{}\"", obj.etag),
                size: obj.size,
                owner: xml::Principal::tenant(&obj.owner),
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

#[derive(Serialize)]
#[serde(rename = "VersioningConfiguration")]
struct VersioningXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
}

#[derive(Serialize)]
#[serde(rename = "ListVersionsResult")]
struct VersionsXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Prefix")]
    prefix: String,
    #[serde(rename = "KeyMarker")]
    key_marker: String,
    #[serde(rename = "VersionIdMarker")]
    version_id_marker: &'a str,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
    #[serde(rename = "MaxKeys")]
    max_keys: usize,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    encoding_type: Option<&'static str>,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "NextKeyMarker", skip_serializing_if = "Option::is_none")]
    next_key_marker: Option<String>,
    #[serde(
        rename = "NextVersionIdMarker",
        skip_serializing_if = "Option::is_none"
    )]
    next_version_id_marker: Option<&'static str>,
    #[serde(rename = "Version")]
    versions: Vec<VersionXml>,
    #[serde(rename = "CommonPrefixes")]
    common_prefixes: Vec<xml::CommonPrefix>,
}

#[derive(Serialize)]
struct VersionXml {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "VersionId")]
    version_id: &'static str,
    #[serde(rename = "IsLatest")]
    is_latest: bool,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Owner")]
    owner: xml::Principal,
    #[serde(rename = "StorageClass")]
    storage_class: &'static str,
}
