//! The insitu gateway: S3 API, admin API, authentication, placement, and
//! the background collector of unreferenced blobs.

pub mod admin_api;
pub mod auth;
pub mod body;
pub mod checksum;
pub mod cluster;
pub mod control;
pub mod error;
pub mod jobs_api;
pub mod limits;
pub mod nodes;
pub mod parallel_hash;
pub mod s3;
pub mod task_reads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::TryStreamExt;
use insitu_catalog::{Catalog, CatalogError, NodeRecord};

use thiserror::Error;
use tokio::net::TcpListener;

use auth::{Authenticator, RootCredentials, SignedRequest};
use error::{S3Error, S3ErrorCode};
use nodes::NodeSet;

#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The catalog: `rocksdb:PATH` or `postgresql://...`.
    pub catalog: String,
    /// With a domain, `bucket.domain` hosts address buckets (virtual-hosted
    /// style); path style always works.
    pub domain: Option<String>,
    pub region: String,
    pub replicas: usize,
    pub root: RootCredentials,
    pub cluster_secret: String,
    /// How long an unreferenced blob waits before deletion, so a GET that
    /// looked up the old record just before an overwrite can still open it.
    pub gc_grace: Duration,
    /// When a node counts as suspect, and as down (the repair grace).
    pub liveness: nodes::Liveness,
    /// Free space every node keeps; a node with less gets no new blobs.
    pub reserve_bytes: u64,
    /// How often the gateway polls every node's health.
    pub health_interval: Duration,
    /// Re-replication copies at most this many bytes per second, so repair
    /// never starves foreground traffic.
    pub repair_bytes_per_sec: u64,
    /// How often each node's blob files are compared with the catalog to
    /// remove orphans.
    pub orphan_sweep_interval: Duration,
    /// Tasks the job supervisor runs at once on each node.
    pub task_slots: u32,
    /// How long a job waits for a slot on a node holding a map task's
    /// input before running it on another (delay scheduling).
    pub locality_wait: Duration,
    /// Most tasks one tenant runs at once across the cluster (0: no cap
    /// beyond its fair share when others wait).
    pub tenant_max_tasks: u32,
    /// Most jobs of one tenant that have not ended (0: no cap).
    pub tenant_max_jobs: u32,
    /// What one task may ask for where its tenant's policy sets no maximum.
    pub task_maxima: insitu_jobs::TaskMaxima,
    /// What the gateway's HTTP server lets clients hold.
    pub server: insitu_node_api::http_server::ServerLimits,
    /// How long a job or leader lease lasts unrenewed: a gateway that
    /// dies loses its jobs and loops to the others after this long.
    pub lease_timeout: Duration,
    /// The URL peers reach this gateway at [default: http:// and the
    /// address it listens on].
    pub advertise: Option<String>,
    /// With no `advertise` and a wildcard listen address, advertise the
    /// loopback address (`insitu dev`: every peer is on this machine).
    pub advertise_loopback: bool,
}

#[derive(Debug, Error)]
pub enum GatewayError {
    // The catalog's message is the whole story: not also a "source".
    #[error("catalog: {0}")]
    Catalog(CatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("the gateway listens on {0}, which its peers cannot dial: give --advertise http://HOST:PORT")]
    Advertise(SocketAddr),
}

impl From<CatalogError> for GatewayError {
    fn from(e: CatalogError) -> Self {
        Self::Catalog(e)
    }
}

pub struct Gateway {
    pub catalog: Arc<dyn Catalog>,
    pub nodes: Arc<NodeSet>,
    pub repair: cluster::RepairStats,
    pub inflight: Arc<cluster::InflightBlobs>,
    pub jobs: Arc<insitu_jobs::Supervisor>,
    pub control: Arc<control::Control>,
    pub config: GatewayConfig,
    /// Bodies read whole before their request is authenticated (a
    /// signature over a payload hash that was not sent): few at a time.
    pub unverified_bodies: tokio::sync::Semaphore,
}

impl Gateway {
    /// Opens the gateway over the catalog `config.catalog` names.
    pub async fn open(config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        let pool = 16;
        let catalog = insitu_catalog::open(&config.catalog, pool).await?;
        tracing::info!(catalog = %catalog.describe(), "catalog open");
        Self::with_catalog(config, catalog).await
    }

    /// Opens the gateway over a catalog that is already open.
    pub async fn with_catalog(
        mut config: GatewayConfig,
        catalog: Arc<dyn Catalog>,
    ) -> Result<Arc<Self>, GatewayError> {
        catalog.ensure_tenant(auth::ROOT_TENANT).await?;
        // Another gateway learns of a blob this one holds only once the
        // hold is published (`PUBLISH_AFTER` plus a publish period and a
        // catalog round trip); its GC and sweep wait well past that.
        let least = SHARED_GC_GRACE_FLOOR;
        if catalog.is_shared() && config.gc_grace < least {
            tracing::warn!(
                gc_grace_ms = config.gc_grace.as_millis() as u64,
                "the GC grace period is raised to {} ms on a shared catalog",
                least.as_millis()
            );
            config.gc_grace = least;
        }
        let nodes = Arc::new(NodeSet::new(
            config.cluster_secret.clone(),
            config.liveness,
            config.reserve_bytes,
        ));
        for n in catalog
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| !n.removed)
        {
            nodes.set_node(&n.id, &n.addr);
            nodes.set_draining(&n.id, n.draining);
        }
        let inflight: Arc<cluster::InflightBlobs> = Default::default();
        let control = Arc::new(control::Control::new(config.lease_timeout));
        let jobs = insitu_jobs::Supervisor::new(insitu_jobs::SupervisorParts {
            catalog: catalog.clone(),
            nodes: Arc::new(nodes::TaskClient::new(nodes.clone())),
            holds: Arc::new(cluster::JobHolds(inflight.clone())),
            peers: control.clone(),
            config: insitu_jobs::SupervisorConfig {
                replicas: config.replicas,
                task_slots: config.task_slots,
                locality_wait: config.locality_wait,
                tenant_max_tasks: config.tenant_max_tasks,
                tenant_max_jobs: config.tenant_max_jobs,
                task_maxima: config.task_maxima,
            },
        });
        Ok(Arc::new(Self {
            catalog,
            nodes,
            repair: Default::default(),
            inflight,
            jobs,
            control,
            config,
            unverified_bodies: tokio::sync::Semaphore::new(limits::MAX_UNVERIFIED_BODIES),
        }))
    }

    /// Records where a storage node listens now; its id is permanent.
    /// Whether a node was removed by an operator (and may not rejoin).
    pub async fn node_removed(&self, id: &str) -> bool {
        self.catalog
            .get_node(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|n| n.removed)
    }

    pub async fn register_node(&self, id: &str, addr: &str) -> Result<(), GatewayError> {
        self.record_node(id, addr, None).await
    }

    /// Registers a node that proved itself by its key (a heartbeat): the
    /// id is tied to that key from then on, if it was not already.
    pub async fn register_node_with_key(
        &self,
        id: &str,
        addr: &str,
        key_sha256: Option<String>,
    ) -> Result<(), GatewayError> {
        self.record_node(id, addr, key_sha256).await
    }

    async fn record_node(
        &self,
        id: &str,
        addr: &str,
        key_sha256: Option<String>,
    ) -> Result<(), GatewayError> {
        let old = self.catalog.get_node(id).await?;
        let draining = old.as_ref().is_some_and(|n| n.draining);
        let key_sha256 = old.and_then(|n| n.key_sha256).or(key_sha256);
        self.catalog
            .put_node(&NodeRecord {
                id: id.to_string(),
                addr: addr.to_string(),
                registered_ms: insitu_catalog::now_ms(),
                draining,
                removed: false,
                key_sha256,
            })
            .await?;
        self.nodes.set_node(id, addr);
        tracing::info!(node = %id, addr = %addr, "storage node registered");
        Ok(())
    }

    pub async fn bind(&self) -> Result<TcpListener, GatewayError> {
        TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| GatewayError::Listen {
                addr: self.config.listen,
                source,
            })
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let addr = match (&self.config.advertise, listener.local_addr()) {
            (Some(a), _) => a.trim_end_matches('/').to_string(),
            (None, Ok(a)) if a.ip().is_unspecified() && self.config.advertise_loopback => {
                format!("http://127.0.0.1:{}", a.port())
            }
            (None, Ok(a)) if a.ip().is_unspecified() && self.catalog.is_shared() => {
                return Err(GatewayError::Advertise(a));
            }
            (None, Ok(a)) => format!("http://{a}"),
            (None, Err(e)) => return Err(GatewayError::Serve(e)),
        };
        self.control.set_addr(addr);
        // Starts with beating and taking the jobs this gateway should run
        // (on the embedded catalog: every job that had not ended).
        let background = cluster::spawn_background(self.clone());
        let app = Router::new().fallback(handle).with_state(self.clone());
        let result =
            insitu_node_api::http_server::serve(listener, app, self.config.server, shutdown).await;
        for task in background {
            task.abort();
        }
        // Hands its jobs and loops to the others at once.
        if let Err(e) = self.catalog.gateway_gone(&self.control.id).await {
            tracing::debug!(error = %e, "cannot hand back leases; they expire");
        }
        result.map_err(GatewayError::Serve)
    }

    /// Splits a request into (bucket, key) by virtual host or path.
    /// The bucket a virtual-hosted request's `Host` names, under the
    /// configured domain.
    fn host_bucket<'h>(&self, host: Option<&'h str>) -> Option<&'h str> {
        let (domain, host) = (self.config.domain.as_ref()?, host?);
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        host.strip_suffix(domain.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
    }

    fn bucket_and_key(
        &self,
        host: Option<&str>,
        raw_path: &str,
    ) -> (Option<String>, Option<String>) {
        let path = auth::sigv4::uri_decode(raw_path);
        let path = path.strip_prefix('/').unwrap_or(&path);
        if let Some(bucket) = self.host_bucket(host) {
            let key = (!path.is_empty()).then(|| path.to_string());
            return (Some(bucket.to_string()), key);
        }
        match path.split_once('/') {
            None if path.is_empty() => (None, None),
            None => (Some(path.to_string()), None),
            Some((b, "")) => (Some(b.to_string()), None),
            Some((b, k)) => (Some(b.to_string()), Some(k.to_string())),
        }
    }
}

async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let cors = cors_context(&gw, &req);
    let mut resp = route_request(gw.clone(), req).await;
    if let Some((bucket, method, headers)) = cors {
        s3::cors::decorate(&gw, &bucket, &method, &headers, &mut resp).await;
    }
    let failed = resp.status().is_client_error() || resp.status().is_server_error();
    let headers = resp.headers_mut();
    // A request refused before its body was read leaves the connection in
    // an unknown state (the client may or may not send the body after
    // `Expect: 100-continue`); close it rather than misparse what follows.
    if has_body && failed {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    headers.insert(
        http::header::SERVER,
        http::HeaderValue::from_static("insitu"),
    );
    if !headers.contains_key("x-amz-request-id") {
        if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()) {
            headers.insert("x-amz-request-id", v);
        }
    }
    resp
}

/// A request from a browser page names its origin; the bucket's CORS rules
/// then say which headers let the page see the answer. A preflight gets its
/// headers where it is answered.
fn cors_context(gw: &Gateway, req: &Request) -> Option<(String, http::Method, http::HeaderMap)> {
    if req.method() == http::Method::OPTIONS
        || !req.headers().contains_key(http::header::ORIGIN)
        || req.uri().path().starts_with("/_insitu/")
    {
        return None;
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let (bucket, _) = gw.bucket_and_key(host.as_deref(), req.uri().path());
    Some((bucket?, req.method().clone(), req.headers().clone()))
}

async fn route_request(gw: Arc<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    if raw_path.starts_with("/_insitu/") {
        return admin_api::handle(gw, parts, body).await;
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let (bucket, key) = gw.bucket_and_key(host.as_deref(), &raw_path);
    // A browser's preflight carries no credentials: it is answered from
    // the bucket's CORS rules alone.
    if parts.method == http::Method::OPTIONS {
        if let Some(bucket) = &bucket {
            return s3::cors::preflight(&gw, bucket, &parts.headers).await;
        }
    }
    let auth = {
        let authenticator = Authenticator {
            catalog: gw.catalog.as_ref(),
            root: &gw.config.root,
            region: &gw.config.region,
        };
        let signed = SignedRequest {
            method: parts.method.as_str(),
            raw_path: &raw_path,
            raw_query: &raw_query,
            headers: &parts.headers,
            now: chrono::Utc::now().timestamp(),
            // A client that signs without sending x-amz-content-sha256 (curl)
            // signed the hash of its body; with no body, that is known.
            body_sha256: (!has_body).then(|| auth::sigv4::EMPTY_SHA256.to_string()),
            host_bucket: gw.host_bucket(host.as_deref()),
        };
        match authenticator.authenticate(&signed).await {
            Ok(a) => a,
            Err(e) => return e.into_response(),
        }
    };
    // A signature over a body hash that was not sent (curl signs its
    // body's hash without sending it) is checked here, on the body read
    // whole, before the request does anything: until then nobody knows
    // who sent it. Such bodies are small and few at a time.
    let (auth, body) = match auth.payload {
        auth::PayloadCheck::Deferred(ref d) => {
            let (permit, bytes) = match read_unverified_body(&gw, body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let hash = auth::sigv4::sha256_hex(&bytes);
            let verified = d.verify(&hash);
            drop(permit);
            if !verified {
                return auth::DeferredSignature::mismatch().into_response();
            }
            let verified = auth::Authenticated {
                payload: auth::PayloadCheck::Sha256(hash),
                ..auth
            };
            (verified, axum::body::Body::from(bytes))
        }
        _ => (auth, body),
    };
    if let Some(k) = &key {
        if k.len() > limits::MAX_KEY_BYTES {
            return S3Error::new(
                S3ErrorCode::KeyTooLongError,
                "Your key is too long (the limit is 1024 bytes).",
            )
            .into_response();
        }
    }
    let req = s3::S3Request {
        method: parts.method,
        bucket,
        key,
        query: auth::query_map(&raw_query),
        headers: parts.headers,
        auth,
        body: std::sync::Mutex::new(Some(body)),
        trailers: Default::default(),
    };
    s3::dispatch(gw, req).await
}

/// Reads a body whose request is not yet authenticated, within
/// `MAX_UNVERIFIED_BODY_BYTES`, while one of the few permits for that is
/// free (503 `SlowDown` otherwise).
async fn read_unverified_body(
    gw: &Gateway,
    body: axum::body::Body,
) -> Result<(tokio::sync::SemaphorePermit<'_>, Vec<u8>), S3Error> {
    let permit = gw.unverified_bodies.try_acquire().map_err(|_| {
        S3Error::new(
            S3ErrorCode::SlowDown,
            "Too many requests signed without x-amz-content-sha256 at once; send that header, or retry.",
        )
    })?;
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = body::read_small(Box::pin(raw), limits::MAX_UNVERIFIED_BODY_BYTES)
        .await
        .map_err(|e| {
            if e.code == S3ErrorCode::MalformedXml {
                S3Error::new(
                    S3ErrorCode::EntityTooLarge,
                    "A body signed without x-amz-content-sha256 may be at most 16 MiB; send that header (a SHA-256 or UNSIGNED-PAYLOAD) for larger ones.",
                )
            } else {
                e
            }
        })?;
    Ok((permit, bytes))
}

/// The least GC grace on a shared catalog: about six times the time a
/// hold takes to be published when all is well.
const SHARED_GC_GRACE_FLOOR: Duration = Duration::from_secs(5);

/// Builds a bodiless response with a status; used by the admin API too.
pub fn status_response(status: http::StatusCode) -> Response {
    axum::response::IntoResponse::into_response(status)
}
