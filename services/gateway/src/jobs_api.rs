//! The jobs API under `/_insitu/v1/jobs`, signed with the tenant's keys.
//! Errors are JSON `{code, message}` with the job error codes. The routes
//! are listed in docs/API.md and served as OpenAPI at
//! `/_insitu/v1/openapi.json`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use insitu_jobs::records::JobRecord;
use insitu_jobs::{JobError, JobList, JobSpec, LogFilter, PhaseKind};
use serde_json::{json, Value};

use crate::Gateway;

/// Default and largest page of a list.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

pub const OPENAPI: &str = include_str!("jobs_openapi.json");

/// The one mapping from job errors to the API's JSON errors.
fn error_response(err: JobError) -> Response {
    {
        let (status, code) = match &err {
            JobError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidArgumentError"),
            JobError::NotFound(_) | JobError::MissingObject(_) => {
                (StatusCode::NOT_FOUND, "ResourceNotFoundError")
            }
            JobError::Conflict(_) => (StatusCode::CONFLICT, "InvalidJobStateError"),
            JobError::AccessDenied(_) => (StatusCode::FORBIDDEN, "AccessDeniedError"),
            JobError::TooManyJobs(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyJobsError"),
            JobError::Unavailable(_) | JobError::Elsewhere(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError")
            }
            JobError::Catalog(e) if e.is_retryable() => {
                tracing::warn!(error = %err, "jobs API: catalog unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError")
            }
            JobError::Catalog(_) => {
                tracing::error!(error = %err, "jobs API failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        let message = match status {
            StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_string(),
            _ => err.to_string(),
        };
        (status, Json(json!({ "code": code, "message": message }))).into_response()
    }
}

fn query_map(raw: &str) -> HashMap<String, String> {
    crate::auth::query_map(raw).into_iter().collect()
}

fn limit_of(q: &HashMap<String, String>) -> Result<usize, JobError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(JobError::Invalid(format!(
                "limit must be 1..={MAX_LIMIT}, not {v:?}"
            ))),
        },
    }
}

fn after_of(q: &HashMap<String, String>) -> Result<Option<u64>, JobError> {
    match q.get("after") {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| JobError::Invalid(format!("after must be a marker from next, not {v:?}"))),
    }
}

pub async fn handle(
    gw: &Arc<Gateway>,
    tenant: &str,
    method: Method,
    path: &[&str],
    raw_query: &str,
    body: &[u8],
) -> Response {
    match route(gw, tenant, method, path, raw_query, body).await {
        Ok(r) => r,
        Err(JobError::Elsewhere(peer)) => forward(gw, &peer, tenant, path, body).await,
        Err(e) => error_response(e),
    }
}

/// Where a peer gateway sends a call on a job this gateway drives.
pub const FORWARD_PATH: &str = "/_insitu/v1/internal/jobs/";
/// The tenant a forwarded call is made for.
pub const FORWARD_TENANT: &str = "x-insitu-tenant";
/// When it was forwarded (seconds since the epoch), and its signature.
const FORWARD_TIME: &str = "x-insitu-forward-time";
const FORWARD_SIGNATURE: &str = "x-insitu-forward-signature";
/// How far a forwarded call's time may be from the receiver's clock.
const FORWARD_SKEW_SECS: u64 = 60;

/// Signs a forwarded call with a key derived from the root secret, which
/// every gateway of a cluster has and storage nodes do not: the cluster
/// secret alone (which nodes hold) cannot act for a tenant.
fn forward_signature(
    gw: &Gateway,
    time: i64,
    tenant: &str,
    path: &str,
    body: &[u8],
) -> Option<String> {
    use crate::auth::sigv4::{sha256_hex, Scope, SigningKey};
    let date = chrono::DateTime::from_timestamp(time, 0)?
        .format("%Y%m%d")
        .to_string();
    let scope = Scope {
        date,
        region: "insitu".into(),
        service: "gateway-forward".into(),
    };
    let key = SigningKey::derive(&gw.config.root.secret_access_key, &scope)?;
    Some(key.sign(&format!("{time}\n{tenant}\n{path}\n{}", sha256_hex(body))))
}

/// Whether a forwarded call carries a peer's signature, made within the
/// allowed skew; the tenant it is made for.
pub fn verify_forwarded(
    gw: &Gateway,
    headers: &http::HeaderMap,
    rest: &str,
    body: &[u8],
) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let tenant = get(FORWARD_TENANT)?;
    let time: i64 = get(FORWARD_TIME)?.parse().ok()?;
    if chrono::Utc::now().timestamp().abs_diff(time) > FORWARD_SKEW_SECS {
        return None;
    }
    let expected = forward_signature(gw, time, tenant, rest, body)?;
    crate::auth::sigv4::signatures_match(get(FORWARD_SIGNATURE)?, &expected)
        .then(|| tenant.to_string())
}

/// Makes a change to a job (inputs, end of input, cancel) on the peer
/// gateway that drives it, as the tenant this gateway authenticated, and
/// answers with the peer's answer.
async fn forward(gw: &Gateway, peer: &str, tenant: &str, path: &[&str], body: &[u8]) -> Response {
    let rest = path.join("/");
    let url = format!("{peer}{FORWARD_PATH}{rest}");
    let time = chrono::Utc::now().timestamp();
    let Some(signature) = forward_signature(gw, time, tenant, &rest, body) else {
        return error_response(JobError::Unavailable(
            "cannot sign the call for its gateway".into(),
        ));
    };
    let sent = gw
        .control
        .http()
        .post(url)
        .bearer_auth(&gw.config.cluster_secret)
        .header(FORWARD_TENANT, tenant)
        .header(FORWARD_TIME, time.to_string())
        .header(FORWARD_SIGNATURE, signature)
        .body(body.to_vec())
        .send()
        .await;
    let unavailable = |why: String| {
        tracing::warn!(peer = %peer, error = %why, "cannot forward a job call to its gateway");
        error_response(JobError::Unavailable(
            "the gateway that drives this job did not answer; retry".into(),
        ))
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return unavailable(e.to_string()),
    };
    let status = resp.status();
    let answer = futures::TryStreamExt::map_err(resp.bytes_stream(), |e| {
        crate::error::S3Error::new(crate::error::S3ErrorCode::IncompleteBody, e.to_string())
    });
    match crate::body::read_small(Box::pin(answer), MAX_FORWARDED_ANSWER).await {
        Ok(bytes) => (
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            [(http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => unavailable(e.to_string()),
    }
}

/// A peer's answer is a job status or an error: small.
const MAX_FORWARDED_ANSWER: usize = 1 << 20;

/// Serves a call a peer forwarded: only the changes a peer forwards, and
/// never forwarded again (a job that moved meanwhile is a retry).
pub async fn handle_forwarded(
    gw: &Arc<Gateway>,
    tenant: &str,
    path: &[&str],
    body: &[u8],
) -> Response {
    let allowed = matches!(path, [_, "inputs"] | [_, "inputs", "end"] | [_, "cancel"]);
    if !allowed {
        return error_response(JobError::NotFound("no such forwarded call".into()));
    }
    match route(gw, tenant, Method::POST, path, "", body).await {
        Ok(r) => r,
        Err(JobError::Elsewhere(_)) => error_response(JobError::Unavailable(
            "the job is changing gateways; retry".into(),
        )),
        Err(e) => error_response(e),
    }
}

async fn route(
    gw: &Arc<Gateway>,
    tenant: &str,
    method: Method,
    path: &[&str],
    raw_query: &str,
    body: &[u8],
) -> Result<Response, JobError> {
    let q = query_map(raw_query);
    match (method, path) {
        (Method::POST, []) => {
            let spec = JobSpec::parse(body).map_err(|e| JobError::Invalid(e.to_string()))?;
            let rec = gw.jobs.create(tenant, spec).await?;
            Ok((StatusCode::CREATED, Json(status_json(&rec, &[], &[]))).into_response())
        }
        (Method::GET, []) => {
            let limit = limit_of(&q)?;
            let (jobs, more) = gw
                .jobs
                .list_jobs(tenant, q.get("after").map(String::as_str), limit)
                .await?;
            let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
            let jobs: Vec<Value> = jobs
                .iter()
                .map(|j| {
                    json!({
                        "id": j.id, "name": j.spec.name, "state": j.state,
                        "created_ms": j.created_ms, "done_ms": j.done_ms,
                        "errors": j.counters.errors, "outputs": j.counters.outputs,
                    })
                })
                .collect();
            Ok(Json(json!({ "jobs": jobs, "next": next })).into_response())
        }
        (Method::GET, [id]) => {
            let rec = gw.jobs.get(tenant, id).await?;
            let (running, preparing) = gw.jobs.running(id);
            let mut status = status_json(&rec, &running, &preparing);
            status["waiting"] = json!(gw.jobs.waiting(id));
            Ok(Json(status).into_response())
        }
        (Method::POST, [id, "inputs"]) => {
            let inputs = parse_input_body(body)?;
            let added = gw.jobs.add(tenant, id, &inputs).await?;
            Ok(Json(json!({ "added": added })).into_response())
        }
        (Method::POST, [id, "inputs", "end"]) => {
            let rec = gw.jobs.end_input(tenant, id).await?;
            let (running, preparing) = gw.jobs.running(id);
            Ok(Json(status_json(&rec, &running, &preparing)).into_response())
        }
        (Method::POST, [id, "cancel"]) => {
            let rec = gw.jobs.cancel(tenant, id).await?;
            Ok(Json(status_json(&rec, &[], &[])).into_response())
        }
        (Method::GET, [id, list @ ("outputs" | "errors" | "inputs" | "failures")]) => {
            // The job must be the tenant's.
            gw.jobs.get(tenant, id).await?;
            let (limit, after) = (limit_of(&q)?, after_of(&q)?);
            let (items, next) = match *list {
                "outputs" => page(gw, id, JobList::Outputs, after, limit).await?,
                "errors" => page(gw, id, JobList::Errors, after, limit).await?,
                "inputs" => page(gw, id, JobList::Inputs, after, limit).await?,
                _ => page(gw, id, JobList::FailedInputs, after, limit).await?,
            };
            Ok(Json(json!({ *list: items, "next": next })).into_response())
        }
        (Method::GET, [id, "logs"]) => {
            let filter = LogFilter {
                phase: match q.get("phase") {
                    Some(p) => Some(p.parse().map_err(|_| {
                        JobError::Invalid(format!("phase must be a number, not {p:?}"))
                    })?),
                    None => None,
                },
                task: q.get("task").cloned(),
            };
            let follow = match q.get("follow").map(String::as_str) {
                None | Some("false" | "0") => false,
                Some("" | "true" | "1") => true,
                Some(v) => {
                    return Err(JobError::Invalid(format!(
                        "follow must be true or false, not {v:?}"
                    )))
                }
            };
            let lines = gw.jobs.logs(tenant, id, filter, follow).await?;
            let body = futures::stream::unfold(lines, |mut rx| async move {
                let text = rx.recv().await?;
                Some((Ok::<_, std::convert::Infallible>(text), rx))
            });
            Ok((
                [
                    (http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (http::header::CACHE_CONTROL, "no-cache"),
                ],
                axum::body::Body::from_stream(body),
            )
                .into_response())
        }
        (m, p) => Err(JobError::NotFound(format!(
            "no jobs API at {m} /_insitu/v1/jobs/{}",
            p.join("/")
        ))),
    }
}

async fn page(
    gw: &Gateway,
    job: &str,
    list: JobList,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), JobError> {
    let (items, more) = gw.jobs.list_items(job, list, after, limit).await?;
    let next = more
        .then(|| items.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    let items = items.into_iter().map(|(_, v)| v).collect();
    Ok((items, next))
}

/// `{"inputs": ["bucket/key", ...]}`, or one `bucket/key` per line.
fn parse_input_body(body: &[u8]) -> Result<Vec<String>, JobError> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
    if trimmed.is_some_and(|i| body[i] == b'{') {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Inputs {
            inputs: Vec<String>,
        }
        let v: Inputs = serde_json::from_slice(body)
            .map_err(|e| JobError::Invalid(format!("expected {{\"inputs\": [...]}}: {e}")))?;
        return Ok(v.inputs);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| JobError::Invalid("inputs must be UTF-8, one bucket/key per line".into()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A job's status: state, counters, and tasks by state per phase.
pub fn status_json(rec: &JobRecord, running: &[u64], preparing: &[u64]) -> Value {
    let mut totals = json!({"queued": 0u64, "preparing_image": 0u64, "running": 0u64, "done": 0u64, "memoized": 0u64, "failed": 0u64, "total": 0u64});
    let (mut local, mut remote) = (0u64, 0u64);
    let phases: Vec<Value> = rec
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let in_flight = running.get(i).copied().unwrap_or(0);
            let prep = preparing.get(i).copied().unwrap_or(0).min(in_flight);
            let run = in_flight - prep;
            let queued = p.tasks.saturating_sub(p.finished() + in_flight);
            for (k, v) in [
                ("queued", queued),
                ("preparing_image", prep),
                ("running", run),
                ("done", p.done),
                ("memoized", p.memoized),
                ("failed", p.failed),
                ("total", p.tasks),
            ] {
                totals[k] = json!(totals[k].as_u64().unwrap_or(0) + v);
            }
            local += p.bytes_local;
            remote += p.bytes_remote;
            let kind = rec.spec.phases[i].kind;
            json!({
                "phase": i,
                "type": kind,
                "reducers": (kind == PhaseKind::Reduce).then(|| rec.spec.phases[i].reducers()),
                "tasks": {"queued": queued, "preparing_image": prep, "running": run, "done": p.done, "memoized": p.memoized, "failed": p.failed, "total": p.tasks},
                "bytes_local": p.bytes_local,
                "bytes_remote": p.bytes_remote,
            })
        })
        .collect();
    json!({
        "id": rec.id,
        "name": rec.spec.name,
        "state": rec.state,
        "created_ms": rec.created_ms,
        "done_ms": rec.done_ms,
        "input_closed": rec.input_closed,
        "inputs_complete": rec.inputs_complete(),
        "output": rec.spec.output,
        "counters": {
            "inputs": rec.counters.inputs,
            "outputs": rec.counters.outputs,
            "errors": rec.counters.errors,
            "retries": rec.counters.retries,
            "tasks": totals,
            "bytes_local": local,
            "bytes_remote": remote,
        },
        "phases": phases,
    })
}
