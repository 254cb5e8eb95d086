//! A storage node: a blob store on local disk behind an internal HTTP API.
//! The task runner joins it when the jobs issue lands.

pub mod blob_store;
pub mod node_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;

use blob_store::{BlobError, BlobStore};
use node_api::NodeState;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cluster_secret: String,
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

/// A node bound to its port, ready to serve.
pub struct Node {
    listener: TcpListener,
    state: Arc<NodeState>,
}

impl Node {
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        let store = BlobStore::open(&config.data_dir).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let state = Arc::new(NodeState {
            node_id: config.node_id,
            secret: config.cluster_secret,
            store,
        });
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let span = tracing::info_span!("node", node = %self.state.node_id);
        let _enter = span.enter();
        tracing::info!(addr = ?self.listener.local_addr().ok(), "storage node serving");
        drop(_enter);
        axum::serve(self.listener, node_api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(NodeError::Serve)
    }
}
