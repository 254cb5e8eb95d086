//! PutObject and DeleteObject, and the shared path that streams a request
//! body to its replicas: used by PutObject, UploadPart and POST Object.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures::stream::BoxStream;
use insitu_catalog::{
    now_ms, BlobRef, ChecksumAlgorithm, ChecksumType, ObjectChecksum, ObjectHeaders, ObjectRecord,
    WriteCondition,
};

use super::access::writable_bucket;
use super::{empty_response, S3Request};
use crate::auth::PayloadCheck;
use crate::body::{self, BodyExpectations, ChecksumClaim};
use crate::checksum;
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{MAX_KEY_BYTES, MAX_PUT_BYTES, MAX_USER_METADATA_BYTES};
use crate::nodes::NodeError;
use crate::Gateway;

/// A body made durable on all its replicas but not yet committed.
pub struct StoredBody {
    pub blob: BlobRef,
    pub md5: [u8; 16],
    pub checksum: Option<(ChecksumAlgorithm, String)>,
    /// Keeps the orphan sweep away until the caller has committed; held
    /// only for its `Drop`.
    #[allow(dead_code)]
    pub inflight: crate::cluster::InflightGuard,
}

impl StoredBody {
    pub fn etag(&self) -> String {
        hex::encode(self.md5)
    }
}

pub fn new_blob_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn validate_key(key: &str) -> S3Result<()> {
    if key.is_empty() {
        return Err(S3Error::new(
            S3ErrorCode::InvalidArgument,
            "Object keys must not be empty.",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(S3Error::new(
            S3ErrorCode::KeyTooLongError,
            "Your key is too long (the limit is 1024 bytes).",
        ));
    }
    Ok(())
}

pub fn node_error(e: NodeError) -> S3Error {
    match e {
        NodeError::NotEnoughNodes { .. } => S3Error::new(
            S3ErrorCode::ServiceUnavailable,
            format!("Not enough storage nodes are available to store the object safely: {e}"),
        ),
        NodeError::NoRoom { .. } | NodeError::Status { status: 507, .. } => S3Error::new(
            S3ErrorCode::ServiceUnavailable,
            format!("Not enough storage nodes have room for this object: {e}"),
        ),
        NodeError::Request { .. } | NodeError::NoReplica(_) | NodeError::UnknownNode(_) => {
            S3Error::new(
                S3ErrorCode::ServiceUnavailable,
                format!("A storage node is unavailable; please retry: {e}"),
            )
        }
        NodeError::Status { status: 400, .. } | NodeError::Body => S3Error::new(
            S3ErrorCode::IncompleteBody,
            "The request body ended before the number of bytes it declared.",
        ),
        other => S3Error::internal(other),
    }
}

/// `If-None-Match` and `If-Match` on a write, checked atomically with the
/// commit. Both at once is refused, as S3 does.
pub fn write_condition(req: &S3Request) -> S3Result<WriteCondition> {
    let etag = |v: &str| v.trim().trim_matches('"').to_string();
    match (req.header("if-none-match"), req.header("if-match")) {
        (Some(_), Some(_)) => Err(S3Error::not_implemented(
            "A write with both If-Match and If-None-Match",
        )),
        (Some(v), None) if v.trim() == "*" => Ok(WriteCondition::IfNoneMatchAny),
        (Some(v), None) => Ok(WriteCondition::IfNoneMatch(etag(v))),
        (None, Some(v)) if v.trim() == "*" => Ok(WriteCondition::IfMatchAny),
        (None, Some(v)) => Ok(WriteCondition::IfMatch(etag(v))),
        (None, None) => Ok(WriteCondition::None),
    }
}

/// Refuses request headers asking for features insitu does not have, rather
/// than silently ignoring a promise (encryption, tags, locks).
pub fn reject_unsupported(req: &S3Request) -> S3Result<()> {
    for (name, _) in &req.headers {
        let n = name.as_str();
        let what = if n.starts_with("x-amz-server-side-encryption") {
            "Server-side encryption"
        } else if n == "x-amz-tagging" {
            "Object tagging"
        } else if n.starts_with("x-amz-object-lock-") {
            "Object lock"
        } else if n == "x-amz-website-redirect-location" {
            "Website redirects"
        } else {
            continue;
        };
        return Err(S3Error::not_implemented(what));
    }
    Ok(())
}

/// A stored header must be sendable back as a header.
/// A header an object is stored with must be one its GET can send: the
/// name (a form field's, or metadata from a copy) and the value.
pub fn check_header_value(name: &str, value: &str) -> S3Result<()> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(S3Error::invalid_argument(format!(
            "{name:?} is not a valid HTTP header name"
        )));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(S3Error::invalid_argument(format!(
            "The value of {name} is not a valid HTTP header value"
        )));
    }
    Ok(())
}

/// Standard and user-metadata headers to store with an object.
pub fn object_headers(req: &S3Request) -> S3Result<ObjectHeaders> {
    reject_unsupported(req)?;
    let get = |n: &str| req.header(n).map(str::to_string);
    let content_encoding = req.header("content-encoding").and_then(|v| {
        let rest: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != "aws-chunked")
            .collect();
        // The client's own list, spacing as sent: only the transfer
        // framing is taken out.
        (!rest.is_empty()).then(|| rest.join(", "))
    });
    let mut h = ObjectHeaders {
        content_type: get("content-type"),
        cache_control: get("cache-control"),
        content_disposition: get("content-disposition"),
        content_encoding,
        content_language: get("content-language"),
        expires: get("expires"),
        user_metadata: Default::default(),
    };
    let mut meta_bytes = 0;
    for (name, value) in &req.headers {
        if let Some(m) = name.as_str().strip_prefix("x-amz-meta-") {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            meta_bytes += m.len() + v.len();
            h.user_metadata
                .entry(m.to_string())
                .and_modify(|existing| {
                    existing.push(',');
                    existing.push_str(&v);
                })
                .or_insert(v);
        }
    }
    if meta_bytes > MAX_USER_METADATA_BYTES {
        return Err(S3Error::new(
            S3ErrorCode::MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size (2 KB).",
        ));
    }
    Ok(h)
}

/// What the request claims about its body: length, MD5, SHA-256, checksum.
pub fn body_expectations(req: &S3Request, max_length: u64) -> S3Result<BodyExpectations> {
    let chunked = matches!(req.auth.payload, PayloadCheck::Chunked { .. });
    let length_header = if chunked {
        "x-amz-decoded-content-length"
    } else {
        "content-length"
    };
    let length =
        match req.header(length_header) {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                S3Error::invalid_argument(format!("{length_header} must be a number"))
            })?),
            // A body of unknown length (`Transfer-Encoding: chunked`, or
            // aws-chunked framing that does not say its decoded length) is
            // streamed to its end, within `max_length`; its checks hold all
            // the same, and nothing is visible before they pass.
            None if chunked || req.headers.contains_key(http::header::TRANSFER_ENCODING) => None,
            None => Some(0),
        };
    if let Some(len) = length {
        if len > max_length {
            return Err(S3Error::new(
                S3ErrorCode::EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed size",
            ));
        }
    }
    let md5 = match req.header("content-md5") {
        None => None,
        Some(v) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| {
                    S3Error::new(
                        S3ErrorCode::InvalidDigest,
                        "The Content-MD5 you specified is not valid.",
                    )
                })?;
            Some(raw)
        }
    };
    let sha256 = match &req.auth.payload {
        PayloadCheck::Sha256(h) => Some(h.clone()),
        _ => None,
    };
    // Such a body is read and its signature checked before dispatch
    // (`route_request`); one that got here unchecked is refused.
    if matches!(req.auth.payload, PayloadCheck::Deferred(_)) {
        return Err(crate::auth::DeferredSignature::mismatch());
    }
    let checksum = checksum_claim(req)?;
    Ok(BodyExpectations {
        length,
        md5,
        sha256,
        checksum,
        trailers: req.trailers.clone(),
        max_length,
    })
}

/// The flexible checksum a request claims for its body: a value in a
/// `x-amz-checksum-<alg>` header, or a trailer named in `x-amz-trailer`.
/// At most one may be sent, and it must be the algorithm that
/// `x-amz-sdk-checksum-algorithm` names if that is sent too.
pub fn checksum_claim(req: &S3Request) -> S3Result<Option<(ChecksumAlgorithm, ChecksumClaim)>> {
    let mut claims = Vec::new();
    for (name, value) in &req.headers {
        if let Some(alg) = checksum::from_header_name(name.as_str()) {
            let v = value.to_str().map_err(|_| bad_checksum(alg))?;
            claims.push((alg, ChecksumClaim::Header(v.to_string())));
        }
    }
    if let Some(trailer) = req.header("x-amz-trailer") {
        for name in trailer.split(',') {
            if let Some(alg) = checksum::from_header_name(name.trim()) {
                claims.push((alg, ChecksumClaim::Trailer));
            }
        }
    }
    if claims.len() > 1 {
        return Err(S3Error::invalid_request(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ));
    }
    let claim = claims.pop();
    if let (Some(named), Some((alg, _))) = (req.header("x-amz-sdk-checksum-algorithm"), &claim) {
        if ChecksumAlgorithm::parse(named) != Some(*alg) {
            return Err(S3Error::invalid_request(format!(
                "Value for x-amz-sdk-checksum-algorithm header is invalid: {named}"
            )));
        }
    }
    Ok(claim)
}

fn bad_checksum(alg: ChecksumAlgorithm) -> S3Error {
    S3Error::new(
        S3ErrorCode::BadDigest,
        format!(
            "The {} you specified did not match the calculated checksum.",
            checksum::header_name(alg)
        ),
    )
}

/// Streams a body to `replicas` new replicas and waits until all are
/// durable. On any failure every replica written is removed again.
pub async fn store_body(
    gw: &Gateway,
    body: BoxStream<'static, Result<Bytes, S3Error>>,
    expect: BodyExpectations,
    nodes: Option<Vec<String>>,
) -> S3Result<StoredBody> {
    let id = new_blob_id();
    let inflight = gw.inflight.hold(&id);
    let nodes = match nodes {
        Some(n) => n,
        None => gw
            .nodes
            .place(&id, gw.config.replicas, expect.length.unwrap_or(0))
            .map_err(node_error)?,
    };
    let expected_len = expect.length;
    let (stream, outcome) = body::verify(body, expect);
    let result = gw
        .nodes
        .put_replicated(&nodes, &id, stream, expected_len)
        .await;
    let outcome = outcome
        .lock()
        .map(|mut o| std::mem::take(&mut *o))
        .unwrap_or_default();
    let failure = match (outcome.error, result) {
        (Some(e), _) => Some(e),
        (None, Err(e)) => Some(node_error(e)),
        (None, Ok(_)) if !outcome.complete => Some(S3Error::new(
            S3ErrorCode::IncompleteBody,
            "The request body was incomplete.",
        )),
        (None, Ok(_)) => None,
    };
    if let Some(e) = failure {
        gw.nodes.delete_everywhere(&id, &nodes).await;
        return Err(e);
    }
    Ok(StoredBody {
        inflight,
        blob: BlobRef {
            id,
            size: outcome.length,
            replicas: nodes,
        },
        md5: outcome.md5,
        checksum: outcome.checksum,
    })
}

/// Makes a stored body the visible object `key` of `bucket`, owned by
/// `owner` with `acl`, atomically, if `cond` holds and the bucket is still
/// the one the caller was authorised for; otherwise the stored replicas are
/// removed again.
pub async fn commit_object(
    gw: &Gateway,
    bucket: &insitu_catalog::BucketRecord,
    key: &str,
    (owner, acl): (String, insitu_catalog::Acl),
    headers: ObjectHeaders,
    stored: &StoredBody,
    cond: &WriteCondition,
) -> S3Result<ObjectRecord> {
    let rec = ObjectRecord {
        size: stored.blob.size,
        etag: stored.etag(),
        last_modified_ms: now_ms(),
        owner,
        headers,
        acl,
        blob: stored.blob.clone(),
        parts_count: 0,
        part_sizes: vec![],
        upload_id: None,
        checksum: stored.checksum.as_ref().map(|(alg, value)| ObjectChecksum {
            algorithm: *alg,
            kind: ChecksumType::FullObject,
            value: value.clone(),
            parts: Vec::new(),
        }),
    };
    if let Err(e) = gw.catalog.put_object_checked(bucket, key, &rec, cond).await {
        gw.nodes
            .delete_everywhere(&stored.blob.id, &stored.blob.replicas)
            .await;
        return Err(e.into());
    }
    Ok(rec)
}

pub async fn put_object(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?.to_string();
    let key = req.key()?.to_string();
    validate_key(&key)?;
    let b = writable_bucket(gw, req.principal(), &bucket).await?;
    let owner = super::acl::writer(&req, &b.owner);
    let acl = super::acl::header_acl(gw, &req, &owner, &b.owner)
        .await?
        .unwrap_or_default();
    let headers = object_headers(&req)?;
    let cond = write_condition(&req)?;
    let expect = body_expectations(&req, MAX_PUT_BYTES)?;
    let body = req.take_body();
    let stored = store_body(gw, body, expect, None).await?;
    let rec = commit_object(gw, &b, &key, (owner, acl), headers, &stored, &cond).await?;
    tracing::debug!(key = %key, size = rec.size, "object stored");
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::ETAG, format!("\"{}\"", rec.etag));
    if let Some((alg, v)) = &stored.checksum {
        resp = resp
            .header(checksum::header_name(*alg), v)
            .header("x-amz-checksum-type", ChecksumType::FullObject.as_str());
    }
    resp.body(axum::body::Body::empty())
        .map_err(super::built_error)
}

pub async fn delete_object(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?;
    let key = req.key()?;
    writable_bucket(gw, req.principal(), bucket).await?;
    req.check_version_id()?;
    gw.catalog.delete_object(bucket, key).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}
