//! The insitu HTTP API under `/_insitu/v1/`: health, and the admin calls
//! (tenants, keys, nodes). Signed with SigV4 like S3; errors are JSON
//! `{code, message}`. The jobs API joins it here.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{request::Parts, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use insitu_catalog::{now_ms, AccessKeyRecord, CatalogError};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::auth::{sigv4, Authenticator, Principal, SignedRequest};
use crate::body::read_small;
use crate::error::{S3Error, S3ErrorCode};
use crate::Gateway;

const MAX_API_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Auth(S3Error),
    #[error("only the root credentials may do this")]
    NotRoot,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            Self::Auth(e) => e.code.as_str(),
            Self::NotRoot => "AccessDenied",
            Self::InvalidArgument(_) => "InvalidArgument",
            Self::NotFound(_) => "ResourceNotFound",
            Self::Conflict(_) => "Conflict",
            Self::Internal(_) => "InternalError",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Auth(e) => e.code.status(),
            Self::NotRoot => StatusCode::FORBIDDEN,
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TenantExists(t) => Self::Conflict(format!("tenant {t} already exists")),
            CatalogError::NoSuchTenant(t) => Self::NotFound(format!("tenant {t} does not exist")),
            CatalogError::KeyExists(k) => Self::Conflict(format!("access key {k} already exists")),
            other => {
                tracing::error!(error = %other, "catalog failure in API");
                Self::Internal(other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        (
            self.status(),
            Json(serde_json::json!({ "code": self.code(), "message": message })),
        )
            .into_response()
    }
}

/// 201 with the JSON credentials `insitu admin` prints.
fn created_credentials(key: AccessKeyRecord) -> Response {
    let body = Credentials {
        tenant: key.tenant,
        access_key_id: key.access_key_id,
        secret_access_key: key.secret_access_key,
    };
    (StatusCode::CREATED, Json(body)).into_response()
}

#[derive(Serialize)]
pub struct Credentials {
    pub tenant: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Deserialize)]
struct CreateTenant {
    name: String,
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn new_access_key(tenant: &str) -> AccessKeyRecord {
    AccessKeyRecord {
        access_key_id: format!("IN{}", random_string(18).to_ascii_uppercase()),
        secret_access_key: random_string(40),
        tenant: tenant.to_string(),
        created_ms: now_ms(),
    }
}

fn validate_tenant_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(
            "tenant names are 1 to 64 characters of lower-case letters, digits, '-' and '_'".into(),
        ))
    }
}

pub async fn handle(gw: Arc<Gateway>, parts: Parts, body: Body) -> Response {
    match route(gw, parts, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(gw: Arc<Gateway>, parts: Parts, body: Body) -> Result<Response, ApiError> {
    let path = parts.uri.path().to_string();
    if path == insitu_node_api::HEARTBEAT_PATH {
        return heartbeat(&gw, &parts, body).await;
    }
    if crate::task_reads::is_task_read(&path) {
        return Ok(crate::task_reads::handle(&gw, &parts, body).await);
    }
    if let Some(rest) = path.strip_prefix(crate::jobs_api::FORWARD_PATH) {
        return forwarded(&gw, &parts, rest, body).await;
    }
    if path == "/_insitu/v1/metrics" {
        return Ok(metrics(&gw));
    }
    if path == "/_insitu/v1/openapi.json" {
        return Ok((
            [(http::header::CONTENT_TYPE, "application/json")],
            crate::jobs_api::OPENAPI,
        )
            .into_response());
    }
    if path == "/_insitu/v1/health" {
        return Ok(
            Json(serde_json::json!({ "status": "ok", "nodes": gw.nodes.node_ids() }))
                .into_response(),
        );
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let auth = Authenticator {
        catalog: gw.catalog.as_ref(),
        root: &gw.config.root,
        region: &gw.config.region,
    };
    let signed = |body_sha256: Option<String>| SignedRequest {
        method: parts.method.as_str(),
        raw_path: &path,
        raw_query,
        headers: &parts.headers,
        now: chrono::Utc::now().timestamp(),
        body_sha256,
        host_bucket: None,
    };
    // Who is asking is settled before the body is read wherever the
    // request says its body's hash (SDKs, presigned URLs); only a client
    // that signs the hash without sending it (curl) is read first, within
    // the API's small body limit. Nobody anonymous gets that far.
    let up_front = parts.headers.contains_key("x-amz-content-sha256")
        || !parts.headers.contains_key(http::header::AUTHORIZATION);
    let early = if up_front {
        let a = auth
            .authenticate(&signed(None))
            .await
            .map_err(ApiError::Auth)?;
        if a.principal == Principal::Anonymous {
            return Err(ApiError::Auth(S3Error::access_denied()));
        }
        Some(a)
    } else {
        None
    };
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = read_small(Box::pin(raw), MAX_API_BODY_BYTES)
        .await
        .map_err(ApiError::Auth)?;
    let principal = {
        let a = match early {
            Some(a) => a,
            None => auth
                .authenticate(&signed(Some(sigv4::sha256_hex(&bytes))))
                .await
                .map_err(ApiError::Auth)?,
        };
        if matches!(a.payload, crate::auth::PayloadCheck::Deferred(_)) {
            // Unreachable: the body's hash was known when this was signed.
            return Err(ApiError::Auth(crate::auth::DeferredSignature::mismatch()));
        }
        if let crate::auth::PayloadCheck::Sha256(h) = &a.payload {
            if *h != sigv4::sha256_hex(&bytes) {
                return Err(ApiError::Auth(S3Error::new(
                    S3ErrorCode::XAmzContentSha256Mismatch,
                    "The body does not match x-amz-content-sha256.",
                )));
            }
        }
        a.principal
    };
    if principal == Principal::Anonymous {
        return Err(ApiError::Auth(S3Error::access_denied()));
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/_insitu/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (parts.method.clone(), segments.as_slice()) {
        (Method::GET, ["whoami"]) => Ok(Json(
            serde_json::json!({ "tenant": principal.tenant(), "root": principal.is_root() }),
        )
        .into_response()),
        (m, ["jobs", rest @ ..]) => {
            let tenant = principal.tenant().unwrap_or_default().to_string();
            let raw_query = parts.uri.query().unwrap_or("");
            Ok(crate::jobs_api::handle(&gw, &tenant, m, rest, raw_query, &bytes).await)
        }
        (m, ["admin", rest @ ..]) => {
            if !principal.is_root() {
                return Err(ApiError::NotRoot);
            }
            admin(&gw, m, rest, &bytes).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no API at {} {path}",
            parts.method
        ))),
    }
}

async fn admin(
    gw: &Gateway,
    method: Method,
    path: &[&str],
    body: &[u8],
) -> Result<Response, ApiError> {
    match (method, path) {
        (Method::POST, ["tenants"]) => {
            let req: CreateTenant = serde_json::from_slice(body).map_err(|e| {
                ApiError::InvalidArgument(format!("expected {{\"name\": \"...\"}}: {e}"))
            })?;
            validate_tenant_name(&req.name)?;
            gw.catalog.create_tenant(&req.name).await?;
            let key = new_access_key(&req.name);
            gw.catalog.put_access_key(&key).await?;
            tracing::info!(tenant = %req.name, "tenant created");
            Ok(created_credentials(key))
        }
        (m @ (Method::PUT | Method::GET), ["tenants", tenant, "policy"]) => {
            if m == Method::PUT {
                let policy: insitu_catalog::TenantPolicy = serde_json::from_slice(body)
                    .map_err(|e| ApiError::InvalidArgument(format!("bad policy: {e}")))?;
                insitu_jobs::check_policy(&policy).map_err(ApiError::InvalidArgument)?;
                if !gw.catalog.set_tenant_policy(tenant, &policy).await? {
                    return Err(ApiError::NotFound(format!(
                        "tenant {tenant} does not exist"
                    )));
                }
                tracing::info!(tenant = %tenant, "tenant policy set");
            }
            let rec = gw
                .catalog
                .get_tenant(tenant)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tenant {tenant} does not exist")))?;
            Ok(
                Json(serde_json::json!({ "tenant": rec.name, "policy": rec.policy }))
                    .into_response(),
            )
        }
        (Method::GET, ["tenants"]) => {
            let tenants: Vec<_> = gw
                .catalog
                .list_tenants().await?
                .into_iter()
                .map(|t| serde_json::json!({ "tenant": t.name, "created_ms": t.created_ms, "policy": t.policy }))
                .collect();
            Ok(Json(serde_json::json!({ "tenants": tenants })).into_response())
        }
        (Method::POST, ["tenants", tenant, "keys"]) => {
            if gw.catalog.get_tenant(tenant).await?.is_none() {
                return Err(ApiError::NotFound(format!(
                    "tenant {tenant} does not exist"
                )));
            }
            let key = new_access_key(tenant);
            gw.catalog.put_access_key(&key).await?;
            tracing::info!(tenant = %tenant, access_key_id = %key.access_key_id, "access key created");
            Ok(created_credentials(key))
        }
        (Method::GET, ["nodes"]) => Ok(Json(nodes_report(gw)).into_response()),
        (Method::POST, ["nodes", id, action @ ("drain" | "undrain")]) => {
            let draining = *action == "drain";
            if !gw.catalog.set_node_draining(id, draining).await? {
                return Err(ApiError::NotFound(format!(
                    "node {id} is not part of the cluster"
                )));
            }
            gw.nodes.set_draining(id, draining);
            gw.repair
                .wake
                .store(true, std::sync::atomic::Ordering::Relaxed);
            gw.repair
                .wake
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(node = %id, draining, "node drain state changed");
            Ok(Json(nodes_report(gw)).into_response())
        }
        (Method::DELETE, ["nodes", id]) => {
            if gw.catalog.get_node(id).await?.is_none_or(|n| n.removed) {
                return Err(ApiError::NotFound(format!(
                    "node {id} is not part of the cluster"
                )));
            }
            gw.catalog.remove_node(id).await?;
            gw.nodes.remove_node(id);
            gw.repair
                .wake
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(node = %id, "node removed; its replicas will be re-created elsewhere");
            Ok(Json(nodes_report(gw)).into_response())
        }
        (m, p) => Err(ApiError::NotFound(format!(
            "no admin API at {m} /{}",
            p.join("/")
        ))),
    }
}

/// State of every node and of repair, for `insitu admin nodes`.
fn nodes_report(gw: &Gateway) -> serde_json::Value {
    let nodes: Vec<_> = gw
        .nodes
        .snapshot()
        .into_iter()
        .map(|(id, s, state)| {
            serde_json::json!({
                "id": id,
                "addr": s.addr,
                "state": state,
                "capacity_bytes": s.usage.capacity_bytes,
                "used_bytes": s.usage.used_bytes,
                "free_bytes": s.usage.free_bytes,
                "blob_count": s.usage.blob_count,
                "corrupt_replicas": s.corrupt.len(),
                "load": s.load,
                "last_seen_ms_ago": s.last_seen.elapsed().as_millis() as u64,
            })
        })
        .collect();
    serde_json::json!({ "nodes": nodes, "replicas": gw.config.replicas, "repair": gw.repair.snapshot() })
}

/// Prometheus text format: node state and space, repair progress.
/// What the process's memory allocator reports, by kind, in bytes.
pub type AllocatorProbe = fn() -> Vec<(&'static str, u64)>;

static ALLOCATOR_PROBE: std::sync::OnceLock<AllocatorProbe> = std::sync::OnceLock::new();

/// Lets the metrics report the allocator's own figures (the binary
/// chooses the allocator; the gateway library does not know it).
pub fn set_allocator_probe(probe: AllocatorProbe) {
    let _ = ALLOCATOR_PROBE.set(probe);
}

fn metrics(gw: &Gateway) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE insitu_node_up gauge");
    for (id, s, state) in gw.nodes.snapshot() {
        let up = u8::from(state == crate::nodes::NodeState::Up);
        let _ = writeln!(out, "insitu_node_up{{node=\"{id}\"}} {up}");
        let _ = writeln!(
            out,
            "insitu_node_free_bytes{{node=\"{id}\"}} {}",
            s.usage.free_bytes
        );
        let _ = writeln!(
            out,
            "insitu_node_used_bytes{{node=\"{id}\"}} {}",
            s.usage.used_bytes
        );
        let _ = writeln!(
            out,
            "insitu_node_blobs{{node=\"{id}\"}} {}",
            s.usage.blob_count
        );
        let _ = writeln!(
            out,
            "insitu_node_corrupt_replicas{{node=\"{id}\"}} {}",
            s.corrupt.len()
        );
        let _ = writeln!(out, "insitu_node_load{{node=\"{id}\"}} {}", s.load);
    }
    let r = gw.repair.snapshot();
    for (name, v) in [
        ("insitu_repair_passes_total", r.passes),
        ("insitu_repair_blobs_copied_total", r.blobs_copied),
        ("insitu_repair_bytes_copied_total", r.bytes_copied),
        (
            "insitu_repair_corrupt_replicas_repaired_total",
            r.corrupt_replicas_repaired,
        ),
        ("insitu_repair_under_replicated_blobs", r.under_replicated),
        ("insitu_orphan_blobs_removed_total", r.orphans_removed),
        ("insitu_gc_blobs_removed_total", r.gc_blobs_removed),
        (
            "insitu_memo_entries_forgotten_total",
            r.memo_entries_forgotten,
        ),
    ] {
        let _ = writeln!(out, "{name} {v}");
    }
    let _ = writeln!(out, "# TYPE insitu_gateway_leader gauge");
    for role in crate::control::Role::ALL {
        let leads = u8::from(gw.control.leads(role));
        let _ = writeln!(
            out,
            "insitu_gateway_leader{{role=\"{}\"}} {leads}",
            role.name()
        );
    }
    let _ = writeln!(
        out,
        "insitu_gateway_jobs_driven {}",
        gw.jobs.local_load().jobs
    );
    let _ = writeln!(out, "insitu_gateway_peers {}", gw.control.peers().len());
    let _ = writeln!(out, "# TYPE insitu_catalog_memory_bytes gauge");
    for (kind, bytes) in gw.catalog.memory_usage() {
        let _ = writeln!(
            out,
            "insitu_catalog_memory_bytes{{kind=\"{kind}\"}} {bytes}"
        );
    }
    if let Some(probe) = ALLOCATOR_PROBE.get() {
        let _ = writeln!(out, "# TYPE insitu_allocator_bytes gauge");
        for (kind, bytes) in probe() {
            let _ = writeln!(out, "insitu_allocator_bytes{{kind=\"{kind}\"}} {bytes}");
        }
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

/// Whether a request carries the cluster secret (a node or a peer gateway).
pub(crate) fn from_cluster(gw: &Gateway, parts: &Parts) -> bool {
    let presented = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    sigv4::signatures_match(presented, &gw.config.cluster_secret)
}

/// A job call a peer gateway forwarded, for the tenant it authenticated.
async fn forwarded(
    gw: &Arc<Gateway>,
    parts: &Parts,
    rest: &str,
    body: Body,
) -> Result<Response, ApiError> {
    if !from_cluster(gw, parts) || parts.method != http::Method::POST {
        return Err(ApiError::Auth(S3Error::access_denied()));
    }
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = read_small(Box::pin(raw), MAX_API_BODY_BYTES)
        .await
        .map_err(ApiError::Auth)?;
    // The cluster secret is also the nodes'; only a peer gateway can sign.
    let tenant = crate::jobs_api::verify_forwarded(gw, &parts.headers, rest, &bytes)
        .ok_or_else(|| ApiError::Auth(S3Error::access_denied()))?;
    let path: Vec<&str> = rest.split('/').collect();
    Ok(crate::jobs_api::handle_forwarded(gw, &tenant, &path, &bytes).await)
}

/// A node's heartbeat: authenticated by the cluster secret, it registers
/// the node (or its new address) and reports its space and corruption.
async fn heartbeat(gw: &Gateway, parts: &Parts, body: Body) -> Result<Response, ApiError> {
    if !from_cluster(gw, parts) {
        return Err(ApiError::Auth(S3Error::access_denied()));
    }
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = read_small(Box::pin(raw), MAX_API_BODY_BYTES)
        .await
        .map_err(ApiError::Auth)?;
    let beat: insitu_node_api::Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidArgument(format!("bad heartbeat: {e}")))?;
    if gw.node_removed(&beat.node_id).await {
        return Err(ApiError::Conflict(format!(
            "node {} was removed from the cluster; give it a new id to rejoin",
            beat.node_id
        )));
    }
    // The id is tied to the key of the node that first sent it: another
    // holder of the cluster secret cannot point it elsewhere.
    let key_sha256 = beat
        .node_key
        .as_deref()
        .map(|k| hex::encode(sha2::Sha256::digest(k.as_bytes())));
    let tied = gw
        .catalog
        .get_node(&beat.node_id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .and_then(|n| n.key_sha256);
    if let Some(tied) = &tied {
        if !key_sha256
            .as_deref()
            .is_some_and(|k| sigv4::signatures_match(k, tied))
        {
            tracing::warn!(node = %beat.node_id, addr = %beat.addr, "heartbeat with another node's id refused");
            return Err(ApiError::Conflict(format!(
                "node id {} belongs to another node (its key differs); an operator can remove that node, then this one joins under a new id",
                beat.node_id
            )));
        }
    }
    let report = crate::nodes::membership::Report {
        addr: beat.addr.clone(),
        usage: beat.usage.clone(),
        corrupt: beat.corrupt.clone(),
        load: beat.load,
    };
    crate::nodes::membership::record(gw, &beat.node_id, &report).await;
    if gw.nodes.record_contact(
        &beat.node_id,
        &beat.addr,
        beat.usage,
        beat.corrupt,
        beat.load,
    ) || tied.is_none()
    {
        gw.register_node_with_key(&beat.node_id, &beat.addr, key_sha256)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Ok(Some(rec)) = gw.catalog.get_node(&beat.node_id).await {
            gw.nodes.set_draining(&rec.id, rec.draining);
        }
    }
    Ok(crate::status_response(StatusCode::NO_CONTENT))
}
