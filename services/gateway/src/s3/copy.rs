//! CopyObject, and the copy-source parsing that UploadPartCopy shares.
//! Bytes are streamed from a source replica to the new blob's replicas.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use insitu_catalog::{ChecksumAlgorithm, ObjectRecord};

use super::access::{readable_object, writable_bucket};
use super::get::{evaluate_preconditions, ByteRange, Precondition};
use super::put::{commit_object, node_error, object_headers, store_body, validate_key, StoredBody};
use super::{xml, S3Request};
use crate::auth::sigv4::uri_decode;
use crate::body::{BodyExpectations, ChecksumClaim};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::MAX_OBJECT_BYTES;
use crate::Gateway;

/// The readable source of a copy, with its record.
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    pub object: ObjectRecord,
}

/// Parses `x-amz-copy-source` (`[/]bucket/key[?versionId=null]`, URL-encoded),
/// checks read access and the `x-amz-copy-source-if-*` conditions.
pub async fn copy_source(gw: &Gateway, req: &S3Request) -> S3Result<CopySource> {
    let raw = req.header("x-amz-copy-source").unwrap_or_default();
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    if let Some(v) = query.strip_prefix("versionId=") {
        if v != "null" {
            return Err(S3Error::new(
                S3ErrorCode::NoSuchVersion,
                "The specified version does not exist.",
            ));
        }
    }
    let decoded = uri_decode(path);
    let (bucket, key) = decoded
        .trim_start_matches('/')
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            )
        })?;
    let (_, object) = readable_object(gw, req.principal(), bucket, key).await?;
    match evaluate_preconditions(
        req.header("x-amz-copy-source-if-match"),
        req.header("x-amz-copy-source-if-none-match"),
        req.header("x-amz-copy-source-if-modified-since"),
        req.header("x-amz-copy-source-if-unmodified-since"),
        &object,
    ) {
        Precondition::Ok => {}
        _ => {
            return Err(S3Error::new(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            ))
        }
    }
    Ok(CopySource {
        bucket: bucket.to_string(),
        key: key.to_string(),
        object,
    })
}

/// Streams `range` (or all) of the source into a new blob.
pub async fn copy_bytes(
    gw: &Gateway,
    src: &ObjectRecord,
    range: Option<ByteRange>,
    nodes: Option<Vec<String>>,
    checksum: Option<ChecksumAlgorithm>,
) -> S3Result<StoredBody> {
    let len = range.map_or(src.size, |r| r.end - r.start + 1);
    let reading = gw.inflight.hold(&src.blob.id);
    let body = if len == 0 {
        futures::stream::empty().boxed()
    } else {
        gw.nodes
            .get(&src.blob, range.map(|r| (r.start, r.end)))
            .await
            .map_err(node_error)?
            .map_err(S3Error::internal)
            .map(move |chunk| {
                let _ = &reading;
                chunk
            })
            .boxed()
    };
    let expect = BodyExpectations {
        length: Some(len),
        max_length: MAX_OBJECT_BYTES,
        checksum: checksum.map(|a| (a, ChecksumClaim::Compute)),
        ..Default::default()
    };
    store_body(gw, body, expect, nodes).await
}

pub async fn copy_object(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?.to_string();
    let key = req.key()?.to_string();
    validate_key(&key)?;
    let dest = writable_bucket(gw, req.principal(), &bucket).await?;
    let src = copy_source(gw, &req).await?;
    let replace = match req.header("x-amz-metadata-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(other) => {
            return Err(S3Error::invalid_argument(format!(
                "Unknown metadata directive {other:?}"
            )))
        }
    };
    if src.bucket == bucket && src.key == key && !replace {
        return Err(S3Error::new(
            S3ErrorCode::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let headers = if replace {
        object_headers(&req)?
    } else {
        src.object.headers.clone()
    };
    let owner = super::acl::writer(&req, &dest.owner);
    let acl = super::acl::header_acl(gw, &req, &owner, &dest.owner)
        .await?
        .unwrap_or_default();
    let cond = super::put::write_condition(&req)?;
    // The copy gets a checksum if asked for one, or the source's algorithm
    // if the source has one (a multipart source's is of the whole copy).
    let algorithm = match req.header("x-amz-checksum-algorithm") {
        Some(name) => Some(ChecksumAlgorithm::parse(name).ok_or_else(|| {
            S3Error::invalid_request(format!("Invalid x-amz-checksum-algorithm: {name}"))
        })?),
        None => src.object.checksum.as_ref().map(|c| c.algorithm),
    };
    let stored = copy_bytes(gw, &src.object, None, None, algorithm).await?;
    let rec = commit_object(gw, &dest, &key, (owner, acl), headers, &stored, &cond).await?;
    xml::to_response(
        StatusCode::OK,
        &CopyResultXml {
            xmlns: xml::NS,
            last_modified: xml::iso8601(rec.last_modified_ms),
            etag: format!("\"{}\"", rec.etag),
        },
    )
}

#[derive(serde::Serialize)]
#[serde(rename = "CopyObjectResult")]
struct CopyResultXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
}
