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
    if path == "/_insitu/v1/health" {
        return Ok(
            Json(serde_json::json!({ "status": "ok", "nodes": gw.nodes.node_ids() }))
                .into_response(),
        );
    }
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = read_small(Box::pin(raw), MAX_API_BODY_BYTES)
        .await
        .map_err(ApiError::Auth)?;
    let principal = {
        let raw_query = parts.uri.query().unwrap_or("");
        let auth = Authenticator {
            catalog: &gw.catalog,
            root: &gw.config.root,
        };
        let signed = SignedRequest {
            method: parts.method.as_str(),
            raw_path: &path,
            raw_query,
            headers: &parts.headers,
            now: chrono::Utc::now().timestamp(),
            body_sha256: Some(sigv4::sha256_hex(&bytes)),
        };
        let a = auth.authenticate(&signed).map_err(ApiError::Auth)?;
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
            gw.catalog.create_tenant(&req.name)?;
            let key = new_access_key(&req.name);
            gw.catalog.put_access_key(&key)?;
            tracing::info!(tenant = %req.name, "tenant created");
            Ok((
                StatusCode::CREATED,
                Json(Credentials {
                    tenant: key.tenant,
                    access_key_id: key.access_key_id,
                    secret_access_key: key.secret_access_key,
                }),
            )
                .into_response())
        }
        (Method::GET, ["tenants"]) => {
            let tenants: Vec<_> = gw
                .catalog
                .list_tenants()?
                .into_iter()
                .map(|t| serde_json::json!({ "tenant": t.name, "created_ms": t.created_ms }))
                .collect();
            Ok(Json(serde_json::json!({ "tenants": tenants })).into_response())
        }
        (Method::POST, ["tenants", tenant, "keys"]) => {
            if gw.catalog.get_tenant(tenant)?.is_none() {
                return Err(ApiError::NotFound(format!(
                    "tenant {tenant} does not exist"
                )));
            }
            let key = new_access_key(tenant);
            gw.catalog.put_access_key(&key)?;
            tracing::info!(tenant = %tenant, access_key_id = %key.access_key_id, "access key created");
            Ok((
                StatusCode::CREATED,
                Json(Credentials {
                    tenant: key.tenant,
                    access_key_id: key.access_key_id,
                    secret_access_key: key.secret_access_key,
                }),
            )
                .into_response())
        }
        (Method::GET, ["nodes"]) => {
            let mut out = Vec::new();
            for n in gw.catalog.list_nodes()? {
                let health = gw.nodes.health(&n.id).await;
                out.push(serde_json::json!({
                    "id": n.id,
                    "addr": n.addr,
                    "state": if health.is_ok() { "up" } else { "down" },
                    "health": health.ok(),
                }));
            }
            Ok(Json(serde_json::json!({ "nodes": out })).into_response())
        }
        (m, p) => Err(ApiError::NotFound(format!(
            "no admin API at {m} /{}",
            p.join("/")
        ))),
    }
}
