//! PUT through a task's endpoint: a named output. The key must be under
//! the job's output place; the rest of it is the output's name. The body
//! streams into a blob on this node (never held whole), its MD5 kept for
//! the ETag and a claimed SHA-256 checked; the blob stays staged until the
//! task's outcome is committed, and is dropped with a failed task.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use insitu_job_model::limits::{MAX_NAMED_OUTPUTS, MAX_OUTPUT_METADATA_BYTES};
use insitu_job_model::plan::OutputPlace;
use insitu_node_api::{NamedOut, OutputHeaders};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::s3::{denied, err, S3Err};
use super::{EndpointHub, TaskEndpoint, Unrecorded, Unreserved};
use crate::blob_store::BlobError;

/// The header that routes an output to a reducer of the next phase.
pub const REDUCER_HEADER: &str = "x-insitu-reducer";

/// Where a task's output goes: its name under the job's output place, and
/// the reducer of the next phase it asks for.
fn target<'a>(
    endpoint: &TaskEndpoint,
    task: &str,
    bucket: &str,
    key: &'a str,
    headers: &HeaderMap,
) -> Result<(&'a str, Option<u32>), S3Err> {
    let spec = endpoint
        .stage_spec(task)
        .ok_or_else(|| denied("this task writes no named outputs"))?;
    let name = match key.strip_prefix(&spec.prefix) {
        Some(name) if bucket == spec.bucket => name,
        _ => {
            return Err(denied(format!(
                "a task may write only under its job's output place {}/{}",
                spec.bucket, spec.prefix
            )))
        }
    };
    if let Some(why) = OutputPlace::named_output_refusal(&spec.prefix, name) {
        return Err(match why.starts_with("keys are") {
            true => err(StatusCode::BAD_REQUEST, "KeyTooLongError", why),
            false if why.starts_with("_insitu/") => denied(why),
            false => invalid(why),
        });
    }
    let reducer = match headers.get(REDUCER_HEADER) {
        None => None,
        Some(v) => {
            let r = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or_else(|| invalid(format!("{REDUCER_HEADER} is a reducer number")))?;
            match spec.next_reducers {
                Some(n) if r < n => Some(r),
                Some(n) => {
                    return Err(invalid(format!(
                        "{REDUCER_HEADER}: {r}, but the next phase has reducers 0 to {}",
                        n - 1
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "{REDUCER_HEADER}: the next phase is not a reduce"
                    )))
                }
            }
        }
    };
    Ok((name, reducer))
}

/// A copy into the output place (`x-amz-copy-source`, what `mcat` sends):
/// the output is the source object itself, by reference, with no bytes
/// copied. The gateway resolves the source's current version with the
/// tenant's read access checked, and pins it for the job at once; that
/// version is what the next phase reads, or what the job lists as its
/// output in the last phase.
pub(super) async fn reference(
    hub: &EndpointHub,
    endpoint: &TaskEndpoint,
    task: &str,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, S3Err> {
    let (name, reducer) = target(endpoint, task, bucket, key, headers)?;
    let source = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("x-amz-copy-source is not text".to_string()))?;
    let (src_bucket, src_key) = parse_copy_source(source)?;
    let q = insitu_node_api::TaskObjectQuery {
        tenant: endpoint.tenant.clone(),
        bucket: src_bucket.clone(),
        key: src_key.clone(),
        pin_for_job: Some(endpoint.job.clone()),
    };
    // Counted against the task's outputs (no bytes) before anything is
    // pinned, so a task past its cap or its end pins nothing.
    endpoint.reserve_reference(task, name).map_err(unreserved)?;
    let asked: Result<insitu_node_api::TaskObject, S3Err> =
        super::s3::ask(hub, insitu_node_api::TASK_OBJECT_PATH, &q).await;
    let obj = match asked {
        Ok(obj) if obj.pinned => obj,
        Ok(_) => {
            endpoint.release(task, Some(0));
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the gateway did not pin the reference (a gateway older than references?); retry",
            ));
        }
        Err(e) => {
            endpoint.release(task, Some(0));
            return Err(e);
        }
    };
    let out = NamedOut {
        name: name.to_string(),
        blob: String::new(),
        size: 0,
        md5: obj.etag.clone(),
        reducer,
        headers: Default::default(),
        reference: Some(insitu_node_api::ObjectReference {
            bucket: src_bucket,
            key: src_key,
            blob: obj.blob.clone(),
            etag: obj.etag.clone(),
            size: obj.size,
            replicas: obj.holders.iter().map(|h| h.node.clone()).collect(),
        }),
    };
    match endpoint.record(task, out, Some(0)) {
        Ok(replaced) => {
            if let Some(old) = replaced {
                let _ = hub.store.delete(&old).await;
            }
            tracing::debug!(name = %name, blob = %obj.blob, "task output referenced");
            Ok(super::s3::copy_result(&obj.etag, obj.last_modified_ms))
        }
        Err(Unrecorded::Ended) => Err(denied("the task has ended")),
        Err(Unrecorded::TooLarge) => Err(invalid("no room".to_string())),
    }
}

/// `bucket/key` of an `x-amz-copy-source` (URL-encoded, with or without a
/// leading `/`); a version other than `null` (the only one of an
/// unversioned bucket) is refused, as insitu keeps none.
fn parse_copy_source(v: &str) -> Result<(String, String), S3Err> {
    let v = v.trim().trim_start_matches('/');
    let v = match v.split_once('?') {
        None => v,
        Some((path, "versionId=null")) => path,
        Some(_) => {
            return Err(err(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "a copy source names an object, not a version: insitu keeps no versions",
            ))
        }
    };
    let decoded = insitu_sigv4::uri_decode(v);
    match decoded.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_string(), k.to_string())),
        _ => Err(invalid(format!(
            "x-amz-copy-source must be bucket/key, not {v:?}"
        ))),
    }
}

pub(super) async fn put(
    hub: &EndpointHub,
    endpoint: &TaskEndpoint,
    task: &str,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, S3Err> {
    let (name, reducer) = target(endpoint, task, bucket, key, headers)?;
    let out_headers = output_headers(headers)?;
    let claimed = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("UNSIGNED-PAYLOAD");
    let sha256 = match claimed {
        "UNSIGNED-PAYLOAD" => None,
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(h.to_ascii_lowercase())
        }
        _ => {
            return Err(err(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "a task's endpoint takes a signed or UNSIGNED-PAYLOAD body, not aws-chunked",
            ))
        }
    };
    let declared = match headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| invalid("Content-Length is not a number".to_string()))?,
        ),
        None => None,
    };
    let (room, blob) = endpoint.reserve(task, name, declared).map_err(unreserved)?;
    let written = write(hub, &blob, body, declared, room, sha256.as_deref()).await;
    let (size, md5) = match written {
        Ok(w) => w,
        Err(e) => {
            endpoint.release(task, declared);
            return Err(match e {
                Failed::Refused(e) => e,
                Failed::TooLarge => too_large(),
            });
        }
    };
    let out = NamedOut {
        name: name.to_string(),
        blob: blob.clone(),
        size,
        md5: md5.clone(),
        reducer,
        reference: None,
        headers: out_headers,
    };
    match endpoint.record(task, out, declared) {
        Ok(replaced) => {
            if let Some(old) = replaced {
                let _ = hub.store.delete(&old).await;
            }
            tracing::debug!(name = %name, blob = %blob, size, "task output staged");
            Ok((StatusCode::OK, [(http::header::ETAG, format!("\"{md5}\""))]).into_response())
        }
        Err(why) => {
            let _ = hub.store.delete(&blob).await;
            Err(match why {
                Unrecorded::Ended => denied("the task has ended"),
                Unrecorded::TooLarge => too_large(),
            })
        }
    }
}

/// The headers of a PUT kept with its object, as the S3 API keeps them:
/// the standard ones, and user metadata within S3's 2 KiB.
fn output_headers(headers: &HeaderMap) -> Result<OutputHeaders, S3Err> {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let get = |n: &str| headers.get(n).map(text);
    let mut out = OutputHeaders {
        content_type: get("content-type"),
        cache_control: get("cache-control"),
        content_disposition: get("content-disposition"),
        content_encoding: get("content-encoding"),
        content_language: get("content-language"),
        expires: get("expires"),
        user_metadata: Default::default(),
    };
    let mut bytes = 0;
    for (name, value) in headers {
        if let Some(m) = name.as_str().strip_prefix("x-amz-meta-") {
            let v = text(value);
            bytes += m.len() + v.len();
            out.user_metadata
                .entry(m.to_string())
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(&v);
                })
                .or_insert(v);
        }
    }
    if bytes > MAX_OUTPUT_METADATA_BYTES {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size (2 KB).",
        ));
    }
    Ok(out)
}

/// The refusal of an output there is no room for.
fn unreserved(why: Unreserved) -> S3Err {
    match why {
        Unreserved::Ended => denied("the task has ended"),
        Unreserved::TooMany => denied(format!(
            "a task writes at most {MAX_NAMED_OUTPUTS} named outputs"
        )),
        Unreserved::TooLarge => too_large(),
    }
}

fn too_large() -> S3Err {
    err(
        StatusCode::BAD_REQUEST,
        "EntityTooLarge",
        "the task's outputs would exceed its output_mb",
    )
}

/// Why a body was not stored.
enum Failed {
    Refused(S3Err),
    TooLarge,
}

/// Streams a body into blob `blob` (at most `room` bytes), checking a
/// claimed SHA-256: its size and MD5, or why it was not kept.
async fn write(
    hub: &EndpointHub,
    blob: &str,
    body: Body,
    declared: Option<u64>,
    room: u64,
    sha256: Option<&str>,
) -> Result<(u64, String), Failed> {
    let digests = std::sync::Arc::new(std::sync::Mutex::new((Md5::new(), Sha256::new(), 0u64)));
    let seen = digests.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk: Bytes = chunk.map_err(|e| e.to_string())?;
        let mut d = seen.lock().map_err(|_| "digest lock".to_string())?;
        d.2 += chunk.len() as u64;
        if d.2 > room {
            return Err("the task's outputs would exceed its output_mb".to_string());
        }
        d.0.update(&chunk);
        sha2::Digest::update(&mut d.1, &chunk);
        Ok(chunk)
    });
    let stored = hub.store.put(blob, Box::pin(stream), declared).await;
    let (md5, sha, size) = {
        let d = digests.lock().map_err(|_| Failed::Refused(internal()))?;
        (
            hex::encode(d.0.clone().finalize()),
            hex::encode(sha2::Digest::finalize(d.1.clone())),
            d.2,
        )
    };
    let info = match stored {
        Ok(info) => info,
        Err(e) if size > room => {
            tracing::info!(blob = %blob, error = %e, "task output over its cap");
            return Err(Failed::TooLarge);
        }
        Err(BlobError::Full { .. }) => {
            return Err(Failed::Refused(err(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the task's node has no room for this output",
            )))
        }
        Err(e) => {
            tracing::info!(blob = %blob, error = %e, "task output not stored");
            return Err(Failed::Refused(incomplete()));
        }
    };
    if sha256.is_some_and(|h| h != sha) {
        let _ = hub.store.delete(blob).await;
        return Err(Failed::Refused(err(
            StatusCode::BAD_REQUEST,
            "XAmzContentSha256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )));
    }
    Ok((info.size, md5))
}

fn invalid(message: String) -> S3Err {
    err(StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

fn incomplete() -> S3Err {
    err(
        StatusCode::BAD_REQUEST,
        "IncompleteBody",
        "the body ended before its Content-Length, or could not be stored",
    )
}

fn internal() -> S3Err {
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "the output could not be staged",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_name_an_object_and_no_other_version() {
        let ok = |v: &str| parse_copy_source(v).ok();
        let pair = |b: &str, k: &str| Some((b.to_string(), k.to_string()));
        assert_eq!(ok("b/k"), pair("b", "k"));
        assert_eq!(ok("/b/dir/a%20b"), pair("b", "dir/a b"));
        assert_eq!(ok("b/k?versionId=null"), pair("b", "k"));
        assert_eq!(ok("b/k?versionId=3HL4kqtJ"), None);
        assert_eq!(ok("b"), None);
        assert_eq!(ok("/k"), None);
    }
}
