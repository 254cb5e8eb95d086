//! The gateway's view of the storage nodes: where they are, which of them
//! should hold a new blob (placement), and streaming blobs to and from them.

use std::collections::BTreeMap;
use std::sync::RwLock;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use insitu_catalog::BlobRef;
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
    #[error("the body stream failed")]
    Body,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoredBlob {
    pub id: String,
    pub size: u64,
    pub md5: String,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

pub struct NodeSet {
    http: reqwest::Client,
    secret: String,
    /// node id → base URL (`http://host:port`).
    nodes: RwLock<BTreeMap<String, String>>,
}

/// Rendezvous (highest random weight) score of a node for a blob: stable,
/// and adding or removing a node only moves the blobs that must move.
fn score(node: &str, blob: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(blob.as_bytes());
    h.finalize().into()
}

impl NodeSet {
    pub fn new(secret: String) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            http,
            secret,
            nodes: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn set_node(&self, id: &str, base_url: &str) {
        if let Ok(mut n) = self.nodes.write() {
            n.insert(id.to_string(), base_url.trim_end_matches('/').to_string());
        }
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
        let base = nodes
            .get(node)
            .ok_or_else(|| NodeError::UnknownNode(node.to_string()))?;
        Ok(format!("{base}{path}"))
    }

    /// Chooses `replicas` distinct nodes for a blob.
    pub fn place(&self, blob_id: &str, replicas: usize) -> Result<Vec<String>, NodeError> {
        let mut ids = self.node_ids();
        if ids.len() < replicas || replicas == 0 {
            return Err(NodeError::NotEnoughNodes {
                up: ids.len(),
                needed: replicas.max(1),
            });
        }
        ids.sort_by_key(|id| std::cmp::Reverse(score(id, blob_id)));
        ids.truncate(replicas);
        Ok(ids)
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
        let resp = Self::check(node, req.send().await).await?;
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

    /// Opens a blob for reading on the first replica that answers, trying
    /// the others in turn. `range` is inclusive.
    pub async fn get(
        &self,
        blob: &BlobRef,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, NodeError> {
        let mut last = NodeError::NoReplica(blob.id.clone());
        for node in &blob.replicas {
            let url = match self.url(node, &format!("/v1/blobs/{}", blob.id)) {
                Ok(u) => u,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut req = self.http.get(url).bearer_auth(&self.secret);
            if let Some((a, b)) = range {
                req = req.header(http::header::RANGE, format!("bytes={a}-{b}"));
            }
            match Self::check(node, req.send().await).await {
                Ok(resp) => return Ok(resp.bytes_stream().map_err(std::io::Error::other).boxed()),
                Err(e) => {
                    tracing::warn!(node = %node, blob = %blob.id, error = %e, "replica unreadable, trying another");
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub async fn compose(
        &self,
        node: &str,
        id: &str,
        parts: &[String],
    ) -> Result<StoredBlob, NodeError> {
        let url = self.url(node, &format!("/v1/blobs/{id}/compose"))?;
        let req = self
            .http
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

    pub async fn health(&self, node: &str) -> Result<serde_json::Value, NodeError> {
        let url = self.url(node, "/v1/health")?;
        let resp = Self::check(
            node,
            self.http.get(url).bearer_auth(&self.secret).send().await,
        )
        .await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }
}

fn insitu_storage_node_header() -> &'static str {
    insitu_storage_node::node_api::EXPECTED_LENGTH_HEADER
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
        let n = NodeSet::new("s".into());
        for i in 0..4 {
            n.set_node(&format!("node-{i}"), "http://127.0.0.1:1");
        }
        let a = n.place("blob1", 2).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert_eq!(a, n.place("blob1", 2).unwrap());
        assert!(n.place("blob1", 5).is_err());
        // Different blobs spread over the nodes.
        let firsts: std::collections::BTreeSet<_> = (0..64)
            .map(|i| n.place(&format!("b{i}"), 1).unwrap()[0].clone())
            .collect();
        assert_eq!(firsts.len(), 4);
    }
}
