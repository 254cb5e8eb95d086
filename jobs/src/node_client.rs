//! How the supervisor reaches storage nodes: a small trait, so that its
//! state machine runs against a fake in unit tests. The gateway implements
//! it over HTTP (`insitu_gateway::nodes::TaskClient`).

use std::time::Duration;

use async_trait::async_trait;
use insitu_catalog::BlobRef;
use insitu_node_api::{LogRequest, LogResponse, TaskRequest, TaskResponse};

/// A failed call to a node, as far as the supervisor tells cases apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeCallError {
    /// The node answered with this status; `body` is its JSON error.
    #[error("node {node} answered {status}: {body}")]
    Status {
        node: String,
        status: u16,
        body: String,
    },
    /// No answer (unreachable, timed out, the body failed), or no node to
    /// ask.
    #[error("{0}")]
    Failed(String),
}

impl NodeCallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Failed(_) => None,
        }
    }
}

pub type NodeResult<T> = Result<T, NodeCallError>;

/// The calls the supervisor makes to storage nodes.
#[async_trait]
pub trait NodeClient: Send + Sync {
    /// Every node the cluster knows (up or not).
    fn node_ids(&self) -> Vec<String>;
    /// Whether a node is up now (heartbeats recent, not failed).
    fn is_up(&self, node: &str) -> bool;
    /// `want` up nodes with room, other than `have`, for more replicas of
    /// a blob of `size` bytes.
    fn place_more(
        &self,
        blob: &str,
        want: usize,
        size: u64,
        have: &[String],
    ) -> NodeResult<Vec<String>>;
    /// Whether an up node has room for `size` more bytes (above the
    /// reserve every node keeps).
    fn has_room(&self, node: &str, size: u64) -> bool;
    /// Copies a blob (read from any of its replicas) to `node` as `new_id`.
    async fn copy_to(&self, blob: &BlobRef, node: &str, new_id: &str) -> NodeResult<()>;
    async fn delete(&self, node: &str, blob: &str) -> NodeResult<()>;
    /// Pulls or loads a task's image on the node ahead of the task;
    /// returns the image's content id there, if the node says it.
    async fn prepare_image(
        &self,
        node: &str,
        req: &TaskRequest,
        deadline: Duration,
    ) -> NodeResult<Option<String>>;
    /// Runs a task and waits for its end, at most `deadline`.
    async fn run_task(
        &self,
        node: &str,
        req: &TaskRequest,
        deadline: Duration,
    ) -> NodeResult<TaskResponse>;
    /// Appends a blob the node holds to a running task's input stream
    /// (`stream` is `tenant/job/attempt`).
    async fn stream_append_blob(&self, node: &str, stream: &str, blob: &str) -> NodeResult<()>;
    /// Appends a blob read from its replicas elsewhere to a task's input.
    async fn stream_append_copy(&self, node: &str, stream: &str, blob: &BlobRef) -> NodeResult<()>;
    /// Ends a task's input stream: the task sees end of file.
    async fn stream_end(&self, node: &str, stream: &str) -> NodeResult<()>;
    /// Destroys the container of a (job, phase) group on the node.
    async fn end_group(&self, node: &str, tenant: &str, job: &str, phase: u32) -> NodeResult<()>;
    /// What the job's tasks on the node wrote to stderr past `req`'s
    /// offsets.
    async fn read_logs(
        &self,
        node: &str,
        tenant: &str,
        job: &str,
        req: &LogRequest,
    ) -> NodeResult<LogResponse>;
}
