//! A storage node: a blob store on local disk behind an internal HTTP API.
//! It registers with its gateway by heartbeat, reporting capacity, use and
//! corrupt replicas, and scrubs its blobs in the background. The task runner
//! joins it when the jobs issue lands.

pub mod blob_store;
/// The bounded HTTP/1 server, shared with the gateway.
pub use insitu_node_api::http_server;
pub use insitu_node_api::{Heartbeat, HEARTBEAT_PATH};
pub mod image_archive;
pub mod node_api;
pub mod task_api;
pub mod task_endpoint;
pub mod task_logs;
pub mod task_runner;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use blob_store::{BlobError, BlobStore};
use node_api::NodeState;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// URL the gateway should use to reach this node; defaults to
    /// `http://<bound address>`.
    pub advertise: Option<String>,
    /// Gateways to register with by heartbeat (the first that answers),
    /// if any.
    pub gateways: Vec<String>,
    pub cluster_secret: String,
    /// Cap on stored bytes (below the filesystem size), for shared disks.
    pub capacity_bytes: Option<u64>,
    pub heartbeat_interval: Duration,
    /// How often every blob is re-read and checked; `None` disables.
    pub scrub_interval: Option<Duration>,
    /// What the node's HTTP server lets clients hold.
    pub server: http_server::ServerLimits,
    /// The task tools' directory (`insitu-task` and its links): with it,
    /// every task container gets the tools and its S3 endpoint.
    pub task_tools: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("blob store: {0}")]
    Store(#[from] BlobError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Removes the endpoint socket directories (`sock-*`) a crashed run left.
fn clear_stale_sockets(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("sock-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The node's key (see [`Heartbeat::node_key`]), readable by its owner
/// only; made on first start.
fn node_key(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(key) = std::fs::read_to_string(path) {
        let key = key.trim().to_string();
        if key.len() >= 32 {
            return Ok(key);
        }
        return Err(std::io::Error::other(format!(
            "{} does not hold a node key; remove it only if this node is to rejoin under a new id",
            path.display()
        )));
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Written whole or not at all: a crash cannot leave an empty key.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(key)
}

/// A node bound to its port, ready to serve.
pub struct Node {
    listener: TcpListener,
    state: Arc<NodeState>,
    config: NodeConfig,
}

impl Node {
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        let store = Arc::new(BlobStore::open(&config.data_dir, config.capacity_bytes).await?);
        let node_key = node_key(&config.data_dir.join("node-key")).map_err(BlobError::Io)?;
        let tasks = match task_runner::TaskRunner::connect(
            &config.node_id,
            &config.data_dir.join("tasks"),
        )
        .await
        {
            Ok(runner) => {
                // A bind mount's source must be absolute.
                let tools = config
                    .task_tools
                    .as_ref()
                    .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()));
                let hub = match &tools {
                    Some(dir) if dir.is_absolute() && dir.join("insitu-task").is_file() => {
                        // Endpoint sockets of an earlier life serve nobody.
                        clear_stale_sockets(runner.root());
                        Some(Arc::new(task_endpoint::EndpointHub::new(
                            store.clone(),
                            config.gateways.clone(),
                            config.cluster_secret.clone(),
                            dir.clone(),
                        )))
                    }
                    Some(dir) => {
                        tracing::warn!(node = %config.node_id, dir = %dir.display(), "no insitu-task in the task tools directory: tasks run without tools or endpoint");
                        None
                    }
                    None => {
                        tracing::warn!(node = %config.node_id, "no task tools (scripts/build-task-tools, --task-tools): tasks run without tools or endpoint");
                        None
                    }
                };
                let service = Arc::new(task_api::TaskService::new(runner, hub));
                // Containers left by an earlier life of this node belong to
                // nobody now.
                match service.reap_unknown().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(node = %config.node_id, reaped = n, "removed leftover task containers")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(node = %config.node_id, error = %e, "could not reap leftover task containers")
                    }
                }
                match service.drop_loaded_images().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(node = %config.node_id, removed = n, "removed images loaded by an earlier run")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(node = %config.node_id, error = %e, "could not list images loaded from objects")
                    }
                }
                Some(service)
            }
            Err(e) => {
                tracing::warn!(node = %config.node_id, error = %e, "no container engine: this node stores blobs but runs no tasks");
                None
            }
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let state = Arc::new(NodeState {
            node_id: config.node_id.clone(),
            secret: config.cluster_secret.clone(),
            node_key,
            store,
            active: Default::default(),
            tasks,
        });
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The base URL the gateway should use for this node.
    pub fn advertised_url(&self) -> String {
        match (&self.config.advertise, self.listener.local_addr()) {
            (Some(a), _) => a.trim_end_matches('/').to_string(),
            (None, Ok(addr)) => format!("http://{addr}"),
            (None, Err(_)) => format!("http://{}", self.config.listen),
        }
    }

    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let span = tracing::info_span!("node", node = %self.state.node_id);
        let url = self.advertised_url();
        span.in_scope(|| tracing::info!(url = %url, "storage node serving"));
        let gateways = self.config.gateways.clone();
        let heartbeat = (!gateways.is_empty()).then(|| {
            tokio::spawn(heartbeat_loop(
                self.state.clone(),
                gateways,
                url.clone(),
                self.config.heartbeat_interval,
            ))
        });
        let scrubber = self
            .config
            .scrub_interval
            .map(|every| tokio::spawn(scrub_loop(self.state.clone(), every)));
        let result = http_server::serve(
            self.listener,
            node_api::router(self.state),
            self.config.server,
            shutdown,
        )
        .await
        .map_err(NodeError::Serve);
        for task in [heartbeat, scrubber].into_iter().flatten() {
            task.abort();
        }
        result
    }
}

/// Reports to a gateway until the node stops: to the same one while it
/// answers, else to the next in the list. Failures are logged once per
/// outage, not once per beat.
async fn heartbeat_loop(
    state: Arc<NodeState>,
    gateways: Vec<String>,
    addr: String,
    every: Duration,
) {
    let http = reqwest::Client::builder()
        // Below the gateway's idle close (`http_server`).
        .pool_idle_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let urls: Vec<String> = gateways
        .iter()
        .map(|g| format!("{}{HEARTBEAT_PATH}", g.trim_end_matches('/')))
        .collect();
    let mut current = 0;
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let beat = Heartbeat {
            node_id: state.node_id.clone(),
            addr: addr.clone(),
            usage: state.store.usage(),
            corrupt: state.store.corrupt_blobs(),
            load: state.active.load(std::sync::atomic::Ordering::Relaxed),
            node_key: Some(state.node_key.clone()),
        };
        let (gateway, url) = (&gateways[current], &urls[current]);
        let sent = http
            .post(url)
            .bearer_auth(&state.secret)
            .json(&beat)
            .send()
            .await;
        match sent.map(|r| r.status()) {
            Ok(s) if s.is_success() => {
                if failing {
                    tracing::info!(node = %state.node_id, "gateway reachable again");
                }
                failing = false;
            }
            other => {
                if !failing {
                    tracing::warn!(node = %state.node_id, gateway = %gateway, result = ?other.map_err(|e| e.to_string()), "heartbeat failed");
                }
                failing = true;
                // The next gateway in the list gets the next beat.
                current = (current + 1) % urls.len();
            }
        }
    }
}

/// Re-reads every blob now and then so that silent corruption is found
/// (and reported for repair) before a reader needs the replica.
async fn scrub_loop(state: Arc<NodeState>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let mut after = String::new();
        loop {
            let page = match state.store.list(&after, 256).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "scrub listing failed");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for b in page {
                if let Err(e) = state.store.verify(&b.id).await {
                    tracing::warn!(blob = %b.id, error = %e, "scrub found a bad replica");
                }
                // Yield the disk to foreground traffic between blobs.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
