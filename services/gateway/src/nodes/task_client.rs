//! Task calls to nodes: run a task, prepare its image, feed its input
//! stream, end its container group; and [`TaskClient`], the supervisor's
//! view of the nodes (`insitu_jobs::NodeClient`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use insitu_catalog::BlobRef;
use insitu_jobs::{NodeCallError, NodeClient, NodeResult};
use insitu_node_api::{LogRequest, LogResponse, TaskRequest, TaskResponse, LOG_PATH};

use super::{ByteStream, NodeError, NodeSet, NodeState};

impl NodeSet {
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

    /// Pulls or loads a task's image on a node ahead of the task; returns
    /// the image's content id there, when the node says it.
    pub async fn prepare_image(
        &self,
        node: &str,
        req: &insitu_node_api::TaskRequest,
        deadline: Duration,
    ) -> Result<Option<String>, NodeError> {
        let answer = self.post_task(node, "/v1/images", req, deadline).await?;
        #[derive(serde::Deserialize)]
        struct Prepared {
            #[serde(default)]
            image_id: Option<String>,
        }
        // An answer without the id (an older node) only disables memoizing.
        let id = answer
            .json::<Prepared>()
            .await
            .ok()
            .and_then(|p| p.image_id)
            .filter(|id| !id.is_empty());
        Ok(id)
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
}

impl NodeSet {
    /// What a job's tasks on a node wrote to stderr past `req`'s offsets.
    pub async fn read_logs(
        &self,
        node: &str,
        tenant: &str,
        job: &str,
        req: &LogRequest,
    ) -> Result<LogResponse, NodeError> {
        let url = self.url(node, &format!("{LOG_PATH}/{tenant}/{job}"))?;
        let sent = self
            .http
            .post(url)
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(10))
            .json(req)
            .send()
            .await;
        let resp = Self::check(node, sent).await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }
}

/// The supervisor's client for the nodes: task calls, and the blob calls a
/// job makes (copies of images and outputs, reducer input from replicas).
pub struct TaskClient {
    nodes: Arc<NodeSet>,
}

impl TaskClient {
    pub fn new(nodes: Arc<NodeSet>) -> Self {
        Self { nodes }
    }
}

impl From<NodeError> for NodeCallError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Status { node, status, body } => Self::Status { node, status, body },
            e => Self::Failed(e.to_string()),
        }
    }
}

#[async_trait]
impl NodeClient for TaskClient {
    fn node_ids(&self) -> Vec<String> {
        self.nodes.node_ids()
    }

    fn is_up(&self, node: &str) -> bool {
        self.nodes.state(node) == Some(NodeState::Up)
    }

    fn place_more(
        &self,
        blob: &str,
        want: usize,
        size: u64,
        have: &[String],
    ) -> NodeResult<Vec<String>> {
        Ok(self.nodes.place_excluding(blob, want, size, have)?)
    }

    fn has_room(&self, node: &str, size: u64) -> bool {
        self.nodes.has_room(node, size)
    }

    async fn copy_to(&self, blob: &BlobRef, node: &str, new_id: &str) -> NodeResult<()> {
        self.nodes.copy_to(blob, node, new_id).await?;
        Ok(())
    }

    async fn delete(&self, node: &str, blob: &str) -> NodeResult<()> {
        Ok(self.nodes.delete(node, blob).await?)
    }

    async fn prepare_image(
        &self,
        node: &str,
        req: &TaskRequest,
        deadline: Duration,
    ) -> NodeResult<Option<String>> {
        Ok(self.nodes.prepare_image(node, req, deadline).await?)
    }

    async fn run_task(
        &self,
        node: &str,
        req: &TaskRequest,
        deadline: Duration,
    ) -> NodeResult<TaskResponse> {
        Ok(self.nodes.run_task(node, req, deadline).await?)
    }

    async fn stream_append_blob(&self, node: &str, stream: &str, blob: &str) -> NodeResult<()> {
        Ok(self.nodes.stream_append_blob(node, stream, blob).await?)
    }

    async fn stream_append_copy(&self, node: &str, stream: &str, blob: &BlobRef) -> NodeResult<()> {
        let body = self.nodes.get(blob, None).await?;
        Ok(self.nodes.stream_append_body(node, stream, body).await?)
    }

    async fn stream_end(&self, node: &str, stream: &str) -> NodeResult<()> {
        Ok(self.nodes.stream_end(node, stream).await?)
    }

    async fn end_group(&self, node: &str, tenant: &str, job: &str, phase: u32) -> NodeResult<()> {
        Ok(self.nodes.end_group(node, tenant, job, phase).await?)
    }

    async fn read_logs(
        &self,
        node: &str,
        tenant: &str,
        job: &str,
        req: &LogRequest,
    ) -> NodeResult<LogResponse> {
        Ok(self.nodes.read_logs(node, tenant, job, req).await?)
    }
}
