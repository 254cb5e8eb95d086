//! Blob calls to nodes: replicated streaming writes, reads that fail over
//! between replicas, copies, composition of parts, deletion and listing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use insitu_catalog::BlobRef;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

use super::{ByteStream, NodeError, NodeSet, NodeState, StoredBlob};

/// A replica that sends nothing for this long is abandoned and the read
/// resumes on another one.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(10);

impl NodeSet {
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
        let req = self.http.get(url).bearer_auth(&self.secret).header(
            http::header::RANGE,
            insitu_node_api::ByteRange { start, end }.header_value(),
        );
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
