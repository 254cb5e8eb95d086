//! The node's task endpoint: the gateway's supervisor sends a task here,
//! to a node that holds the task's input blob, and gets back the task's
//! outcome with its stdout (and, on failure, stderr) stored as blobs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use insitu_job_model::limits::MAX_KEY_LINE_BYTES;

use crate::blob_store::{BlobError, BlobStore};
use crate::task_endpoint::{EndpointHub, StageSpec};
use crate::task_logs::{LogBoard, LogLabel};
use crate::task_runner::{
    Group, GroupSpec, Limits, TaskEnd, TaskError, TaskRunner, TaskSpec, ToolMounts,
};

pub use insitu_node_api::{PieceOut, TaskEndReport, TaskRequest, TaskResponse};

/// The writing end of a streamed task input.
struct StreamSlot {
    writer: Mutex<Writer>,
    end: tokio::sync::watch::Sender<bool>,
    /// The task has ended: nobody will open the pipe any more.
    finished: std::sync::atomic::AtomicBool,
}

/// The pipe is opened for writing only once the task has opened it for
/// reading: closing a pipe nobody has opened yet would lose the end of
/// input, and a writer that is also a reader would never see the task go.
enum Writer {
    Unopened(std::path::PathBuf),
    Open(tokio::net::unix::pipe::Sender),
    Ended,
}

impl StreamSlot {
    /// The open writer, waiting for the task to open its end.
    async fn open<'a>(
        &self,
        w: &'a mut Writer,
    ) -> Result<&'a mut tokio::net::unix::pipe::Sender, StreamError> {
        if let Writer::Unopened(path) = w {
            let path = path.clone();
            let sender = loop {
                match tokio::net::unix::pipe::OpenOptions::new().open_sender(&path) {
                    Ok(s) => break s,
                    // No reader yet (ENXIO).
                    Err(e) if e.raw_os_error() == Some(6) => {
                        if self.finished.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(StreamError::ReaderGone);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => return Err(StreamError::Source(e.to_string())),
                }
            };
            *w = Writer::Open(sender);
        }
        match w {
            Writer::Open(s) => Ok(s),
            _ => Err(StreamError::Ended),
        }
    }
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
    /// Task endpoints and tools, when the node has the tools to mount.
    endpoints: Option<Arc<EndpointHub>>,
    /// Each (tenant, job, phase) group's container, behind a lock of its
    /// own: starting one group's container (an image pull, `init`) does
    /// not hold up another's tasks.
    groups: Mutex<HashMap<String, Arc<Mutex<Option<Group>>>>>,
    /// Groups ended by the gateway (their job is over): a task for one that
    /// arrives late is refused instead of starting a container nobody
    /// would end. Bounded; the oldest are forgotten first.
    ended: std::sync::Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Streamed inputs of running tasks, by `tenant/job/task`.
    streams: std::sync::Mutex<HashMap<String, Arc<StreamSlot>>>,
    stream_opened: tokio::sync::Notify,
    /// Image tarball blob id → the image it loaded.
    loaded_images: Mutex<HashMap<String, String>>,
    /// Running (and just ended) tasks' stderr, for `insitu job logs`.
    logs: Arc<LogBoard>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskApiError {
    #[error("{0}")]
    Task(#[from] TaskError),
    #[error("{0}")]
    Blob(#[from] BlobError),
}

impl TaskService {
    /// A service whose task containers get an endpoint and the task tools
    /// when `endpoints` is given.
    pub fn new(runner: TaskRunner, endpoints: Option<Arc<EndpointHub>>) -> Self {
        Self {
            // Beside the tasks directory, which is swept of what no container
            // owns.
            logs: LogBoard::new(runner.root().with_file_name("stderr-kept")),
            runner,
            endpoints,
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
        let name = self
            .runner
            .load_image_private(&store.path_of(blob)?, blob)
            .await?;
        tracing::info!(blob = %blob, image = %name, "image loaded from an object");
        loaded.insert(blob.clone(), name.clone());
        Ok(name)
    }

    /// Drops the image loaded from `blob`, which this node no longer holds.
    pub async fn forget_image(&self, blob: &str) {
        if self.loaded_images.lock().await.remove(blob).is_some() {
            self.runner.remove_private_image(blob).await;
        }
    }

    /// At start-up: untags the images an earlier life of this node loaded
    /// (a tag is trusted only as long as this process made it; they are
    /// loaded again when used). Returns how many were removed.
    pub async fn drop_loaded_images(&self) -> Result<usize, TaskError> {
        let keys = self.runner.private_images().await?;
        for key in &keys {
            self.runner.remove_private_image(key).await;
        }
        Ok(keys.len())
    }

    /// Makes a task's image available on this node (pulled, or loaded from
    /// its tarball blob), before any task of it runs; returns its name and
    /// its content id.
    pub async fn prepare_image(
        &self,
        store: &BlobStore,
        req: &TaskRequest,
    ) -> Result<(String, String), TaskApiError> {
        let image = self.image_for(store, req).await?;
        let id = self.runner.ensure_image(&image).await?;
        Ok((image, id))
    }

    pub async fn run(
        &self,
        store: &BlobStore,
        req: TaskRequest,
    ) -> Result<TaskResponse, TaskApiError> {
        let image = self.image_for(store, &req).await?;
        let mut spec = GroupSpec {
            tenant: req.tenant.clone(),
            job: req.job.clone(),
            phase: req.phase,
            image,
            limits: Limits {
                memory_mb: req.memory_mb,
                cpus: req.cpus,
                scratch_mb: req.disk_mb.max(8),
                max_file_bytes: match req.output_mb {
                    0 => Limits::default().max_file_bytes,
                    mb => (mb.min(i64::MAX as u64 >> 20) << 20) as i64,
                },
                ..Limits::default()
            },
            runtime: req.runtime.clone(),
            assets: {
                let mut assets = Vec::new();
                for a in &req.assets {
                    store.size(&a.blob).await?;
                    assets.push((a.path.clone(), store.path_of(&a.blob)?));
                }
                assets
            },
            tools: None,
        };
        let input = match &req.input_blob {
            Some(id) => {
                store.size(id).await?;
                Some(store.path_of(id)?)
            }
            None => None,
        };
        let key = format!("{}/{}/{}", req.tenant, req.job, req.phase);
        let cell = {
            let mut groups = self.groups.lock().await;
            if self.has_ended(&key) {
                return Err(TaskError::GroupEnded(key).into());
            }
            groups.entry(key.clone()).or_default().clone()
        };
        let group = {
            let mut slot = cell.lock().await;
            match &*slot {
                Some(g) => g.clone(),
                None => {
                    // The scratch space is a file on the store's disk: its
                    // room is held while the container lives.
                    let room = store.reserve(spec.limits.scratch_mb.saturating_mul(1 << 20))?;
                    let endpoint = match &self.endpoints {
                        Some(hub) => {
                            let ep = hub
                                .open(self.runner.root(), &req.tenant, &req.job)
                                .await
                                .map_err(TaskError::from)?;
                            spec.tools = Some(ToolMounts {
                                bin: hub.tools.clone(),
                                socket_dir: ep.socket_dir.clone(),
                            });
                            Some(ep)
                        }
                        None => None,
                    };
                    let mut g = self.runner.start_group(&spec).await?;
                    g.room = Some(Arc::new(room));
                    g.endpoint = endpoint;
                    if let Some(init) = &req.init {
                        self.run_init(&g, init, &req).await?;
                    }
                    *slot = Some(g.clone());
                    g
                }
            }
        };
        if self.has_ended(&key) {
            // Ended while it started: nobody else will end it.
            if let Some(g) = cell.lock().await.take() {
                self.runner.end_group(&g).await;
            }
            return Err(TaskError::GroupEnded(key).into());
        }
        let stream_key = format!("{}/{}/{}", req.tenant, req.job, req.task_id);
        let mut stream_slot: Option<Arc<StreamSlot>> = None;
        let (input, input_end) = if req.input_stream {
            let fifo = self.runner.make_fifo(&group, &req.task_id)?;
            let (end_tx, end_rx) = tokio::sync::watch::channel(false);
            let slot = Arc::new(StreamSlot {
                writer: Mutex::new(Writer::Unopened(fifo.clone())),
                end: end_tx,
                finished: std::sync::atomic::AtomicBool::new(false),
            });
            stream_slot = Some(slot.clone());
            if let Ok(mut s) = self.streams.lock() {
                s.insert(stream_key.clone(), slot);
            }
            self.stream_opened.notify_waiters();
            (Some(fifo), Some(end_rx))
        } else {
            (input, None)
        };
        // The task's own credentials for its endpoint, after the spec's
        // variables so that these win; refused again once it ends.
        let creds = group
            .endpoint
            .as_ref()
            .map(|ep| ep.issue_guarded(&req.task_id, stage_spec(&req)));
        let mut env = req.env.clone();
        env.extend(creds.iter().flat_map(|c| c.creds.env()));
        if let (Some(_), Some(place)) = (&creds, &req.output_place) {
            // Where `mpipe` and `mtee` write.
            env.push(("INSITU_OUTPUT_PLACE".into(), place.clone()));
        }
        let task = TaskSpec {
            task_id: req.task_id.clone(),
            exec: req.exec.clone(),
            input,
            env,
            timeout: Duration::from_secs(req.timeout_s.max(1)),
            input_end,
        };
        let log = self.logs.open(
            LogLabel {
                tenant: req.tenant.clone(),
                job: req.job.clone(),
                attempt: req.task_id.clone(),
                task: req.task_name.clone(),
                phase: req.phase,
                input: req.input_name.clone(),
            },
            self.runner.stderr_path(&group, &req.task_id),
        );
        let outcome = self.runner.run_task(&group, &task).await;
        // However it ended, its last lines stay readable a while.
        let stderr_path = match &outcome {
            Ok(o) => o.stderr.clone(),
            Err(_) => self.runner.stderr_path(&group, &req.task_id),
        };
        let _ = tokio::task::spawn_blocking(move || log.ended(&stderr_path)).await;
        drop(creds);
        // What the task wrote through its endpoint: dropped (its blobs
        // removed) unless the task succeeds and they go in the answer.
        let mut staged = Staged {
            outputs: Vec::new(),
            store: self.endpoints.as_ref().map(|h| h.store.clone()),
        };
        let mut read_through_endpoint = false;
        if let Some(ep) = &group.endpoint {
            read_through_endpoint = ep.took_reads(&req.task_id);
            staged.outputs = ep
                .take_staged(&req.task_id)
                .map_err(|e| TaskError::Runtime(e.to_string()))?;
        }
        if let Some(slot) = stream_slot {
            slot.finished
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut s) = self.streams.lock() {
                s.remove(&stream_key);
            }
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // A container that stopped under its tasks serves no more:
                // the group's next task gets a fresh one.
                if !self.runner.container_exists(&group.container_id).await
                    || matches!(e, TaskError::Runtime(_))
                {
                    self.retire(&cell, &group).await;
                }
                return Err(e.into());
            }
        };
        let end = match &outcome.end {
            TaskEnd::Exited(code) => TaskEndReport::Exited { code: *code },
            TaskEnd::Killed(r) => TaskEndReport::Killed {
                resource: r.clone(),
            },
            TaskEnd::TimedOut => TaskEndReport::TimedOut,
        };
        let failed = end != TaskEndReport::Exited { code: 0 };
        let task_dir = outcome
            .stdout
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| outcome.stdout.clone());
        let stdout_file = match open_output(&outcome.stdout).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&task_dir).await;
                return Err(e);
            }
        };
        let (stdout_size, stdout_md5, pieces) = match req.split {
            Some(count) if !failed && count > 1 => {
                let names: Vec<String> = (0..count)
                    .map(|r| format!("{}-r{r}", req.stdout_blob))
                    .collect();
                let paths: Vec<std::path::PathBuf> =
                    names.iter().map(|n| store.scratch_path(n)).collect();
                let files = match split_lines(stdout_file, paths.clone()).await {
                    Ok(files) => files,
                    Err(e) => {
                        for p in &paths {
                            let _ = tokio::fs::remove_file(p).await;
                        }
                        let _ = tokio::fs::remove_dir_all(&task_dir).await;
                        return Err(e);
                    }
                };
                let mut pieces = Vec::new();
                let mut total = 0;
                for (reducer, file) in files.into_iter().enumerate() {
                    let Some((file, scratch)) = file else {
                        continue;
                    };
                    let id = names[reducer].clone();
                    let adopted = store.adopt(&id, file).await;
                    // Linked into the store by now (or failed): this name goes.
                    let _ = tokio::fs::remove_file(&scratch).await;
                    let (info, md5) = adopted?;
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
                let (info, md5) = store.adopt(&req.stdout_blob, stdout_file).await?;
                (info.size, md5, Vec::new())
            }
        };
        let stderr_size = if failed {
            match open_output(&outcome.stderr).await {
                Ok(f) => store
                    .adopt(&req.stderr_blob, f)
                    .await
                    .ok()
                    .map(|(info, _)| info.size),
                Err(_) => None,
            }
        } else {
            None
        };
        let stderr_kept = stderr_size.is_some();
        // Nothing reads the task's directory any more: it goes after the
        // answer (a node that stops first has its groups' directories
        // reaped at start).
        tokio::spawn(async move {
            let _ = tokio::fs::remove_dir_all(&task_dir).await;
        });
        if matches!(end, TaskEndReport::Killed { .. } | TaskEndReport::TimedOut) {
            // The container is gone; the group's next task gets a fresh one.
            self.retire(&cell, &group).await;
        }
        let named = match failed {
            true => Vec::new(),
            false => std::mem::take(&mut staged.outputs),
        };
        Ok(TaskResponse {
            named,
            end,
            stdout_size,
            stdout_md5,
            pieces,
            stderr_kept,
            stderr_size: stderr_size.unwrap_or(0),
            stderr_preview: outcome.stderr_preview,
            read_through_endpoint,
            image_id: group.image_id.clone(),
        })
    }

    /// What a job's tasks on this node wrote to stderr past the caller's
    /// offsets.
    pub async fn read_logs(
        &self,
        tenant: &str,
        job: &str,
        req: insitu_node_api::LogRequest,
    ) -> insitu_node_api::LogResponse {
        let (board, tenant, job) = (self.logs.clone(), tenant.to_string(), job.to_string());
        match tokio::task::spawn_blocking(move || board.read(&tenant, &job, &req)).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing to answer with: the caller asks again.
                tracing::error!(error = %e, "reading task logs failed");
                Default::default()
            }
        }
    }

    /// Takes a group whose container is gone out of its slot (unless a
    /// fresh one already took it) and removes what is left of it.
    async fn retire(&self, cell: &Mutex<Option<Group>>, group: &Group) {
        {
            let mut slot = cell.lock().await;
            if slot
                .as_ref()
                .is_some_and(|g| g.container_id == group.container_id)
            {
                *slot = None;
            }
        }
        self.runner.end_group(group).await;
    }

    /// Ends a group: its processes are killed, its container and
    /// directories go.
    pub async fn end_group(&self, tenant: &str, job: &str, phase: u32) -> bool {
        let key = format!("{tenant}/{job}/{phase}");
        let cell = {
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
        let group = match cell {
            Some(cell) => cell.lock().await.take(),
            None => None,
        };
        match group {
            Some(g) => {
                self.runner.retire_group(g).await;
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
        let w = slot.open(&mut writer).await?;
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
        let mut writer = slot.writer.lock().await;
        // Opened (if it was not yet) and closed: the task sees end of file.
        let opened = slot.open(&mut writer).await.map(|_| ());
        *writer = Writer::Ended;
        let _ = slot.end.send(true);
        match opened {
            Ok(()) | Err(StreamError::Ended) | Err(StreamError::ReaderGone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn has_ended(&self, key: &str) -> bool {
        self.ended
            .lock()
            .map(|e| e.0.contains(key))
            .unwrap_or(false)
    }

    /// Removes containers of this node that no live group claims.
    pub async fn reap_unknown(self: &Arc<Self>) -> Result<usize, TaskError> {
        let cells: Vec<_> = self.groups.lock().await.values().cloned().collect();
        let mut live = Vec::new();
        for cell in cells {
            if let Some(g) = cell.lock().await.as_ref() {
                live.push(g.container_id.clone());
            }
        }
        self.runner.reap(|id| live.iter().any(|l| l == id)).await
    }
}

/// Where a task may write named outputs: under its job's output place,
/// up to its output cap, as blobs named after its stdout blob.
fn stage_spec(req: &TaskRequest) -> Option<StageSpec> {
    let (bucket, prefix) = req.output_place.as_deref()?.split_once('/')?;
    let cap_bytes = match req.output_mb {
        0 => Limits::default().max_file_bytes.max(0) as u64,
        mb => mb.saturating_mul(1 << 20),
    };
    Some(StageSpec {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        cap_bytes,
        base_blob: req.stdout_blob.clone(),
        next_reducers: req.next_reducers,
    })
}

/// A task's staged outputs, removed from the store unless taken.
struct Staged {
    outputs: Vec<insitu_node_api::NamedOut>,
    store: Option<Arc<BlobStore>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let (Some(store), false) = (self.store.clone(), self.outputs.is_empty()) else {
            return;
        };
        let blobs: Vec<String> = self
            .outputs
            .drain(..)
            .filter_map(|o| o.staged_blob().map(str::to_string))
            .collect();
        tokio::spawn(async move {
            for b in blobs {
                let _ = store.delete(&b).await;
            }
        });
    }
}

/// Opens a task's output file for the node (see
/// `blob_store::open_task_output`); anything but a plain file is the
/// task's own failure.
async fn open_output(path: &std::path::Path) -> Result<std::fs::File, TaskApiError> {
    let p = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || crate::blob_store::open_task_output(&p))
        .await
        .map_err(|e| TaskApiError::Blob(BlobError::Io(std::io::Error::other(e))))?;
    opened.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => TaskError::BadOutput(e.to_string()).into(),
        _ => TaskApiError::Blob(BlobError::Io(e)),
    })
}

/// Splits a task's stdout line by line into the files `paths` (one per
/// reducer, in the store's scratch directory), by
/// `insitu_job_model::plan::reducer_for_line`; `None` for a piece that got no
/// line. A line is held whole while it is routed, so one longer than
/// [`MAX_KEY_LINE_BYTES`] fails the task.
async fn split_lines(
    stdout: std::fs::File,
    paths: Vec<std::path::PathBuf>,
) -> Result<Vec<Option<(std::fs::File, std::path::PathBuf)>>, TaskApiError> {
    let count = paths.len() as u32;
    let result = tokio::task::spawn_blocking(move || -> Result<_, TaskApiError> {
        use std::io::{BufRead, Read, Seek, Write};
        let io = |e: std::io::Error| TaskApiError::Blob(BlobError::Io(e));
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, stdout);
        let mut writers: Vec<Option<std::io::BufWriter<std::fs::File>>> =
            (0..count).map(|_| None).collect();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            number += 1;
            let read = (&mut reader)
                .take(MAX_KEY_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(io)?;
            if read == 0 {
                break;
            }
            if line.len() > MAX_KEY_LINE_BYTES {
                return Err(TaskApiError::Task(TaskError::BadOutput(format!(
                    "output line {number} is longer than {MAX_KEY_LINE_BYTES} bytes, \
                     the most a line routed by key may have"
                ))));
            }
            let r = insitu_job_model::plan::reducer_for_line(&line, count) as usize;
            if writers[r].is_none() {
                let f = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&paths[r])
                    .map_err(io)?;
                writers[r] = Some(std::io::BufWriter::with_capacity(64 * 1024, f));
            }
            if let Some(w) = writers[r].as_mut() {
                w.write_all(&line).map_err(io)?;
            }
        }
        let mut out = Vec::with_capacity(count as usize);
        for (w, path) in writers.into_iter().zip(&paths) {
            match w {
                Some(w) => {
                    let mut f = w.into_inner().map_err(|e| io(e.into_error()))?;
                    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                    out.push(Some((f, path.clone())));
                }
                None => out.push(None),
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| TaskApiError::Blob(BlobError::Io(std::io::Error::other(e))))?;
    result
}
