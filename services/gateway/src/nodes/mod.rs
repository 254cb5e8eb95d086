//! The gateway's view of the storage nodes, one concern per file:
//! membership and liveness (`membership.rs`), placement of new blobs
//! (`placement.rs`), blob calls (`blob_client.rs`) and task calls
//! (`task_client.rs`).

mod blob_client;
pub mod membership;
mod placement;
mod task_client;

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use insitu_node_api::Usage;
use serde::Deserialize;
use thiserror::Error;

pub use task_client::TaskClient;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("no storage node is known as {0}")]
    UnknownNode(String),
    #[error("only {up} storage nodes are available, {needed} needed")]
    NotEnoughNodes { up: usize, needed: usize },
    #[error("node {node}: {message}")]
    Request { node: String, message: String },
    #[error("node {node} answered {status}: {body}")]
    Status {
        node: String,
        status: u16,
        body: String,
    },
    #[error("blob {0} is on no reachable replica")]
    NoReplica(String),
    #[error("only {with_room} up storage nodes have room for {size} bytes, {needed} needed")]
    NoRoom {
        size: u64,
        with_room: usize,
        needed: usize,
    },
    #[error("the body stream failed")]
    Body,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoredBlob {
    pub id: String,
    pub size: u64,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// How a node's liveness is judged from its last successful contact.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// No contact for this long: the node gets no new blobs.
    pub suspect_after: Duration,
    /// No contact for this long: the node is down and its blobs are
    /// re-replicated elsewhere.
    pub down_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            suspect_after: Duration::from_secs(5),
            down_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Suspect,
    Down,
    Draining,
}

#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub addr: String,
    pub last_seen: Instant,
    /// Set when a request to the node failed; cleared by the next contact.
    pub failed_at: Option<Instant>,
    pub usage: Usage,
    pub corrupt: Vec<String>,
    /// Requests the node was serving at its last report.
    pub load: u64,
    pub draining: bool,
}

pub struct NodeSet {
    http: reqwest::Client,
    /// For calls that legitimately take long before answering (assembling
    /// a multi-gigabyte multipart object).
    slow_http: reqwest::Client,
    /// For task calls, which answer when the task ends; their deadline is
    /// set per call from the task's timeout.
    task_http: reqwest::Client,
    secret: String,
    liveness: Liveness,
    /// Space kept free on every node; a node with less gets no new blobs.
    reserve_bytes: u64,
    nodes: RwLock<BTreeMap<String, NodeStatus>>,
}

/// How long an idle connection to a node is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(15);

impl NodeSet {
    pub fn new(secret: String, liveness: Liveness, reserve_bytes: u64) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            // Below the nodes' idle close (`http_server`), so a pooled
            // connection is never reused just as the node closes it.
            .pool_idle_timeout(POOL_IDLE)
            // No single read may wait longer than this, so a stopped node
            // cannot hang a request or a background loop.
            .read_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let slow_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Below the nodes' idle close (`http_server`), so a pooled
            // connection is never reused just as the node closes it.
            .pool_idle_timeout(POOL_IDLE)
            .timeout(Duration::from_secs(3600))
            .build()
            .unwrap_or_default();
        let task_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Below the nodes' idle close (`http_server`), so a pooled
            // connection is never reused just as the node closes it.
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            http,
            slow_http,
            task_http,
            secret,
            liveness,
            reserve_bytes,
            nodes: RwLock::new(BTreeMap::new()),
        }
    }

    fn url(&self, node: &str, path: &str) -> Result<String, NodeError> {
        let nodes = self
            .nodes
            .read()
            .map_err(|_| NodeError::UnknownNode(node.to_string()))?;
        let s = nodes
            .get(node)
            .ok_or_else(|| NodeError::UnknownNode(node.to_string()))?;
        Ok(format!("{}{path}", s.addr))
    }

    async fn check(
        node: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, NodeError> {
        let resp = resp.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(NodeError::Status {
            node: node.to_string(),
            status,
            body,
        })
    }
}
