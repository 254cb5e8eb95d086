//! The S3 operations a task may call on its endpoint: GET and HEAD of an
//! object, ListObjects (V1 and V2). Each request is authenticated with the
//! calling task's credentials, the object's version and location come from
//! the gateway (which checks the tenant's read access), and the bytes from
//! this node's disk or a holder of the blob. Everything else is refused.

use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use insitu_node_api::{
    ByteRange, TaskListQuery, TaskListing, TaskObject, TaskObjectQuery, TaskReadError,
    TASK_LIST_PATH, TASK_OBJECT_PATH,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use super::{auth, EndpointHub, TaskEndpoint};

const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// Keys in one page of a listing, as S3 caps `max-keys`.
const MAX_KEYS: usize = 1000;

struct Ctx {
    hub: Arc<EndpointHub>,
    endpoint: Weak<TaskEndpoint>,
}

pub(super) fn router(hub: Arc<EndpointHub>, endpoint: Weak<TaskEndpoint>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(Arc::new(Ctx { hub, endpoint }))
}

/// An S3 error for the task.
#[derive(Debug)]
pub(super) struct S3Err {
    status: StatusCode,
    code: String,
    message: String,
}

pub(super) fn err(status: StatusCode, code: &str, message: impl Into<String>) -> S3Err {
    S3Err {
        status,
        code: code.to_string(),
        message: message.into(),
    }
}

pub(super) fn denied(message: impl Into<String>) -> S3Err {
    err(StatusCode::FORBIDDEN, "AccessDenied", message)
}

#[derive(Serialize)]
#[serde(rename = "Error")]
struct ErrorXml<'a> {
    #[serde(rename = "Code")]
    code: &'a str,
    #[serde(rename = "Message")]
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename = "CopyObjectResult")]
struct CopyResultXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "LastModified")]
    last_modified: String,
    #[serde(rename = "ETag")]
    etag: String,
}

/// The answer to a copy into the output place, as S3's CopyObject gives.
pub(super) fn copy_result(etag: &str, last_modified_ms: i64) -> Response {
    xml_response(
        StatusCode::OK,
        &CopyResultXml {
            xmlns: "http://s3.amazonaws.com/doc/2006-03-01/",
            last_modified: iso8601(last_modified_ms),
            etag: format!("\"{etag}\""),
        },
    )
}

fn xml_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match quick_xml::se::to_string(body) {
        Ok(xml) => (
            status,
            [(http::header::CONTENT_TYPE, "application/xml")],
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{xml}"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

impl IntoResponse for S3Err {
    fn into_response(self) -> Response {
        xml_response(
            self.status,
            &ErrorXml {
                code: &self.code,
                message: &self.message,
            },
        )
    }
}

async fn handle(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    match serve(&ctx, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(ctx: &Ctx, req: Request) -> Result<Response, S3Err> {
    let endpoint = ctx.endpoint.upgrade().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the task's container is ending",
        )
    })?;
    let (parts, body) = req.into_parts();
    let (access_key, authorization) =
        auth::access_key(&parts.headers).map_err(|r| denied_as(r.code, r.message))?;
    let (task, secret) = endpoint.grant(&access_key).ok_or_else(|| {
        err(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The access key is not that of a task running in this container.",
        )
    })?;
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    auth::verify(
        parts.method.as_str(),
        raw_path,
        raw_query,
        &parts.headers,
        &authorization,
        &secret,
        now,
    )
    .map_err(|r| denied_as(r.code, r.message))?;
    let span = tracing::info_span!("task_s3", tenant = %endpoint.tenant, job = %endpoint.job, task = %task);
    route(ctx, &endpoint, &task, &parts, body)
        .instrument(span)
        .await
}

async fn route(
    ctx: &Ctx,
    endpoint: &TaskEndpoint,
    task: &str,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, S3Err> {
    let path = insitu_sigv4::uri_decode(parts.uri.path().trim_start_matches('/'));
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b.to_string(), k.to_string()),
        None => (path.clone(), String::new()),
    };
    let query = query_map(parts.uri.query().unwrap_or(""));
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    let plain = !has_subresource(&query);
    let writes_output =
        parts.method == Method::PUT && plain && !parts.headers.contains_key("x-amz-copy-source");
    if !writes_output {
        endpoint.note_reader(task);
    }
    match (bucket.is_empty(), key.is_empty()) {
        (true, _) => Err(denied("a task may not list or change buckets")),
        (false, true) if parts.method == Method::GET && plain => {
            list(ctx, &endpoint.tenant, &bucket, &query).await
        }
        (false, false) if read && plain => {
            let head = parts.method == Method::HEAD;
            object(ctx, &endpoint.tenant, &bucket, &key, &parts.headers, head).await
        }
        (false, false)
            if parts.method == Method::PUT
                && plain
                && parts.headers.contains_key("x-amz-copy-source") =>
        {
            super::outputs::reference(&ctx.hub, endpoint, task, &bucket, &key, &parts.headers)
                .await
        }
        (false, false) if parts.method == Method::PUT && plain => {
            super::outputs::put(
                &ctx.hub,
                endpoint,
                task,
                &bucket,
                &key,
                &parts.headers,
                body,
            )
            .await
        }
        _ if query.iter().any(|(k, _)| k == "uploads" || k == "uploadId") => Err(denied(
            "multipart uploads are not supported through a task's endpoint: write each output with one PUT (raise the SDK's multipart threshold)",
        )),
        _ => Err(denied(
            "a task's endpoint allows GET and HEAD of objects and listings, and PUT of its outputs",
        )),
    }
}

fn denied_as(code: &str, message: String) -> S3Err {
    err(StatusCode::FORBIDDEN, code, message)
}

fn query_map(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (insitu_sigv4::query_decode(k), insitu_sigv4::query_decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Sub-resources (`?acl`, `?uploads`, ...) are other operations.
fn has_subresource(q: &[(String, String)]) -> bool {
    const READ_PARAMS: &[&str] = &[
        "list-type",
        "prefix",
        "delimiter",
        "continuation-token",
        "start-after",
        "max-keys",
        "marker",
        "encoding-type",
        "fetch-owner",
        "x-id",
    ];
    q.iter().any(|(k, _)| !READ_PARAMS.contains(&k.as_str()))
}

/// Asks a gateway (the first that answers) a task-read question.
/// Internal failures are logged here; the task gets a plain message
/// without the cluster's addresses or blob ids.
pub(super) async fn ask<Q: Serialize, A: DeserializeOwned>(
    hub: &EndpointHub,
    path: &str,
    q: &Q,
) -> Result<A, S3Err> {
    let unavailable = || {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the cluster cannot answer now; retry",
        )
    };
    let _permit = hub.upstream.acquire().await.map_err(|_| unavailable())?;
    let mut last = String::from("no gateway is configured");
    for gw in &hub.gateways {
        let url = format!("{}{path}", gw.trim_end_matches('/'));
        let sent = hub
            .http
            .post(&url)
            .bearer_auth(&hub.secret)
            .json(q)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let status = resp.status();
        if status.is_success() {
            return resp.json::<A>().await.map_err(|e| {
                tracing::warn!(gateway = %gw, error = %e, "task endpoint: unreadable gateway answer");
                unavailable()
            });
        }
        let Ok(refusal) = resp.json::<TaskReadError>().await else {
            tracing::warn!(gateway = %gw, %status, "task endpoint: unreadable gateway refusal");
            return Err(unavailable());
        };
        let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(err(status, &refusal.code, refusal.message));
    }
    tracing::warn!(error = %last, "task endpoint: no gateway answered");
    Err(unavailable())
}

async fn object(
    ctx: &Ctx,
    tenant: &str,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, S3Err> {
    let q = TaskObjectQuery {
        pin_for_job: None,
        tenant: tenant.to_string(),
        bucket: bucket.to_string(),
        key: key.to_string(),
    };
    let obj: TaskObject = ask(&ctx.hub, TASK_OBJECT_PATH, &q).await?;
    let range = match headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(v) => ByteRange::parse_for_get(v, obj.size).map_err(|_| {
            err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            )
        })?,
        None => None,
    };
    let mut r = Response::builder()
        .header(http::header::ETAG, format!("\"{}\"", obj.etag))
        .header(http::header::ACCEPT_RANGES, "bytes")
        .header(http::header::LAST_MODIFIED, http_date(obj.last_modified_ms));
    if let Some(ct) = &obj.content_type {
        r = r.header(http::header::CONTENT_TYPE, ct);
    }
    let (status, len) = match range {
        Some(rg) => {
            r = r.header(http::header::CONTENT_RANGE, rg.content_range(obj.size));
            (StatusCode::PARTIAL_CONTENT, rg.len())
        }
        None => (StatusCode::OK, obj.size),
    };
    r = r.status(status).header(http::header::CONTENT_LENGTH, len);
    let body = if head || len == 0 {
        Body::empty()
    } else {
        let rg = range.unwrap_or(ByteRange {
            start: 0,
            end: obj.size - 1,
        });
        Body::from_stream(blob_bytes(&ctx.hub, &obj, rg).await?)
    };
    r.body(body).map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })
}

type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// A range of a blob: from this node's disk when it holds a replica,
/// otherwise from a holder, node to node (the cluster secret).
async fn blob_bytes(
    hub: &EndpointHub,
    obj: &TaskObject,
    rg: ByteRange,
) -> Result<ByteStream, S3Err> {
    if hub.store.size(&obj.blob).await.is_ok() {
        if let Ok(s) = hub.store.read_verified(&obj.blob, rg.start, rg.end).await {
            return Ok(s.boxed());
        }
    }
    // Held while the bytes stream: remote reads are bounded node-wide.
    let permit = hub.upstream.clone().acquire_owned().await.ok();
    for h in &obj.holders {
        let url = format!("{}/v1/blobs/{}", h.addr.trim_end_matches('/'), obj.blob);
        let sent = hub
            .http
            .get(&url)
            .bearer_auth(&hub.secret)
            .header(http::header::RANGE, rg.header_value())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let stream = resp.bytes_stream().map(move |chunk| {
                    let _held = &permit;
                    chunk.map_err(std::io::Error::other)
                });
                return Ok(stream.boxed());
            }
            Ok(resp) => {
                tracing::warn!(node = %h.node, blob = %obj.blob, status = %resp.status(), "task endpoint: a holder refused a read")
            }
            Err(e) => {
                tracing::warn!(node = %h.node, blob = %obj.blob, error = %e, "task endpoint: a holder is unreachable")
            }
        }
    }
    Err(err(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "no replica of the object is reachable now; retry",
    ))
}

fn http_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn iso8601(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[derive(Serialize)]
#[serde(rename = "ListBucketResult")]
struct ListXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Prefix")]
    prefix: String,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
    #[serde(rename = "MaxKeys")]
    max_keys: usize,
    #[serde(rename = "KeyCount", skip_serializing_if = "Option::is_none")]
    key_count: Option<usize>,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "Marker", skip_serializing_if = "Option::is_none")]
    marker: Option<String>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    continuation_token: Option<String>,
    #[serde(
        rename = "NextContinuationToken",
        skip_serializing_if = "Option::is_none"
    )]
    next_continuation_token: Option<String>,
    #[serde(rename = "StartAfter", skip_serializing_if = "Option::is_none")]
    start_after: Option<String>,
    #[serde(rename = "Contents")]
    contents: Vec<ContentsXml>,
    #[serde(rename = "CommonPrefixes")]
    common_prefixes: Vec<PrefixXml>,
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
    #[serde(rename = "StorageClass")]
    storage_class: &'static str,
}

#[derive(Serialize)]
struct PrefixXml {
    #[serde(rename = "Prefix")]
    prefix: String,
}

async fn list(
    ctx: &Ctx,
    tenant: &str,
    bucket: &str,
    q: &[(String, String)],
) -> Result<Response, S3Err> {
    let v2 = match param(q, "list-type") {
        None => false,
        Some("2") => true,
        Some(_) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Invalid list-type",
            ))
        }
    };
    if param(q, "encoding-type").is_some_and(|e| e != "url") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Invalid Encoding Method specified in Request",
        ));
    }
    let max_keys = match param(q, "max-keys") {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "max-keys must be a number",
                )
            })?
            .min(MAX_KEYS),
        None => MAX_KEYS,
    };
    let token = match param(q, "continuation-token").filter(|_| v2) {
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        "The continuation token provided is incorrect",
                    )
                })?,
        ),
        None => None,
    };
    let after = match v2 {
        true => token
            .clone()
            .or_else(|| param(q, "start-after").map(str::to_string)),
        false => param(q, "marker").map(str::to_string),
    };
    let prefix = param(q, "prefix").unwrap_or("").to_string();
    let delimiter = param(q, "delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let page: TaskListing = match max_keys {
        0 => TaskListing::default(),
        _ => {
            let lq = TaskListQuery {
                tenant: tenant.to_string(),
                bucket: bucket.to_string(),
                prefix: prefix.clone(),
                delimiter: delimiter.clone(),
                after,
                max_keys,
            };
            ask(&ctx.hub, TASK_LIST_PATH, &lq).await?
        }
    };
    // Keys are sent as they are (UTF-8 in XML), so encoding-type=url is
    // not echoed: clients then do not decode them.
    let next = page.last.clone().filter(|_| page.truncated);
    let body = ListXml {
        xmlns: NS,
        name: bucket.to_string(),
        prefix,
        delimiter,
        max_keys,
        key_count: v2.then(|| page.objects.len() + page.common_prefixes.len()),
        truncated: page.truncated,
        marker: (!v2).then(|| param(q, "marker").unwrap_or("").to_string()),
        next_marker: next.clone().filter(|_| !v2),
        continuation_token: param(q, "continuation-token")
            .filter(|_| v2)
            .map(str::to_string),
        next_continuation_token: next.filter(|_| v2).map(hex::encode),
        start_after: param(q, "start-after").filter(|_| v2).map(str::to_string),
        contents: page
            .objects
            .into_iter()
            .map(|o| ContentsXml {
                key: o.key,
                last_modified: iso8601(o.last_modified_ms),
                etag: format!("\"{}\"", o.etag),
                size: o.size,
                storage_class: "STANDARD",
            })
            .collect(),
        common_prefixes: page
            .common_prefixes
            .into_iter()
            .map(|prefix| PrefixXml { prefix })
            .collect(),
    };
    Ok(xml_response(StatusCode::OK, &body))
}
