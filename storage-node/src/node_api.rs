//! The storage node's internal HTTP API, spoken only by the gateway.
//!
//! Every request carries the cluster secret as a bearer token: the API moves
//! every tenant's bytes and must not be open to anyone who can reach the port.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::blob_store::{BlobError, BlobStore};

use insitu_node_api::ByteRange;
pub use insitu_node_api::{Health, EXPECTED_LENGTH_HEADER};

pub struct NodeState {
    pub node_id: String,
    pub secret: String,
    /// Sent with heartbeats: see [`crate::Heartbeat::node_key`].
    pub node_key: String,
    pub store: Arc<BlobStore>,
    /// Requests being served right now: the node's load, reported to the
    /// gateway so it can prefer idle replicas.
    pub active: std::sync::atomic::AtomicU64,
    /// Task execution, when a container engine is available.
    pub tasks: Option<Arc<crate::task_api::TaskService>>,
}

/// Counts a request as load for as long as it is served.
async fn count_load(
    State(state): State<Arc<NodeState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use std::sync::atomic::Ordering;
    state.active.fetch_add(1, Ordering::Relaxed);
    let resp = next.run(req).await;
    state.active.fetch_sub(1, Ordering::Relaxed);
    resp
}

#[derive(Serialize, Deserialize)]
pub struct ComposeRequest {
    pub parts: Vec<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/blobs", get(list_blobs))
        .route("/v1/tasks", post(run_task))
        .route("/v1/images", post(prepare_image))
        .route(
            "/v1/groups/{tenant}/{job}/{phase}",
            axum::routing::delete(end_group),
        )
        .route(
            "/v1/blobs/{id}",
            get(get_blob)
                .head(head_blob)
                .put(put_blob)
                .delete(delete_blob),
        )
        .route("/v1/blobs/{id}/compose", post(compose_blob))
        .route(
            "/v1/streams/{tenant}/{job}/{task}/append",
            post(stream_append),
        )
        .route("/v1/streams/{tenant}/{job}/{task}/end", post(stream_end))
        .route("/v1/logs/{tenant}/{job}", post(read_logs))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_load,
        ))
        .with_state(state)
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        let status = match &e {
            BlobError::InvalidId(_) | BlobError::ShortBody { .. } | BlobError::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            BlobError::NotFound(_) => StatusCode::NOT_FOUND,
            BlobError::Exists(_) => StatusCode::CONFLICT,
            BlobError::BadRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            BlobError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
            BlobError::Corrupt { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            BlobError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "blob store failure");
        }
        ApiError(status, e.to_string())
    }
}

fn authorize(state: &NodeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.secret.as_bytes();
    let ok = presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong cluster secret".into(),
        ))
    }
}

async fn health(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
) -> Result<Json<Health>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(Health {
        node_id: state.node_id.clone(),
        temp_files: state.store.temp_files().await?,
        usage: state.store.usage(),
        corrupt: state.store.corrupt_blobs(),
        load: state
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1),
    }))
}

async fn list_blobs(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<crate::blob_store::BlobEntry>>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(
        state
            .store
            .list(&q.after, q.limit.unwrap_or(1000).min(10_000))
            .await?,
    ))
}

#[tracing::instrument(skip_all, fields(node = %state.node_id, blob = %id))]
async fn put_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let expected = headers
        .get(EXPECTED_LENGTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let info = state.store.put(&id, stream, expected).await?;
    tracing::debug!(size = info.size, "blob stored");
    Ok((StatusCode::CREATED, Json(info)))
}

#[tracing::instrument(skip_all, fields(node = %state.node_id, blob = %id))]
async fn compose_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ComposeRequest>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let info = state.store.compose(&id, &req.parts).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// The only range form the gateway sends: `bytes=START-END`, inclusive;
/// anything else in a `Range` header is refused, never read as "all".
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<ByteRange>, BlobError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(ByteRange::parse_exact)
        .map(Some)
        .ok_or(BlobError::BadRange {
            start: 0,
            end: 0,
            size,
        })
}

async fn get_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let size = state.store.size(&id).await?;
    let (status, start, end) = match parse_range(&headers, size)? {
        Some(ByteRange { start: s, end: e }) => {
            if e >= size {
                // The gateway asks only for ranges inside the recorded size: a
                // shorter file is a damaged replica.
                state.store.mark_corrupt(&id, size);
                return Err(BlobError::BadRange {
                    start: s,
                    end: e,
                    size,
                }
                .into());
            }
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let body = if len == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.store.read_verified(&id, start, end).await?)
    };
    Ok((status, [(header::CONTENT_LENGTH, len.to_string())], body).into_response())
}

async fn head_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let size = state.store.size(&id).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_LENGTH, size.to_string())],
        Body::empty(),
    )
        .into_response())
}

async fn delete_blob(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    state.store.delete(&id).await?;
    if let Some(tasks) = state.tasks.clone() {
        // An image loaded from this blob goes with it, in the background:
        // a load in progress must not hold up deletes.
        tokio::spawn(async move { tasks.forget_image(&id).await });
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Runs one task next to its input; see `task_api`.
async fn run_task(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    Json(req): Json<crate::task_api::TaskRequest>,
) -> Result<Json<crate::task_api::TaskResponse>, Response> {
    use crate::task_api::TaskApiError;
    use crate::task_runner::TaskError;
    authorize(&state, &headers).map_err(IntoResponse::into_response)?;
    let Some(tasks) = &state.tasks else {
        return Err(task_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "InternalError",
            "this node has no container engine",
        ));
    };
    let span = tracing::info_span!("task", node = %state.node_id, tenant = %req.tenant, job = %req.job, phase = req.phase, task = %req.task_id);
    // The task runs to its end even if the gateway hangs up (it may have
    // been cancelled): its container is then tracked and ended properly.
    let (tasks, store) = (tasks.clone(), state.store.clone());
    let run = tokio::spawn(tracing::Instrument::instrument(
        async move { tasks.run(&store, req).await },
        span,
    ));
    let result = match run.await {
        Ok(r) => r,
        Err(e) => Err(TaskApiError::Task(TaskError::Runtime(format!(
            "task runner stopped: {e}"
        )))),
    };
    result.map(Json).map_err(task_api_error)
}

#[derive(Deserialize)]
struct AppendQuery {
    /// A blob on this node to append; without it, the request body is.
    blob: Option<String>,
}

fn stream_error(e: crate::task_api::StreamError) -> Response {
    use crate::task_api::StreamError;
    let status = match e {
        StreamError::NoSuchStream(_) => StatusCode::NOT_FOUND,
        StreamError::Ended | StreamError::ReaderGone => StatusCode::CONFLICT,
        StreamError::Source(_) => StatusCode::BAD_GATEWAY,
    };
    ApiError(status, e.to_string()).into_response()
}

/// Appends a local blob (verified block by block) or the request body to a
/// running task's streamed input.
async fn stream_append(
    State(state): State<Arc<NodeState>>,
    Path((tenant, job, task)): Path<(String, String, String)>,
    Query(q): Query<AppendQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, Response> {
    authorize(&state, &headers).map_err(IntoResponse::into_response)?;
    let Some(tasks) = &state.tasks else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no container engine".into(),
        )
        .into_response());
    };
    let key = format!("{tenant}/{job}/{task}");
    let written = match q.blob {
        Some(id) => {
            let size = state
                .store
                .size(&id)
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            if size == 0 {
                0
            } else {
                let data = state
                    .store
                    .read_verified(&id, 0, size - 1)
                    .await
                    .map_err(|e| ApiError::from(e).into_response())?;
                tasks
                    .append(&key, Box::pin(data))
                    .await
                    .map_err(stream_error)?
            }
        }
        None => {
            let data = body.into_data_stream().map_err(std::io::Error::other);
            tasks
                .append(&key, Box::pin(data))
                .await
                .map_err(stream_error)?
        }
    };
    Ok(Json(serde_json::json!({ "appended": written })))
}

async fn stream_end(
    State(state): State<Arc<NodeState>>,
    Path((tenant, job, task)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Response> {
    authorize(&state, &headers).map_err(IntoResponse::into_response)?;
    let Some(tasks) = &state.tasks else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no container engine".into(),
        )
        .into_response());
    };
    tasks
        .end_stream(&format!("{tenant}/{job}/{task}"))
        .await
        .map_err(stream_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pulls or loads a task's image ahead of its task (the gateway reports the
/// task as waiting for its image meanwhile; this time is not the task's).
async fn prepare_image(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    Json(req): Json<crate::task_api::TaskRequest>,
) -> Result<Json<serde_json::Value>, Response> {
    authorize(&state, &headers).map_err(IntoResponse::into_response)?;
    let Some(tasks) = &state.tasks else {
        return Err(task_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "InternalError",
            "this node has no container engine",
        ));
    };
    let (tasks, store) = (tasks.clone(), state.store.clone());
    let prepared = tokio::spawn(async move { tasks.prepare_image(&store, &req).await })
        .await
        .map_err(|e| {
            task_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "InternalError",
                &e.to_string(),
            )
        })?;
    prepared
        .map(|(image, id)| Json(serde_json::json!({ "image": image, "image_id": id })))
        .map_err(task_api_error)
}

/// A task or image failure as the gateway reads it: the job error code
/// that fits, and a status that tells it whether another node could do
/// better (503) or not.
fn task_api_error(e: crate::task_api::TaskApiError) -> Response {
    use crate::task_api::TaskApiError;
    use crate::task_runner::TaskError;
    match e {
        TaskApiError::Task(TaskError::BadOutput(m) | TaskError::InitFailed(m)) => {
            task_error(StatusCode::UNPROCESSABLE_ENTITY, "UserTaskError", &m)
        }
        TaskApiError::Task(TaskError::GroupEnded(g)) => task_error(
            StatusCode::CONFLICT,
            "JobCancelledError",
            &format!("group {g} has ended"),
        ),
        TaskApiError::Task(TaskError::ImageNotFound(i)) => task_error(
            StatusCode::NOT_FOUND,
            "ImageNotFoundError",
            &format!("image {i} is not available"),
        ),
        TaskApiError::Task(TaskError::Invalid(m)) => {
            task_error(StatusCode::BAD_REQUEST, "InvalidArgumentError", &m)
        }
        TaskApiError::Blob(BlobError::NotFound(b)) => task_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundError",
            &format!("blob {b} is not on this node"),
        ),
        e => {
            tracing::error!(error = %e, "task failed to run");
            task_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "InternalError",
                &e.to_string(),
            )
        }
    }
}

fn task_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// What a job's tasks here wrote to stderr (`insitu job logs`).
async fn read_logs(
    State(state): State<Arc<NodeState>>,
    Path((tenant, job)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<insitu_node_api::LogRequest>,
) -> Result<Json<insitu_node_api::LogResponse>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(match &state.tasks {
        Some(tasks) => tasks.read_logs(&tenant, &job, req).await,
        None => Default::default(),
    }))
}

async fn end_group(
    State(state): State<Arc<NodeState>>,
    Path((tenant, job, phase)): Path<(String, String, u32)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    if let Some(tasks) = &state.tasks {
        tasks.end_group(&tenant, &job, phase).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
