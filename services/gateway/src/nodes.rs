//! The gateway's view of the storage nodes: where they are, which of them
//! should hold a new blob (placement), and streaming blobs to and from them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use insitu_catalog::BlobRef;
use insitu_node_api::Usage;
use md5::{Digest, Md5};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

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

/// A replica that sends nothing for this long is abandoned and the read
/// resumes on another one.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Rendezvous (highest random weight) hash of a node for a blob, as a
/// number in (0, 1): stable, and adding or removing a node only moves the
/// blobs that must move.
fn unit_hash(node: &str, blob: &str) -> f64 {
    let mut h = Md5::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(blob.as_bytes());
    let d: [u8; 16] = h.finalize().into();
    let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x as f64 + 1.0) / (u64::MAX as f64 + 2.0)
}

/// Weighted rendezvous score: nodes with more free space win
/// proportionally more blobs.
fn score(node: &str, blob: &str, weight: f64) -> f64 {
    -weight / unit_hash(node, blob).ln()
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

    /// Adds a node, or updates its address; counts as a contact.
    pub fn set_node(&self, id: &str, base_url: &str) {
        if let Ok(mut n) = self.nodes.write() {
            let addr = base_url.trim_end_matches('/').to_string();
            n.entry(id.to_string())
                .and_modify(|s| {
                    s.addr.clone_from(&addr);
                    s.last_seen = Instant::now();
                })
                .or_insert(NodeStatus {
                    addr,
                    last_seen: Instant::now(),
                    failed_at: None,
                    usage: Usage::default(),
                    corrupt: vec![],
                    load: 0,
                    draining: false,
                });
        }
    }

    /// Adds a node another gateway registered: known, but not counted as
    /// up until a contact (a health answer or a recorded heartbeat) says
    /// so and reports its space.
    pub fn learn(&self, id: &str, base_url: &str) {
        if let Ok(mut n) = self.nodes.write() {
            let now = Instant::now();
            let addr = base_url.trim_end_matches('/').to_string();
            n.entry(id.to_string()).or_insert(NodeStatus {
                addr,
                last_seen: now.checked_sub(self.liveness.suspect_after).unwrap_or(now),
                failed_at: None,
                usage: Usage::default(),
                corrupt: vec![],
                load: 0,
                draining: false,
            });
        }
    }

    pub fn set_draining(&self, id: &str, draining: bool) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.draining = draining;
            }
        }
    }

    pub fn remove_node(&self, id: &str) {
        if let Ok(mut n) = self.nodes.write() {
            n.remove(id);
        }
    }

    /// Records a heartbeat or health answer; returns whether the address
    /// changed (or the node is new).
    pub fn record_contact(
        &self,
        id: &str,
        addr: &str,
        usage: Usage,
        corrupt: Vec<String>,
        load: u64,
    ) -> bool {
        let Ok(mut n) = self.nodes.write() else {
            return false;
        };
        let addr = addr.trim_end_matches('/').to_string();
        let changed = n.get(id).is_none_or(|s| s.addr != addr);
        let s = n.entry(id.to_string()).or_insert(NodeStatus {
            addr: addr.clone(),
            last_seen: Instant::now(),
            failed_at: None,
            usage: Usage::default(),
            corrupt: vec![],
            load: 0,
            draining: false,
        });
        s.addr = addr;
        s.last_seen = Instant::now();
        s.failed_at = None;
        s.usage = usage;
        s.corrupt = corrupt;
        s.load = load;
        changed
    }

    /// Records a heartbeat another gateway received `age` ago, if it is
    /// newer than this gateway's own last contact with the node.
    pub fn record_report(&self, id: &str, age: Duration, report: crate::membership::Report) {
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id).filter(|s| s.last_seen < at) {
                if s.addr != report.addr.trim_end_matches('/') {
                    // Moved: the heartbeat that moved it re-registers it.
                    return;
                }
                s.last_seen = at;
                s.usage = report.usage;
                s.corrupt = report.corrupt;
                s.load = report.load;
            }
        }
    }

    /// Records a health answer: a contact, without touching the address
    /// (a heartbeat may have moved it meanwhile).
    pub fn record_health(&self, id: &str, usage: Usage, corrupt: Vec<String>, load: u64) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.last_seen = Instant::now();
                s.failed_at = None;
                s.usage = usage;
                s.corrupt = corrupt;
                s.load = load;
            }
        }
    }

    /// A request to the node failed: stop placing blobs there until it
    /// answers again.
    pub fn mark_failed(&self, id: &str) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.failed_at.get_or_insert_with(Instant::now);
            }
        }
    }

    pub fn state_of(&self, s: &NodeStatus) -> NodeState {
        let silent = s.last_seen.elapsed();
        if silent >= self.liveness.down_after {
            NodeState::Down
        } else if s.draining {
            NodeState::Draining
        } else if silent >= self.liveness.suspect_after || s.failed_at.is_some() {
            NodeState::Suspect
        } else {
            NodeState::Up
        }
    }

    pub fn snapshot(&self) -> Vec<(String, NodeStatus, NodeState)> {
        let Ok(n) = self.nodes.read() else {
            return vec![];
        };
        n.iter()
            .map(|(id, s)| (id.clone(), s.clone(), self.state_of(s)))
            .collect()
    }

    pub fn state(&self, id: &str) -> Option<NodeState> {
        self.nodes.read().ok()?.get(id).map(|s| self.state_of(s))
    }

    /// The node's last reported load (requests in progress).
    pub fn load(&self, id: &str) -> u64 {
        self.nodes
            .read()
            .ok()
            .and_then(|n| n.get(id).map(|s| s.load))
            .unwrap_or(u64::MAX)
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.nodes
            .read()
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default()
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

    /// Chooses `replicas` distinct up nodes with room for `size` bytes.
    pub fn place(
        &self,
        blob_id: &str,
        replicas: usize,
        size: u64,
    ) -> Result<Vec<String>, NodeError> {
        self.place_excluding(blob_id, replicas, size, &[])
    }

    pub fn place_excluding(
        &self,
        blob_id: &str,
        replicas: usize,
        size: u64,
        exclude: &[String],
    ) -> Result<Vec<String>, NodeError> {
        let snapshot = self.snapshot();
        let up = snapshot
            .iter()
            .filter(|(_, _, st)| *st == NodeState::Up)
            .count();
        let mut candidates: Vec<(f64, String)> = snapshot
            .into_iter()
            .filter(|(id, s, st)| {
                // A node that has not reported its space yet gets nothing:
                // "unmeasured" is no promise of room.
                let measured = s.usage.capacity_bytes > 0;
                let room = s.usage.free_bytes > self.reserve_bytes
                    && s.usage.free_bytes - self.reserve_bytes >= size;
                *st == NodeState::Up && !exclude.contains(id) && measured && room
            })
            .map(|(id, s, _)| {
                let gib = (s.usage.free_bytes as f64 / (1u64 << 30) as f64).max(1.0 / 1024.0);
                (score(&id, blob_id, gib), id)
            })
            .collect();
        if candidates.len() < replicas || replicas == 0 {
            return Err(if up >= replicas {
                NodeError::NoRoom {
                    size,
                    with_room: candidates.len(),
                    needed: replicas,
                }
            } else {
                NodeError::NotEnoughNodes {
                    up,
                    needed: replicas.max(1),
                }
            });
        }
        candidates.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        Ok(candidates
            .into_iter()
            .take(replicas)
            .map(|(_, id)| id)
            .collect())
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

    async fn put_one(
        &self,
        node: &str,
        id: &str,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<StoredBlob, NodeError> {
        let url = self.url(node, &format!("/v1/blobs/{id}"))?;
        let mut req = self
            .http
            .put(url)
            .bearer_auth(&self.secret)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(len) = expected_len {
            req = req.header(insitu_storage_node_header(), len);
        }
        let sent = req.send().await;
        if sent.as_ref().is_err_and(reqwest::Error::is_connect) {
            // Unreachable: stop placing blobs there until it answers again.
            // Other failures may be the client's (a body cut short).
            self.mark_failed(node);
        }
        let resp = Self::check(node, sent).await?;
        resp.json::<StoredBlob>()
            .await
            .map_err(|e| NodeError::Request {
                node: node.to_string(),
                message: e.to_string(),
            })
    }

    /// Streams `body` to every node in `nodes` at once and returns when all
    /// replicas are durable. Each replica gets the same chunks through a
    /// small bounded channel, so memory stays flat and the slowest node sets
    /// the pace. If any replica fails, the whole write fails and the
    /// replicas already written are removed.
    pub async fn put_replicated(
        &self,
        nodes: &[String],
        id: &str,
        mut body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<StoredBlob, NodeError> {
        if nodes.len() == 1 {
            return self.put_one(&nodes[0], id, body, expected_len).await;
        }
        let mut senders = Vec::new();
        let mut puts = Vec::new();
        for node in nodes {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            senders.push(tx);
            puts.push(self.put_one(node, id, ReceiverStream::new(rx).boxed(), expected_len));
        }
        let pump = async move {
            while let Some(item) = body.next().await {
                let failed = item.is_err();
                let item = item.map_err(|e| std::io::Error::other(e.to_string()));
                for tx in &senders {
                    let copy = match &item {
                        Ok(b) => Ok(b.clone()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    // A closed receiver means that replica already failed;
                    // its error is reported by its own request.
                    let _ = tx.send(copy).await;
                }
                if failed {
                    return;
                }
            }
        };
        let (results, ()) = futures::join!(futures::future::join_all(puts), pump);
        let mut first = None;
        let mut err = None;
        for r in results {
            match r {
                Ok(b) => first = first.or(Some(b)),
                Err(e) => err = err.or(Some(e)),
            }
        }
        match (err, first) {
            (None, Some(b)) => Ok(b),
            (Some(e), _) => {
                self.delete_everywhere(id, nodes).await;
                Err(e)
            }
            (None, None) => Err(NodeError::Body),
        }
    }

    /// Opens `range` (inclusive) of a blob on one replica at a time. If a
    /// replica fails to open, or fails mid-stream (down, slow, or a
    /// checksum mismatch the node refuses to serve), the read resumes from
    /// the next unread byte on another replica, so the client never notices.
    pub async fn get(
        self: &Arc<Self>,
        blob: &BlobRef,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, NodeError> {
        let (start, end) = match range {
            Some(r) => r,
            None if blob.size == 0 => return Ok(futures::stream::empty().boxed()),
            None => (0, blob.size - 1),
        };
        // Healthy replicas first; the others are still worth a try.
        let mut order = blob.replicas.clone();
        order.sort_by_key(|n| (self.state(n) != Some(NodeState::Up), self.load(n)));
        let mut reader = ReplicaReader {
            nodes: self.clone(),
            blob_id: blob.id.clone(),
            order,
            tried: 0,
            pos: start,
            end,
        };
        let first = reader.open_next().await?;
        let state = (reader, first);
        Ok(futures::stream::unfold(state, |(mut reader, mut current)| async move {
            loop {
                if reader.pos > reader.end {
                    return None;
                }
                // A replica that stalls is as bad as one that fails.
                let next = match tokio::time::timeout(READ_STALL_TIMEOUT, current.next()).await {
                    Ok(item) => item,
                    Err(_) => Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "replica stalled"))),
                };
                match next {
                    Some(Ok(chunk)) => {
                        reader.pos += chunk.len() as u64;
                        return Some((Ok(chunk), (reader, current)));
                    }
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "stream ended early".to_string(),
                        };
                        let node = reader.order.get(reader.tried - 1).cloned().unwrap_or_default();
                        tracing::warn!(node = %node, blob = %reader.blob_id, offset = reader.pos, error = %why, "replica failed mid-read; resuming on another");
                        reader.nodes.mark_failed(&node);
                        match reader.open_next().await {
                            Ok(next) => current = next,
                            Err(e) => {
                                let err = std::io::Error::other(e.to_string());
                                reader.pos = reader.end + 1;
                                return Some((Err(err), (reader, futures::stream::empty().boxed())));
                            }
                        }
                    }
                }
            }
        })
        .boxed())
    }

    async fn open_range(
        &self,
        node: &str,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, NodeError> {
        let url = self.url(node, &format!("/v1/blobs/{id}"))?;
        let req = self
            .http
            .get(url)
            .bearer_auth(&self.secret)
            .header(http::header::RANGE, format!("bytes={start}-{end}"));
        let resp = Self::check(node, req.send().await).await?;
        Ok(resp.bytes_stream().map_err(std::io::Error::other).boxed())
    }

    pub async fn compose(
        &self,
        node: &str,
        id: &str,
        parts: &[String],
    ) -> Result<StoredBlob, NodeError> {
        let url = self.url(node, &format!("/v1/blobs/{id}/compose"))?;
        let req = self
            .slow_http
            .post(url)
            .bearer_auth(&self.secret)
            .json(&serde_json::json!({ "parts": parts }));
        let resp = Self::check(node, req.send().await).await?;
        resp.json::<StoredBlob>()
            .await
            .map_err(|e| NodeError::Request {
                node: node.to_string(),
                message: e.to_string(),
            })
    }

    /// Streams a blob (read from any of its replicas) to `node` under a
    /// new id; returns what the node stored.
    pub async fn copy_to(
        self: &Arc<Self>,
        blob: &BlobRef,
        node: &str,
        new_id: &str,
    ) -> Result<StoredBlob, NodeError> {
        let body = self.get(blob, None).await?;
        self.put_one(node, new_id, body, Some(blob.size)).await
    }

    /// Runs a task on a node and waits for it, at most `deadline`.
    pub async fn run_task(
        &self,
        node: &str,
        req: &insitu_node_api::TaskRequest,
        deadline: Duration,
    ) -> Result<insitu_node_api::TaskResponse, NodeError> {
        let resp = self.post_task(node, "/v1/tasks", req, deadline).await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }

    /// Posts a task request to a node's task API, marking the node
    /// unreachable if it cannot be connected to.
    async fn post_task(
        &self,
        node: &str,
        path: &str,
        req: &insitu_node_api::TaskRequest,
        deadline: Duration,
    ) -> Result<reqwest::Response, NodeError> {
        let url = self.url(node, path)?;
        let sent = self
            .task_http
            .post(url)
            .bearer_auth(&self.secret)
            .timeout(deadline)
            .json(req)
            .send()
            .await;
        if sent.as_ref().is_err_and(reqwest::Error::is_connect) {
            self.mark_failed(node);
        }
        Self::check(node, sent).await
    }

    /// Appends a blob the node holds to a running task's streamed input
    /// (`stream` is `tenant/job/task`).
    pub async fn stream_append_blob(
        &self,
        node: &str,
        stream: &str,
        blob: &str,
    ) -> Result<(), NodeError> {
        let url = self.url(node, &format!("/v1/streams/{stream}/append"))?;
        let req = self
            .task_http
            .post(url)
            .bearer_auth(&self.secret)
            .query(&[("blob", blob)]);
        Self::check(node, req.send().await).await?;
        Ok(())
    }

    /// Streams bytes to a running task's streamed input.
    pub async fn stream_append_body(
        &self,
        node: &str,
        stream: &str,
        body: ByteStream,
    ) -> Result<(), NodeError> {
        let url = self.url(node, &format!("/v1/streams/{stream}/append"))?;
        let req = self
            .task_http
            .post(url)
            .bearer_auth(&self.secret)
            .body(reqwest::Body::wrap_stream(body));
        Self::check(node, req.send().await).await?;
        Ok(())
    }

    /// Ends a running task's streamed input.
    pub async fn stream_end(&self, node: &str, stream: &str) -> Result<(), NodeError> {
        let url = self.url(node, &format!("/v1/streams/{stream}/end"))?;
        let req = self.task_http.post(url).bearer_auth(&self.secret);
        Self::check(node, req.send().await).await?;
        Ok(())
    }

    /// Pulls or loads a task's image on a node ahead of the task.
    pub async fn prepare_image(
        &self,
        node: &str,
        req: &insitu_node_api::TaskRequest,
        deadline: Duration,
    ) -> Result<(), NodeError> {
        self.post_task(node, "/v1/images", req, deadline).await?;
        Ok(())
    }

    /// Destroys a (job, phase) group's container on a node.
    pub async fn end_group(
        &self,
        node: &str,
        tenant: &str,
        job: &str,
        phase: u32,
    ) -> Result<(), NodeError> {
        let url = self.url(node, &format!("/v1/groups/{tenant}/{job}/{phase}"))?;
        let req = self
            .http
            .delete(url)
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(30));
        Self::check(node, req.send().await).await?;
        Ok(())
    }

    pub async fn delete(&self, node: &str, id: &str) -> Result<(), NodeError> {
        let url = self.url(node, &format!("/v1/blobs/{id}"))?;
        Self::check(
            node,
            self.http.delete(url).bearer_auth(&self.secret).send().await,
        )
        .await?;
        Ok(())
    }

    /// Best-effort removal of a blob that was never committed.
    pub async fn delete_everywhere(&self, id: &str, nodes: &[String]) {
        for node in nodes {
            if let Err(e) = self.delete(node, id).await {
                tracing::warn!(node = %node, blob = %id, error = %e, "could not remove uncommitted blob; GC will retry");
            }
        }
    }

    pub async fn health(&self, node: &str) -> Result<insitu_node_api::Health, NodeError> {
        let url = self.url(node, "/v1/health")?;
        let req = self
            .http
            .get(url)
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(3));
        let resp = Self::check(node, req.send().await).await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }

    /// Lists blob files on a node after `after`.
    pub async fn list_blobs(
        &self,
        node: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<insitu_node_api::BlobEntry>, NodeError> {
        let url = self.url(node, "/v1/blobs")?;
        let req = self
            .http
            .get(url)
            .bearer_auth(&self.secret)
            .query(&[("after", after), ("limit", &limit.to_string())]);
        let resp = Self::check(node, req.send().await).await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }
}

/// Which replica a failover read is on, and how far it has got.
struct ReplicaReader {
    nodes: Arc<NodeSet>,
    blob_id: String,
    order: Vec<String>,
    tried: usize,
    pos: u64,
    end: u64,
}

impl ReplicaReader {
    async fn open_next(&mut self) -> Result<ByteStream, NodeError> {
        let mut last = NodeError::NoReplica(self.blob_id.clone());
        while self.tried < self.order.len() {
            let node = self.order[self.tried].clone();
            self.tried += 1;
            match self
                .nodes
                .open_range(&node, &self.blob_id, self.pos, self.end)
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => {
                    tracing::warn!(node = %node, blob = %self.blob_id, error = %e, "replica unreadable, trying another");
                    if matches!(e, NodeError::Request { .. }) {
                        self.nodes.mark_failed(&node);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

fn insitu_storage_node_header() -> &'static str {
    insitu_node_api::EXPECTED_LENGTH_HEADER
}

/// A tiny adapter from a tokio channel to a `Stream`, to avoid pulling in
/// tokio-stream for one type.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::Receiver;

    pub struct ReceiverStream<T>(Receiver<T>);

    impl<T> ReceiverStream<T> {
        pub fn new(rx: Receiver<T>) -> Self {
            Self(rx)
        }
    }

    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_distinct() {
        let n = NodeSet::new("s".into(), Liveness::default(), 0);
        let usage = Usage {
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            free_bytes: 1 << 40,
            blob_count: 0,
        };
        for i in 0..4 {
            n.set_node(&format!("node-{i}"), "http://127.0.0.1:1");
        }
        // Nodes that have not reported their space get nothing.
        assert!(n.place("blob1", 1, 0).is_err());
        for i in 0..4 {
            n.record_health(&format!("node-{i}"), usage.clone(), vec![], 0);
        }
        let a = n.place("blob1", 2, 0).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert_eq!(a, n.place("blob1", 2, 0).unwrap());
        assert!(n.place("blob1", 5, 0).is_err());
        // Different blobs spread over the nodes.
        let firsts: std::collections::BTreeSet<_> = (0..64)
            .map(|i| n.place(&format!("b{i}"), 1, 0).unwrap()[0].clone())
            .collect();
        assert_eq!(firsts.len(), 4);
    }
}
