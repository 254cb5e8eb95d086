//! The task-scoped S3 endpoint: one per task container, on a Unix socket
//! that only that container can reach (bind-mounted at `/insitu/sock`;
//! the container keeps `network_mode: none`, and the relay in it, its
//! first process, gives SDKs a TCP endpoint on its loopback).
//!
//! Each task gets its own credentials when it starts, valid on its
//! container's socket only and revoked when it ends: a credential copied
//! out of a task is useless elsewhere and afterwards. With them a task may
//! read (GET, HEAD, list) what its tenant may read, by the gateway's rules
//! (`insitu_node_api::TASK_OBJECT_PATH`); the bytes come from this node's
//! disk or from a node that holds the blob, never through the gateway.
//! A task may also write objects under its job's output place: each is
//! staged as a blob on this node and becomes one of the task's named
//! outputs, committed with its outcome (or dropped with it). Nothing else
//! is allowed: no bucket operations, no deletes, no jobs or admin API.
//! docs/SECURITY.md has the threat model.

mod auth;
mod outputs;
mod s3;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::blob_store::BlobStore;
use insitu_node_api::NamedOut;

/// The loopback port the relay listens on inside every task container.
pub const TASK_S3_PORT: u16 = 9555;
/// Where the container sees the endpoint's socket directory and tools.
pub const SOCKET_DIR_INSIDE: &str = "/insitu/sock";
pub const SOCKET_INSIDE: &str = "/insitu/sock/s3.sock";
pub const TOOLS_DIR_INSIDE: &str = "/insitu/bin";
/// Connections one container may hold open on its endpoint at once.
const MAX_CONNECTIONS: usize = 64;
/// Time a task has to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Questions to the gateway and reads from other nodes in flight at once,
/// for all the node's endpoints together: many busy containers must not
/// turn into unbounded load on the gateway and the catalog.
const MAX_UPSTREAM_CALLS: usize = 64;
/// A gateway's answer, or the next bytes of another node's blob, that take
/// longer than this fail the request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What every endpoint on the node shares: the blob store, the gateways
/// to ask about objects, the cluster secret, the helpers to mount.
pub struct EndpointHub {
    pub store: Arc<BlobStore>,
    pub gateways: Vec<String>,
    pub secret: String,
    /// The directory holding `insitu-task` and its links (`mget`, `mls`).
    pub tools: PathBuf,
    http: reqwest::Client,
    upstream: Arc<Semaphore>,
}

impl EndpointHub {
    pub fn new(
        store: Arc<BlobStore>,
        gateways: Vec<String>,
        secret: String,
        tools: PathBuf,
    ) -> Self {
        Self {
            store,
            gateways,
            secret,
            tools,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(UPSTREAM_TIMEOUT)
                .build()
                .unwrap_or_default(),
            upstream: Arc::new(Semaphore::new(MAX_UPSTREAM_CALLS)),
        }
    }

    /// Opens an endpoint for a group of `tenant`'s tasks, its socket in a
    /// new directory under `dir`.
    pub async fn open(
        self: &Arc<Self>,
        dir: &Path,
        tenant: &str,
        job: &str,
    ) -> std::io::Result<Arc<TaskEndpoint>> {
        let socket_dir = dir.join(format!(
            "sock-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        tokio::fs::create_dir_all(&socket_dir).await?;
        let path = socket_dir.join("s3.sock");
        let listener = UnixListener::bind(&path)?;
        // The task user (not root) connects: the directory is the node's,
        // the socket open to whoever can reach it, which is that container.
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).await?;
            tokio::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).await?;
        }
        let endpoint = Arc::new(TaskEndpoint {
            socket_dir,
            tenant: tenant.to_string(),
            job: job.to_string(),
            grants: Mutex::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
            readers: Mutex::new(std::collections::HashSet::new()),
            server: Mutex::new(None),
        });
        let server = tokio::spawn(serve(listener, self.clone(), Arc::downgrade(&endpoint)));
        if let Ok(mut s) = endpoint.server.lock() {
            *s = Some(server);
        }
        Ok(endpoint)
    }
}

/// A task's credentials.
#[derive(Clone)]
pub struct TaskCredentials {
    pub access_key: String,
    pub secret_key: String,
}

impl TaskCredentials {
    /// The environment a task needs to use its endpoint with any SDK.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{TASK_S3_PORT}");
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), url.clone()),
            ("AWS_ENDPOINT_URL_S3".into(), url.clone()),
            ("INSITU_S3_ENDPOINT".into(), url),
            ("INSITU_S3_SOCKET".into(), SOCKET_INSIDE.into()),
        ]
    }
}

/// Where a task may write named outputs, and how much.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub bucket: String,
    /// Keys start with it; the rest is the output's name.
    pub prefix: String,
    /// Bytes of named outputs in all.
    pub cap_bytes: u64,
    /// Staged blobs are `<base>-o<n>`: the gateway holds `<base>` (the
    /// task's stdout blob) while the task is in flight, and the orphan
    /// sweep treats them as held with it.
    pub base_blob: String,
    /// Reducers of the next phase, if it is a reduce.
    pub next_reducers: Option<u32>,
}

/// The staged outputs could not be read (a poisoned lock): the task
/// must not succeed without them.
#[derive(Debug, thiserror::Error)]
#[error("the task's staged outputs are lost")]
pub struct StageLost;

/// Why an output may not be written.
enum Unreserved {
    Ended,
    TooMany,
    TooLarge,
}

/// Why a written output was not staged.
enum Unrecorded {
    /// The task ended while it was written.
    Ended,
    /// It would take the task past its output cap.
    TooLarge,
}

/// A running task's staged outputs.
struct Stage {
    spec: StageSpec,
    /// Bytes of the outputs staged.
    used: u64,
    /// Writes in flight, and the bytes they declared: counted against
    /// the caps at once, so concurrent writes cannot pass them together.
    writing: usize,
    writing_bytes: u64,
    next: u64,
    outputs: BTreeMap<String, NamedOut>,
    /// References asked for, each a pin for the job: capped like the
    /// outputs, replaced names included.
    references: usize,
}

/// One container's endpoint: its socket, and the credentials of its
/// running tasks.
pub struct TaskEndpoint {
    pub socket_dir: PathBuf,
    tenant: String,
    job: String,
    /// Access key → (task id, secret key), for running tasks only.
    grants: Mutex<HashMap<String, (String, String)>>,
    /// Task id → its staged named outputs.
    stages: Mutex<HashMap<String, Stage>>,
    /// Tasks that asked their endpoint for anything but writing an output
    /// (a read, a listing, a reference): what they made may depend on
    /// more than their input.
    readers: Mutex<std::collections::HashSet<String>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TaskEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskEndpoint")
            .field("socket_dir", &self.socket_dir)
            .field("tenant", &self.tenant)
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if bytes.len() < len {
                bytes.push(ALPHABET[usize::from(*b) % ALPHABET.len()]);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

impl TaskEndpoint {
    /// New credentials for a task that is about to start.
    pub fn issue(&self, task_id: &str) -> TaskCredentials {
        let creds = TaskCredentials {
            access_key: format!("INSITUTASK{}", random_token(20)),
            // 154 random bits: a v4 UUID (122) and 8 hex digits of another (32).
            secret_key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        if let Ok(mut g) = self.grants.lock() {
            g.insert(
                creds.access_key.clone(),
                (task_id.to_string(), creds.secret_key.clone()),
            );
        }
        creds
    }

    /// New credentials for a task, revoked when the guard goes (when the
    /// task has ended, or if its handler fails on the way); with `stage`,
    /// the task may write named outputs.
    pub fn issue_guarded(
        self: &Arc<Self>,
        task_id: &str,
        stage: Option<StageSpec>,
    ) -> CredentialsGuard {
        if let (Some(spec), Ok(mut stages)) = (stage, self.stages.lock()) {
            stages.insert(
                task_id.to_string(),
                Stage {
                    spec,
                    used: 0,
                    writing: 0,
                    writing_bytes: 0,
                    next: 0,
                    outputs: BTreeMap::new(),
                    references: 0,
                },
            );
        }
        CredentialsGuard {
            creds: self.issue(task_id),
            endpoint: self.clone(),
        }
    }

    /// A task's staged outputs, taken when it has ended (its credentials
    /// revoked): a write still in flight then finds no stage and is
    /// dropped.
    pub(crate) fn note_reader(&self, task_id: &str) {
        if let Ok(mut r) = self.readers.lock() {
            r.insert(task_id.to_string());
        }
    }

    /// Whether the task asked its endpoint for anything but writing an
    /// output; forgets it.
    pub fn took_reads(&self, task_id: &str) -> bool {
        self.readers
            .lock()
            .map(|mut r| r.remove(task_id))
            .unwrap_or(true)
    }

    pub fn take_staged(&self, task_id: &str) -> Result<Vec<NamedOut>, StageLost> {
        let mut stages = self.stages.lock().map_err(|_| StageLost)?;
        Ok(stages
            .remove(task_id)
            .map(|stage| stage.outputs.into_values().collect())
            .unwrap_or_default())
    }

    fn stage_spec(&self, task_id: &str) -> Option<StageSpec> {
        self.stages
            .lock()
            .ok()?
            .get(task_id)
            .map(|s| s.spec.clone())
    }

    /// Room for one more output of `declared` bytes (if known): the bytes
    /// it may take and a new blob id, counted against the task's caps
    /// until [`TaskEndpoint::record`] or [`TaskEndpoint::release`].
    fn reserve(
        &self,
        task_id: &str,
        name: &str,
        declared: Option<u64>,
    ) -> Result<(u64, String), Unreserved> {
        let mut stages = self.stages.lock().map_err(|_| Unreserved::Ended)?;
        let stage = stages.get_mut(task_id).ok_or(Unreserved::Ended)?;
        let replacing = stage.outputs.get(name).map(|o| o.size);
        if replacing.is_none()
            && stage.outputs.len() + stage.writing >= insitu_job_model::limits::MAX_NAMED_OUTPUTS
        {
            return Err(Unreserved::TooMany);
        }
        let room = (stage.spec.cap_bytes + replacing.unwrap_or(0))
            .saturating_sub(stage.used + stage.writing_bytes);
        if declared.is_some_and(|n| n > room) {
            return Err(Unreserved::TooLarge);
        }
        let id = format!("{}-o{}", stage.spec.base_blob, stage.next);
        stage.next += 1;
        stage.writing += 1;
        stage.writing_bytes += declared.unwrap_or(0);
        Ok((room, id))
    }

    /// Room for one more reference (an output of no bytes), counted
    /// against the task's outputs and, since each pins a version for the
    /// job, against a cap on the references it may ask for at all.
    fn reserve_reference(&self, task_id: &str, name: &str) -> Result<(), Unreserved> {
        {
            let mut stages = self.stages.lock().map_err(|_| Unreserved::Ended)?;
            let stage = stages.get_mut(task_id).ok_or(Unreserved::Ended)?;
            if stage.references >= insitu_job_model::limits::MAX_NAMED_OUTPUTS {
                return Err(Unreserved::TooMany);
            }
            stage.references += 1;
        }
        self.reserve(task_id, name, Some(0)).map(|_| ())
    }

    /// A reserved write that failed: its room goes back.
    fn release(&self, task_id: &str, declared: Option<u64>) {
        if let Some(stage) = self
            .stages
            .lock()
            .ok()
            .as_mut()
            .and_then(|s| s.get_mut(task_id))
        {
            stage.writing = stage.writing.saturating_sub(1);
            stage.writing_bytes = stage.writing_bytes.saturating_sub(declared.unwrap_or(0));
        }
    }

    /// Records a written output, ending its reservation; returns the
    /// staged blob it replaces (the same name written before).
    fn record(
        &self,
        task_id: &str,
        out: NamedOut,
        declared: Option<u64>,
    ) -> Result<Option<String>, Unrecorded> {
        let mut stages = self.stages.lock().map_err(|_| Unrecorded::Ended)?;
        let stage = stages.get_mut(task_id).ok_or(Unrecorded::Ended)?;
        stage.writing = stage.writing.saturating_sub(1);
        stage.writing_bytes = stage.writing_bytes.saturating_sub(declared.unwrap_or(0));
        let replaced = stage.outputs.get(&out.name).map(|o| o.size).unwrap_or(0);
        let used = stage.used - replaced + out.size;
        if used + stage.writing_bytes > stage.spec.cap_bytes {
            return Err(Unrecorded::TooLarge);
        }
        stage.used = used;
        Ok(stage
            .outputs
            .insert(out.name.clone(), out)
            .and_then(|o| o.staged_blob().map(str::to_string)))
    }

    /// The task ended: its credentials are refused from now on.
    pub fn revoke(&self, creds: &TaskCredentials) {
        if let Ok(mut g) = self.grants.lock() {
            g.remove(&creds.access_key);
        }
    }

    fn grant(&self, access_key: &str) -> Option<(String, String)> {
        self.grants.lock().ok()?.get(access_key).cloned()
    }
}

/// A task's credentials, revoked when dropped. A request already past its
/// check when they go finishes (at most one response).
pub struct CredentialsGuard {
    pub creds: TaskCredentials,
    endpoint: Arc<TaskEndpoint>,
}

impl Drop for CredentialsGuard {
    fn drop(&mut self) {
        self.endpoint.revoke(&self.creds);
    }
}

impl Drop for TaskEndpoint {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().ok().and_then(|mut s| s.take()) {
            server.abort();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// Serves one endpoint's socket until the endpoint is dropped (which
/// aborts this task, and with it every connection in `conns`).
async fn serve(
    listener: UnixListener,
    hub: Arc<EndpointHub>,
    endpoint: std::sync::Weak<TaskEndpoint>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "task endpoint: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if endpoint.strong_count() == 0 {
            return;
        }
        let app = s3::router(hub.clone(), endpoint.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "task endpoint connection ended with an error");
            }
        });
    }
}
