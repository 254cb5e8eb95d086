//! Multipart uploads. Every part of an upload is stored on the same nodes,
//! so Complete concatenates them locally into one plain file per replica.

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::{
    now_ms, BucketRecord, ChecksumAlgorithm, ChecksumType, ObjectChecksum, ObjectRecord,
    PartRecord, UploadChecksum, UploadRecord,
};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::access::{is_owner, readable_bucket, writable_bucket};
use super::copy::{copy_bytes, copy_source};
use super::get::ByteRange;
use super::put::{
    body_expectations, new_blob_id, node_error, object_headers, store_body, validate_key,
    StoredBody,
};
use super::{empty_response, xml, S3Request};
use crate::body::ChecksumClaim;
use crate::checksum::{self, CombineError, PartSum};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{
    MAX_LIST_KEYS, MAX_PART_NUMBER, MAX_PUT_BYTES, MAX_XML_BODY_BYTES, MIN_PART_BYTES,
};
use crate::nodes::NodeState;
use crate::Gateway;

/// The upload a request names, if the caller may work on it: the tenant
/// that started it, or the bucket's owner (a WRITE grant on the bucket lets
/// a tenant start uploads of its own, not touch others').
async fn upload(gw: &Gateway, req: &S3Request, bucket: &BucketRecord) -> S3Result<UploadRecord> {
    let upload_id = req.query("uploadId").unwrap_or_default();
    let up = gw
        .catalog
        .get_upload(req.bucket()?, req.key()?, upload_id)
        .await?
        .ok_or_else(|| {
            S3Error::from(insitu_catalog::CatalogError::NoSuchUpload(
                upload_id.to_string(),
            ))
        })?;
    let who = req.principal().tenant();
    if who == Some(up.owner.as_str()) || is_owner(req.principal(), bucket) {
        Ok(up)
    } else {
        Err(S3Error::access_denied())
    }
}

fn part_number(req: &S3Request) -> S3Result<u32> {
    req.query("partNumber")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

pub async fn create_upload(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?.to_string();
    let key = req.key()?.to_string();
    validate_key(&key)?;
    let b = writable_bucket(gw, req.principal(), &bucket).await?;
    let owner = super::acl::writer(&req, &b.owner);
    let acl = super::acl::header_acl(gw, &req, &owner, &b.owner)
        .await?
        .unwrap_or_default();
    let upload_id = new_blob_id();
    let nodes = gw
        .nodes
        .place(
            &upload_id,
            gw.config.replicas,
            crate::limits::MIN_PART_BYTES,
        )
        .map_err(node_error)?;
    let rec = UploadRecord {
        upload_id: upload_id.clone(),
        bucket: bucket.clone(),
        key: key.clone(),
        owner,
        initiated_ms: now_ms(),
        headers: object_headers(&req)?,
        acl,
        nodes,
        checksum: upload_checksum(&req)?,
    };
    gw.catalog.create_upload(&rec).await?;
    let body = InitiateXml {
        xmlns: xml::NS,
        bucket: &bucket,
        key: &key,
        upload_id: &upload_id,
    };
    let mut resp = xml::to_response(StatusCode::OK, &body)?;
    if let Some(c) = rec.checksum {
        let h = resp.headers_mut();
        h.insert(
            "x-amz-checksum-algorithm",
            http::HeaderValue::from_static(algorithm_name(c.algorithm)),
        );
        h.insert(
            "x-amz-checksum-type",
            http::HeaderValue::from_static(c.kind.as_str()),
        );
    }
    Ok(resp)
}

/// The upper-case name S3 uses for an algorithm in headers and XML.
fn algorithm_name(alg: ChecksumAlgorithm) -> &'static str {
    match alg {
        ChecksumAlgorithm::Crc32 => "CRC32",
        ChecksumAlgorithm::Crc32c => "CRC32C",
        ChecksumAlgorithm::Crc64nvme => "CRC64NVME",
        ChecksumAlgorithm::Sha1 => "SHA1",
        ChecksumAlgorithm::Sha256 => "SHA256",
    }
}

/// `x-amz-checksum-algorithm` and `x-amz-checksum-type` on
/// CreateMultipartUpload: every part then gets that checksum, and the
/// object's is made of theirs.
fn upload_checksum(req: &S3Request) -> S3Result<Option<UploadChecksum>> {
    let kind = match req.header("x-amz-checksum-type") {
        None => None,
        Some(t) => Some(ChecksumType::parse(&t.to_ascii_uppercase()).ok_or_else(|| {
            S3Error::invalid_request(format!(
                "Value for x-amz-checksum-type header is invalid: {t}"
            ))
        })?),
    };
    let Some(name) = req.header("x-amz-checksum-algorithm") else {
        if kind.is_some() {
            return Err(S3Error::invalid_request(
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.",
            ));
        }
        return Ok(None);
    };
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
        S3Error::invalid_request(
            "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]",
        )
    })?;
    let kind = checksum::upload_type(algorithm, kind).ok_or_else(|| {
        S3Error::invalid_request(format!(
            "The {} checksum type cannot be used with the {} checksum algorithm.",
            kind.map_or("", ChecksumType::as_str),
            algorithm_name(algorithm)
        ))
    })?;
    Ok(Some(UploadChecksum { algorithm, kind }))
}

/// Records a stored part; if the upload vanished meanwhile, its blob goes.
async fn commit_part(
    gw: &Gateway,
    up: &UploadRecord,
    number: u32,
    stored: &StoredBody,
) -> S3Result<PartRecord> {
    let part = PartRecord {
        part_number: number,
        etag: stored.etag(),
        last_modified_ms: now_ms(),
        blob: stored.blob.clone(),
        checksum: match (up.checksum, &stored.checksum) {
            (Some(c), Some((alg, value))) if c.algorithm == *alg => Some(value.clone()),
            _ => None,
        },
    };
    if let Err(e) = gw
        .catalog
        .put_part(&up.bucket, &up.key, &up.upload_id, &part)
        .await
    {
        gw.nodes
            .delete_everywhere(&stored.blob.id, &stored.blob.replicas)
            .await;
        return Err(e.into());
    }
    Ok(part)
}

pub async fn upload_part(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let b = writable_bucket(gw, req.principal(), req.bucket()?).await?;
    let number = part_number(&req)?;
    let up = upload(gw, &req, &b).await?;
    let mut expect = body_expectations(&req, MAX_PUT_BYTES)?;
    if let Some(c) = up.checksum {
        match &expect.checksum {
            None => expect.checksum = Some((c.algorithm, ChecksumClaim::Compute)),
            Some((alg, _)) if *alg == c.algorithm => {}
            Some((alg, _)) => {
                return Err(S3Error::invalid_request(format!(
                    "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                    c.algorithm.name(),
                    alg.name()
                )))
            }
        }
    }
    let body = req.take_body();
    let stored = store_body(gw, body, expect, Some(up.nodes.clone())).await?;
    let part = commit_part(gw, &up, number, &stored).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::ETAG, format!("\"{}\"", part.etag));
    if let Some((alg, v)) = &stored.checksum {
        resp = resp.header(checksum::header_name(*alg), v);
    }
    resp.body(Body::empty()).map_err(super::built_error)
}

pub async fn upload_part_copy(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let b = writable_bucket(gw, req.principal(), req.bucket()?).await?;
    let number = part_number(&req)?;
    let up = upload(gw, &req, &b).await?;
    let src = copy_source(gw, &req).await?;
    let range = match req.header("x-amz-copy-source-range") {
        None => None,
        Some(r) => Some(copy_range(r, src.object.size)?),
    };
    let algorithm = up.checksum.map(|c| c.algorithm);
    let stored = copy_bytes(gw, &src.object, range, Some(up.nodes.clone()), algorithm).await?;
    let part = commit_part(gw, &up, number, &stored).await?;
    let checksum = match (up.checksum, &part.checksum) {
        (Some(c), Some(v)) => xml::Checksum::of(c.algorithm, v),
        _ => xml::Checksum::default(),
    };
    xml::to_response_with_root(
        StatusCode::OK,
        "CopyPartResult",
        &CopyPartXml {
            xmlns: xml::NS,
            last_modified: xml::iso8601(part.last_modified_ms),
            etag: format!("\"{}\"", part.etag),
            checksum,
        },
    )
}

/// `x-amz-copy-source-range` is stricter than a GET range: only
/// `bytes=first-last`, entirely inside the source, as in S3.
fn copy_range(value: &str, size: u64) -> S3Result<ByteRange> {
    match ByteRange::parse_pair(value) {
        Some((start, end)) if start <= end && end < size => Ok(ByteRange { start, end }),
        Some(_) => Err(S3Error::new(
            S3ErrorCode::InvalidRange,
            format!("Range specified is not valid for source object of size: {size}"),
        )),
        None => Err(S3Error::invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")),
    }
}

#[derive(Deserialize)]
pub(super) struct CompleteRequest {
    #[serde(default, rename = "Part")]
    parts: Vec<CompletePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CompletePart {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "ChecksumCRC32")]
    crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C")]
    crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME")]
    crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1")]
    sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256")]
    sha256: Option<String>,
}

impl CompletePart {
    /// The part checksums the client listed, by algorithm.
    fn checksums(&self) -> impl Iterator<Item = (ChecksumAlgorithm, &str)> {
        [
            (ChecksumAlgorithm::Crc32, &self.crc32),
            (ChecksumAlgorithm::Crc32c, &self.crc32c),
            (ChecksumAlgorithm::Crc64nvme, &self.crc64nvme),
            (ChecksumAlgorithm::Sha1, &self.sha1),
            (ChecksumAlgorithm::Sha256, &self.sha256),
        ]
        .into_iter()
        .filter_map(|(a, v)| Some((a, v.as_deref()?.trim())))
    }
}

/// Checks the client's part list against the stored parts and returns the
/// parts to assemble, in order.
fn select_parts(requested: &[CompletePart], stored: &[PartRecord]) -> S3Result<Vec<PartRecord>> {
    if requested.is_empty() {
        return Err(S3Error::new(
            S3ErrorCode::MalformedXml,
            "You must specify at least one part.",
        ));
    }
    let mut chosen = Vec::with_capacity(requested.len());
    let mut previous = 0;
    for p in requested {
        if p.part_number <= previous {
            return Err(S3Error::new(S3ErrorCode::InvalidPartOrder, "The list of parts was not in ascending order. The parts list must be specified in order by part number."));
        }
        previous = p.part_number;
        let etag = p.etag.trim().trim_matches('"');
        let found = stored
            .iter()
            .find(|s| s.part_number == p.part_number && s.etag == etag)
            .ok_or_else(|| {
                S3Error::new(
                    S3ErrorCode::InvalidPart,
                    format!("One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag. (part {})", p.part_number),
                )
            })?;
        // A part checksum given in the list must be the one the part got.
        for (alg, value) in p.checksums() {
            if found.checksum.as_deref() != Some(value) {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidPart,
                    format!("One or more of the specified parts could not be found. The {} of part {} does not match the uploaded part's.", checksum::xml_name(alg), p.part_number),
                ));
            }
        }
        chosen.push(found.clone());
    }
    let total = chosen
        .iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.blob.size));
    if total.is_none_or(|t| t > crate::limits::MAX_OBJECT_BYTES) {
        return Err(S3Error::new(
            S3ErrorCode::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size (5 TiB).",
        ));
    }
    for p in &chosen[..chosen.len() - 1] {
        if p.blob.size < MIN_PART_BYTES {
            return Err(S3Error::new(S3ErrorCode::EntityTooSmall, format!("Your proposed upload is smaller than the minimum allowed object size. (part {} is {} bytes; every part but the last must be at least 5 MiB)", p.part_number, p.blob.size)));
        }
    }
    Ok(chosen)
}

/// The multipart ETag: MD5 of the concatenated binary part MD5s, then `-N`.
pub fn multipart_etag(parts: &[PartRecord]) -> S3Result<String> {
    let mut h = Md5::new();
    for p in parts {
        h.update(hex::decode(&p.etag).map_err(S3Error::internal)?);
    }
    Ok(format!("{}-{}", hex::encode(h.finalize()), parts.len()))
}

pub async fn complete_upload(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let b = writable_bucket(gw, req.principal(), req.bucket()?).await?;
    let cond = super::put::write_condition(&req)?;
    let up = match upload(gw, &req, &b).await {
        Ok(up) => up,
        Err(e) if e.code == S3ErrorCode::NoSuchUpload => {
            // Read (and check) the body the client sent all the same.
            req.read_complete_body(MAX_XML_BODY_BYTES).await?;
            return completed_before(gw, &req).await;
        }
        Err(e) => return Err(e),
    };
    let body = req.read_complete_body(MAX_XML_BODY_BYTES).await?;
    let requested: CompleteRequest = xml::parse(&body)?;
    let mut stored = Vec::new();
    let mut marker = 0;
    loop {
        let (page, more) = gw
            .catalog
            .list_parts(&up.upload_id, marker, MAX_LIST_KEYS)
            .await?;
        marker = page.last().map_or(marker, |p| p.part_number);
        stored.extend(page);
        if !more {
            break;
        }
    }
    let parts = select_parts(&requested.parts, &stored)?;
    let etag = multipart_etag(&parts)?;
    let object_checksum = object_checksum(&req, &up, &parts)?;
    let blob_id = new_blob_id();
    let _inflight = gw.inflight.hold(&blob_id);
    let part_ids: Vec<String> = parts.iter().map(|p| p.blob.id.clone()).collect();
    let size: u64 = parts.iter().map(|p| p.blob.size).sum();
    // Assemble on every reachable node that holds all the parts (after a
    // repair that is the upload's new node set). Fewer than R is accepted:
    // repair brings the object back to R copies.
    let holders: Vec<String> = parts[0]
        .blob
        .replicas
        .iter()
        .filter(|n| parts.iter().all(|p| p.blob.replicas.contains(n)))
        .filter(|n| {
            matches!(
                gw.nodes.state(n),
                Some(NodeState::Up | NodeState::Suspect | NodeState::Draining)
            )
        })
        .cloned()
        .collect();
    if holders.is_empty() {
        return Err(S3Error::new(
            S3ErrorCode::ServiceUnavailable,
            "The upload's parts are being re-replicated after a node failure; please retry shortly.",
        ));
    }
    let composed = futures::future::join_all(
        holders
            .iter()
            .map(|n| gw.nodes.compose(n, &blob_id, &part_ids)),
    )
    .await;
    let mut stored_on = Vec::new();
    let mut last_err = None;
    for (node, result) in holders.iter().zip(composed) {
        match result {
            Ok(_) => stored_on.push(node.clone()),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "assembling the object failed on one replica");
                last_err = Some(e);
            }
        }
    }
    if stored_on.is_empty() {
        gw.nodes.delete_everywhere(&blob_id, &holders).await;
        return Err(last_err
            .map(node_error)
            .unwrap_or_else(|| S3Error::internal("no replica assembled the object")));
    }
    let rec = ObjectRecord {
        size,
        etag: etag.clone(),
        last_modified_ms: now_ms(),
        owner: up.owner.clone(),
        headers: up.headers.clone(),
        acl: up.acl.clone(),
        blob: insitu_catalog::BlobRef {
            id: blob_id.clone(),
            size,
            replicas: stored_on.clone(),
        },
        parts_count: parts.len() as u32,
        part_sizes: parts.iter().map(|p| p.blob.size).collect(),
        upload_id: Some(up.upload_id.clone()),
        checksum: object_checksum,
    };
    if let Err(e) = gw
        .catalog
        .complete_upload(&up.bucket, &up.key, &up.upload_id, &rec, &cond)
        .await
    {
        gw.nodes.delete_everywhere(&blob_id, &stored_on).await;
        return Err(e.into());
    }
    tracing::debug!(key = %up.key, size, parts = parts.len(), "multipart upload completed");
    completed(&up.bucket, &up.key, &rec)
}

/// The object checksum of an upload created with one, made of its parts'
/// checksums; if the client sent the value it expects on Complete
/// (`x-amz-checksum-<alg>`), it must be this one.
fn object_checksum(
    req: &S3Request,
    up: &UploadRecord,
    parts: &[PartRecord],
) -> S3Result<Option<ObjectChecksum>> {
    let claimed = ChecksumAlgorithm::ALL
        .into_iter()
        .find_map(|a| Some((a, req.header(checksum::header_name(a))?)));
    let Some(c) = up.checksum else {
        return match claimed {
            Some((alg, _)) => Err(S3Error::invalid_request(format!(
                "The upload was created without a checksum; {} cannot be checked.",
                checksum::header_name(alg)
            ))),
            None => Ok(None),
        };
    };
    let sums: Vec<PartSum> = parts
        .iter()
        .map(|p| PartSum {
            number: p.part_number,
            size: p.blob.size,
            checksum: p.checksum.as_deref(),
        })
        .collect();
    let value = checksum::combine(c.algorithm, c.kind, &sums).map_err(|e| match e {
        CombineError::Missing(n) => S3Error::invalid_request(format!(
            "The upload was created using a {} checksum. Part {n} was uploaded without one.",
            algorithm_name(c.algorithm)
        )),
        CombineError::Corrupt(n) => S3Error::internal(format!("part {n} has a corrupt checksum")),
    })?;
    if let Some((alg, v)) = claimed {
        if alg != c.algorithm || v.trim() != value {
            return Err(S3Error::new(
                S3ErrorCode::BadDigest,
                format!(
                    "The {} you specified did not match the calculated checksum.",
                    checksum::header_name(alg)
                ),
            ));
        }
    }
    Ok(Some(ObjectChecksum {
        algorithm: c.algorithm,
        kind: c.kind,
        value,
        parts: parts.iter().filter_map(|p| p.checksum.clone()).collect(),
    }))
}

fn completed(bucket: &str, key: &str, obj: &ObjectRecord) -> S3Result<Response> {
    let (checksum, checksum_type) = match &obj.checksum {
        Some(c) => (
            xml::Checksum::of(c.algorithm, &c.value),
            Some(c.kind.as_str()),
        ),
        None => (xml::Checksum::default(), None),
    };
    xml::to_response_with_root(
        StatusCode::OK,
        "CompleteMultipartUploadResult",
        &CompleteXml {
            xmlns: xml::NS,
            location: format!("/{bucket}/{key}"),
            bucket,
            key,
            etag: format!("\"{}\"", obj.etag),
            checksum,
            checksum_type,
        },
    )
}

/// A Complete for an upload that is no longer open: if the object at its
/// key is the one that upload made, the first completion's answer again
/// (as S3 does, so a client that lost the answer can retry); otherwise
/// `NoSuchUpload`.
async fn completed_before(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let (bucket, key) = (req.bucket()?, req.key()?);
    let upload_id = req.query("uploadId").unwrap_or_default();
    match gw.catalog.get_object(bucket, key).await? {
        Some(obj) if obj.upload_id.as_deref() == Some(upload_id) => completed(bucket, key, &obj),
        _ => Err(insitu_catalog::CatalogError::NoSuchUpload(upload_id.to_string()).into()),
    }
}

pub async fn abort_upload(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = writable_bucket(gw, req.principal(), req.bucket()?).await?;
    let up = upload(gw, req, &b).await?;
    gw.catalog
        .abort_upload(&up.bucket, &up.key, &up.upload_id)
        .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

pub async fn list_parts(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = writable_bucket(gw, req.principal(), req.bucket()?).await?;
    let up = upload(gw, req, &b).await?;
    let max = super::list::max_keys(req, "max-parts")?;
    let marker: u32 = match req.query("part-number-marker") {
        None | Some("") => 0,
        Some(m) => m
            .parse()
            .map_err(|_| S3Error::invalid_argument("Invalid part-number-marker"))?,
    };
    let (parts, truncated) = gw.catalog.list_parts(&up.upload_id, marker, max).await?;
    let body = ListPartsXml {
        xmlns: xml::NS,
        bucket: &up.bucket,
        key: &up.key,
        upload_id: &up.upload_id,
        initiator: xml::Principal::tenant(&up.owner),
        owner: xml::Principal::tenant(&up.owner),
        storage_class: "STANDARD",
        checksum_algorithm: up.checksum.map(|c| algorithm_name(c.algorithm)),
        checksum_type: up.checksum.map(|c| c.kind.as_str()),
        marker,
        next_marker: parts.last().map(|p| p.part_number),
        max,
        truncated,
        parts: parts
            .iter()
            .map(|p| PartXml {
                number: p.part_number,
                last_modified: xml::iso8601(p.last_modified_ms),
                etag: format!("\"{}\"", p.etag),
                size: p.blob.size,
                checksum: match (up.checksum, &p.checksum) {
                    (Some(c), Some(v)) => xml::Checksum::of(c.algorithm, v),
                    _ => xml::Checksum::default(),
                },
            })
            .collect(),
    };
    xml::to_response(StatusCode::OK, &body)
}

pub async fn list_uploads(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?;
    // Listing uploads is reading the bucket, as S3's READ grant allows.
    readable_bucket(gw, req.principal(), bucket).await?;
    let e = super::list::Encoder::from_request(req)?;
    let prefix = req.query("prefix").unwrap_or("");
    let delimiter = req.query("delimiter").filter(|d| !d.is_empty());
    let key_marker = req.query("key-marker").filter(|m| !m.is_empty());
    let id_marker = req.query("upload-id-marker").filter(|m| !m.is_empty());
    let max = super::list::max_keys(req, "max-uploads")?;
    let query = insitu_catalog::UploadQuery {
        prefix: prefix.to_string(),
        delimiter: delimiter.map(str::to_string),
        key_marker: key_marker.map(str::to_string),
        upload_id_marker: id_marker.map(str::to_string),
        max: max.max(1),
    };
    let page = gw.catalog.list_uploads(bucket, &query).await?;
    let truncated = page.is_truncated;
    let body = ListUploadsXml {
        xmlns: xml::NS,
        bucket,
        key_marker: e.enc(key_marker.unwrap_or("")),
        upload_id_marker: id_marker.unwrap_or(""),
        next_key_marker: page
            .next_key_marker
            .as_deref()
            .filter(|_| truncated)
            .map(|k| e.enc(k)),
        next_upload_id_marker: page.next_upload_id_marker.as_deref().filter(|_| truncated),
        prefix: e.enc(prefix),
        delimiter: delimiter.map(|d| e.enc(d)),
        max_uploads: max,
        encoding_type: e.encoding_type(),
        truncated,
        uploads: page
            .uploads
            .iter()
            .map(|u| UploadXml {
                key: e.enc(&u.key),
                upload_id: &u.upload_id,
                initiator: xml::Principal::tenant(&u.owner),
                owner: xml::Principal::tenant(&u.owner),
                storage_class: "STANDARD",
                initiated: xml::iso8601(u.initiated_ms),
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

// ---- response bodies ----------------------------------------------------------

#[derive(Serialize)]
#[serde(rename = "InitiateMultipartUploadResult")]
struct InitiateXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Bucket")]
    bucket: &'a str,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "UploadId")]
    upload_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename = "CopyPartResult")]
struct CopyPartXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(flatten)]
    checksum: xml::Checksum,
}

#[derive(Serialize)]
#[serde(rename = "CompleteMultipartUploadResult")]
struct CompleteXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Location")]
    location: String,
    #[serde(rename = "Bucket")]
    bucket: &'a str,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(flatten)]
    checksum: xml::Checksum,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    checksum_type: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename = "ListPartsResult")]
struct ListPartsXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Bucket")]
    bucket: &'a str,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "UploadId")]
    upload_id: &'a str,
    #[serde(rename = "Initiator")]
    initiator: xml::Principal,
    #[serde(rename = "Owner")]
    owner: xml::Principal,
    #[serde(rename = "StorageClass")]
    storage_class: &'static str,
    #[serde(rename = "ChecksumAlgorithm", skip_serializing_if = "Option::is_none")]
    checksum_algorithm: Option<&'static str>,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    checksum_type: Option<&'static str>,
    #[serde(rename = "PartNumberMarker")]
    marker: u32,
    #[serde(
        rename = "NextPartNumberMarker",
        skip_serializing_if = "Option::is_none"
    )]
    next_marker: Option<u32>,
    #[serde(rename = "MaxParts")]
    max: usize,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "Part")]
    parts: Vec<PartXml>,
}

#[derive(Serialize)]
struct PartXml {
    #[serde(rename = "PartNumber")]
    number: u32,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(flatten)]
    checksum: xml::Checksum,
}

#[derive(Serialize)]
#[serde(rename = "ListMultipartUploadsResult")]
struct ListUploadsXml<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Bucket")]
    bucket: &'a str,
    #[serde(rename = "KeyMarker")]
    key_marker: String,
    #[serde(rename = "UploadIdMarker")]
    upload_id_marker: &'a str,
    #[serde(rename = "NextKeyMarker", skip_serializing_if = "Option::is_none")]
    next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker", skip_serializing_if = "Option::is_none")]
    next_upload_id_marker: Option<&'a str>,
    #[serde(rename = "Prefix")]
    prefix: String,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
    #[serde(rename = "MaxUploads")]
    max_uploads: usize,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    encoding_type: Option<&'static str>,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "Upload")]
    uploads: Vec<UploadXml<'a>>,
    #[serde(rename = "CommonPrefixes")]
    common_prefixes: Vec<xml::CommonPrefix>,
}

#[derive(Serialize)]
struct UploadXml<'a> {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    upload_id: &'a str,
    #[serde(rename = "Initiator")]
    initiator: xml::Principal,
    #[serde(rename = "Owner")]
    owner: xml::Principal,
    #[serde(rename = "StorageClass")]
    storage_class: &'static str,
    #[serde(rename = "Initiated")]
    initiated: String,
}

#[cfg(test)]
mod xml_tests {
    use super::*;

    #[test]
    fn copy_ranges_are_exact_and_inside_the_source() {
        assert_eq!(
            copy_range("bytes=2-4", 10).unwrap(),
            ByteRange { start: 2, end: 4 }
        );
        for (value, code) in [
            ("bytes=7-3", S3ErrorCode::InvalidRange),
            ("bytes=0-10", S3ErrorCode::InvalidRange),
            ("bytes=3-", S3ErrorCode::InvalidArgument),
            ("nonsense", S3ErrorCode::InvalidArgument),
        ] {
            assert_eq!(copy_range(value, 10).unwrap_err().code, code, "{value}");
        }
    }

    #[test]
    fn complete_result_names_its_checksum() {
        let body = CompleteXml {
            xmlns: xml::NS,
            location: "/b/k".into(),
            bucket: "b",
            key: "k",
            etag: "\"e-2\"".into(),
            checksum: xml::Checksum::of(ChecksumAlgorithm::Crc32, "AAAAAA==-2"),
            checksum_type: Some("COMPOSITE"),
        };
        let text =
            quick_xml::se::to_string_with_root("CompleteMultipartUploadResult", &body).unwrap();
        assert!(
            text.starts_with(
                "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            ),
            "{text}"
        );
        assert!(text.contains("<ETag>\"e-2\"</ETag><ChecksumCRC32>AAAAAA==-2</ChecksumCRC32><ChecksumType>COMPOSITE</ChecksumType>"), "{text}");
        let none = CompleteXml {
            checksum: xml::Checksum::default(),
            checksum_type: None,
            ..body
        };
        let text =
            quick_xml::se::to_string_with_root("CompleteMultipartUploadResult", &none).unwrap();
        assert!(
            text.ends_with("<ETag>\"e-2\"</ETag></CompleteMultipartUploadResult>"),
            "{text}"
        );
    }
}
