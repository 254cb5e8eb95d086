//! The node's task endpoint: the gateway's supervisor sends a task here,
//! to a node that holds the task's input blob, and gets back the task's
//! outcome with its stdout (and, on failure, stderr) stored as blobs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::blob_store::{BlobError, BlobStore};
use crate::task_runner::{Group, GroupSpec, Limits, TaskEnd, TaskError, TaskRunner, TaskSpec};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub tenant: String,
    pub job: String,
    pub phase: u32,
    pub image: String,
    /// A blob on this node holding a `docker save` tarball; when given, the
    /// task runs in the image it contains (loaded once, then cached).
    #[serde(default)]
    pub image_blob: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    pub memory_mb: u64,
    pub cpus: f64,
    pub disk_mb: u64,
    pub timeout_s: u64,
    pub task_id: String,
    pub exec: String,
    /// Run once in a new container before its first task.
    #[serde(default)]
    pub init: Option<String>,
    /// The input arrives while the task runs, through
    /// `/v1/streams/{tenant}/{job}/{task_id}/append` and `.../end` (a
    /// reducer fed as earlier phases produce). The timeout counts from the
    /// end of the input.
    #[serde(default)]
    pub input_stream: bool,
    /// A blob on this node, fed to the task on stdin.
    #[serde(default)]
    pub input_blob: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Blob ids (chosen by the gateway) for the task's stdout and stderr.
    pub stdout_blob: String,
    pub stderr_blob: String,
    /// Split a successful task's stdout line by line over this many
    /// reducers (by the hash of each line's first tab-separated field):
    /// the pieces become blobs `<stdout_blob>-r<N>` and stdout itself is
    /// not kept.
    #[serde(default)]
    pub split: Option<u32>,
}

/// A piece of a split stdout, bound for one reducer. Empty pieces are not
/// stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceOut {
    pub reducer: u32,
    pub blob: String,
    pub size: u64,
    pub md5: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskEndReport {
    Exited { code: i64 },
    Killed { resource: String },
    TimedOut,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResponse {
    pub end: TaskEndReport,
    pub stdout_size: u64,
    /// MD5 of stdout (when it was kept whole).
    #[serde(default)]
    pub stdout_md5: String,
    #[serde(default)]
    pub pieces: Vec<PieceOut>,
    /// Kept only when the task did not exit 0.
    pub stderr_kept: bool,
    #[serde(default)]
    pub stderr_size: u64,
    pub stderr_preview: String,
}

/// The writing end of a streamed task input.
struct StreamSlot {
    writer: Mutex<Option<tokio::net::unix::pipe::Sender>>,
    end: tokio::sync::watch::Sender<bool>,
}

/// How long an append waits for its task to open its input (the caller
/// retries while its task call is pending: an image pull can take longer).
const STREAM_OPEN_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no running task {0} takes a streamed input")]
    NoSuchStream(String),
    #[error("the task's input has already ended")]
    Ended,
    #[error("the task stopped reading its input")]
    ReaderGone,
    #[error("{0}")]
    Source(String),
}

/// Ended groups remembered, to refuse their late tasks.
const MAX_ENDED_GROUPS: usize = 4096;

/// Runs tasks on this node, one container per (tenant, job, phase).
pub struct TaskService {
    runner: TaskRunner,
    groups: Mutex<HashMap<String, Group>>,
    /// Groups ended by the gateway (their job is over): a task for one that
    /// arrives late is refused instead of starting a container nobody
    /// would end. Bounded; the oldest are forgotten first.
    ended: std::sync::Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Streamed inputs of running tasks, by `tenant/job/task`.
    streams: std::sync::Mutex<HashMap<String, Arc<StreamSlot>>>,
    stream_opened: tokio::sync::Notify,
    /// Image tarball blob id → the image it loaded.
    loaded_images: Mutex<HashMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskApiError {
    #[error("{0}")]
    Task(#[from] TaskError),
    #[error("{0}")]
    Blob(#[from] BlobError),
}

impl TaskService {
    pub fn new(runner: TaskRunner) -> Self {
        Self {
            runner,
            groups: Mutex::new(HashMap::new()),
            ended: Default::default(),
            streams: Default::default(),
            stream_opened: tokio::sync::Notify::new(),
            loaded_images: Mutex::new(HashMap::new()),
        }
    }

    /// The image a task runs in: its name, or the image loaded from its
    /// tarball blob. Loading happens before the task's clock starts.
    async fn image_for(
        &self,
        store: &BlobStore,
        req: &TaskRequest,
    ) -> Result<String, TaskApiError> {
        let Some(blob) = &req.image_blob else {
            return Ok(req.image.clone());
        };
        let mut loaded = self.loaded_images.lock().await;
        if let Some(name) = loaded.get(blob) {
            return Ok(name.clone());
        }
        store.size(blob).await?;
        let names = self
            .runner
            .load_image_tarball(&store.path_of(blob)?)
            .await?;
        let name = names[0].clone();
        tracing::info!(blob = %blob, image = %name, "image loaded from an object");
        loaded.insert(blob.clone(), name.clone());
        Ok(name)
    }

    /// Makes a task's image available on this node (pulled, or loaded from
    /// its tarball blob), before any task of it runs; returns its name.
    pub async fn prepare_image(
        &self,
        store: &BlobStore,
        req: &TaskRequest,
    ) -> Result<String, TaskApiError> {
        let image = self.image_for(store, req).await?;
        self.runner.ensure_image(&image).await?;
        Ok(image)
    }

    pub async fn run(
        &self,
        store: &BlobStore,
        req: TaskRequest,
    ) -> Result<TaskResponse, TaskApiError> {
        let image = self.image_for(store, &req).await?;
        let spec = GroupSpec {
            tenant: req.tenant.clone(),
            job: req.job.clone(),
            phase: req.phase,
            image,
            limits: Limits {
                memory_mb: req.memory_mb,
                cpus: req.cpus,
                scratch_mb: req.disk_mb.min(req.memory_mb / 2).max(16),
                ..Limits::default()
            },
            runtime: req.runtime.clone(),
        };
        let input = match &req.input_blob {
            Some(id) => {
                store.size(id).await?;
                Some(store.path_of(id)?)
            }
            None => None,
        };
        let key = format!("{}/{}/{}", req.tenant, req.job, req.phase);
        let group = {
            let mut groups = self.groups.lock().await;
            if self.has_ended(&key) {
                return Err(TaskError::GroupEnded(key).into());
            }
            match groups.get(&key) {
                Some(g) => g.clone(),
                None => {
                    let g = self.runner.start_group(&spec).await?;
                    if let Some(init) = &req.init {
                        self.run_init(&g, init, &req).await?;
                    }
                    groups.insert(key.clone(), g.clone());
                    g
                }
            }
        };
        let stream_key = format!("{}/{}/{}", req.tenant, req.job, req.task_id);
        let (input, input_end) = if req.input_stream {
            let fifo = self.runner.make_fifo(&group, &req.task_id)?;
            // Opened for reading and writing, so opening never waits for
            // the task; the task sees end of input when this is dropped.
            let writer = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&fifo)
                .map_err(TaskError::Io)?;
            let (end_tx, end_rx) = tokio::sync::watch::channel(false);
            let slot = Arc::new(StreamSlot {
                writer: Mutex::new(Some(writer)),
                end: end_tx,
            });
            if let Ok(mut s) = self.streams.lock() {
                s.insert(stream_key.clone(), slot);
            }
            self.stream_opened.notify_waiters();
            (Some(fifo), Some(end_rx))
        } else {
            (input, None)
        };
        let task = TaskSpec {
            task_id: req.task_id.clone(),
            exec: req.exec.clone(),
            input,
            env: req.env.clone(),
            timeout: Duration::from_secs(req.timeout_s.max(1)),
            input_end,
        };
        let outcome = self.runner.run_task(&group, &task).await;
        if req.input_stream {
            if let Ok(mut s) = self.streams.lock() {
                s.remove(&stream_key);
            }
        }
        let outcome = outcome?;
        let end = match &outcome.end {
            TaskEnd::Exited(code) => TaskEndReport::Exited { code: *code },
            TaskEnd::Killed(r) => TaskEndReport::Killed {
                resource: r.clone(),
            },
            TaskEnd::TimedOut => TaskEndReport::TimedOut,
        };
        let failed = end != TaskEndReport::Exited { code: 0 };
        let (stdout_size, stdout_md5, pieces) = match req.split {
            Some(count) if !failed && count > 1 => {
                let files = split_lines(&outcome.stdout, count).await?;
                let mut pieces = Vec::new();
                let mut total = 0;
                for (reducer, file) in files.into_iter().enumerate() {
                    let Some(file) = file else { continue };
                    let id = format!("{}-r{reducer}", req.stdout_blob);
                    let (info, md5) = store.adopt(&id, &file).await?;
                    total += info.size;
                    pieces.push(PieceOut {
                        reducer: reducer as u32,
                        blob: id,
                        size: info.size,
                        md5,
                    });
                }
                (total, String::new(), pieces)
            }
            _ => {
                let (info, md5) = store.adopt(&req.stdout_blob, &outcome.stdout).await?;
                (info.size, md5, Vec::new())
            }
        };
        let stderr_file = outcome.stdout.with_file_name("stderr");
        let stderr_size = if failed {
            store
                .adopt(&req.stderr_blob, &stderr_file)
                .await
                .ok()
                .map(|(info, _)| info.size)
        } else {
            None
        };
        let stderr_kept = stderr_size.is_some();
        let _ = tokio::fs::remove_dir_all(outcome.stdout.parent().unwrap_or(&outcome.stdout)).await;
        if matches!(end, TaskEndReport::Killed { .. } | TaskEndReport::TimedOut) {
            // The container is gone; the group's next task gets a fresh one.
            self.groups.lock().await.remove(&key);
            self.runner.end_group(&group).await;
        }
        Ok(TaskResponse {
            end,
            stdout_size,
            stdout_md5,
            pieces,
            stderr_kept,
            stderr_size: stderr_size.unwrap_or(0),
            stderr_preview: outcome.stderr_preview,
        })
    }

    /// Ends a group: its container and directories go.
    pub async fn end_group(&self, tenant: &str, job: &str, phase: u32) -> bool {
        let key = format!("{tenant}/{job}/{phase}");
        let group = {
            let mut groups = self.groups.lock().await;
            if let Ok(mut ended) = self.ended.lock() {
                if ended.0.insert(key.clone()) {
                    ended.1.push_back(key.clone());
                }
                while ended.1.len() > MAX_ENDED_GROUPS {
                    if let Some(old) = ended.1.pop_front() {
                        ended.0.remove(&old);
                    }
                }
            }
            groups.remove(&key)
        };
        match group {
            Some(g) => {
                self.runner.end_group(&g).await;
                true
            }
            None => false,
        }
    }

    /// Runs a phase's `init` once in a new container; a failure ends the
    /// container and fails the task that needed it.
    async fn run_init(
        &self,
        group: &Group,
        init: &str,
        req: &TaskRequest,
    ) -> Result<(), TaskApiError> {
        let spec = TaskSpec {
            task_id: "init".into(),
            exec: init.to_string(),
            input: None,
            env: req.env.clone(),
            timeout: Duration::from_secs(req.timeout_s.max(1)),
            input_end: None,
        };
        let outcome = self.runner.run_task(group, &spec).await;
        let failure = match &outcome {
            Ok(o) if o.end == TaskEnd::Exited(0) => None,
            Ok(o) => Some(format!(
                "init ended with {:?}: {}",
                o.end,
                o.stderr_preview.lines().last().unwrap_or("")
            )),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => Ok(()),
            Some(message) => {
                self.runner.end_group(group).await;
                Err(TaskError::InitFailed(message).into())
            }
        }
    }

    async fn stream_slot(&self, key: &str) -> Result<Arc<StreamSlot>, StreamError> {
        let deadline = tokio::time::Instant::now() + STREAM_OPEN_WAIT;
        loop {
            let opened = self.stream_opened.notified();
            if let Some(slot) = self.streams.lock().ok().and_then(|s| s.get(key).cloned()) {
                return Ok(slot);
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return Err(StreamError::NoSuchStream(key.to_string()));
            }
        }
    }

    /// Appends bytes to a running task's streamed input, in order; waits
    /// (bounded) for the task to open it. Memory stays flat: the pipe
    /// pushes back when the task reads slowly.
    pub async fn append<S>(&self, key: &str, mut data: S) -> Result<u64, StreamError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin,
    {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let slot = self.stream_slot(key).await?;
        let mut writer = slot.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return Err(StreamError::Ended);
        };
        let mut written = 0;
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| StreamError::Source(e.to_string()))?;
            w.write_all(&chunk).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    StreamError::ReaderGone
                } else {
                    StreamError::Source(e.to_string())
                }
            })?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }

    /// Ends a task's streamed input: the task sees end of file.
    pub async fn end_stream(&self, key: &str) -> Result<(), StreamError> {
        let slot = self.stream_slot(key).await?;
        slot.writer.lock().await.take();
        let _ = slot.end.send(true);
        Ok(())
    }

    fn has_ended(&self, key: &str) -> bool {
        self.ended
            .lock()
            .map(|e| e.0.contains(key))
            .unwrap_or(false)
    }

    /// Removes containers of this node that no live group claims.
    pub async fn reap_unknown(self: &Arc<Self>) -> Result<usize, TaskError> {
        let live: Vec<String> = self
            .groups
            .lock()
            .await
            .values()
            .map(|g| g.group_id.clone())
            .collect();
        self.runner.reap(|g| live.iter().any(|l| l == g)).await
    }
}

/// Splits a file line by line into `count` files next to it, by
/// `insitu_jobs::plan::reducer_for_line`; `None` for a piece that got no
/// line. The source file is removed.
async fn split_lines(
    file: &std::path::Path,
    count: u32,
) -> Result<Vec<Option<std::path::PathBuf>>, TaskApiError> {
    let file = file.to_path_buf();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use std::io::{BufRead, Write};
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(&file)?);
        let mut writers: Vec<Option<(std::path::PathBuf, std::io::BufWriter<std::fs::File>)>> =
            (0..count).map(|_| None).collect();
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let r = insitu_jobs::plan::reducer_for_line(&line, count) as usize;
            if writers[r].is_none() {
                let path = file.with_file_name(format!("stdout.r{r}"));
                let f = std::fs::File::create(&path)?;
                writers[r] = Some((path, std::io::BufWriter::with_capacity(64 * 1024, f)));
            }
            if let Some((_, w)) = writers[r].as_mut() {
                w.write_all(&line)?;
            }
        }
        let mut out = Vec::with_capacity(count as usize);
        for w in writers {
            match w {
                Some((path, mut w)) => {
                    w.flush()?;
                    out.push(Some(path));
                }
                None => out.push(None),
            }
        }
        std::fs::remove_file(&file)?;
        Ok(out)
    })
    .await
    .map_err(|e| TaskApiError::Blob(BlobError::Io(std::io::Error::other(e))))?;
    result.map_err(|e| TaskApiError::Blob(BlobError::Io(e)))
}
