//! Runs tasks in hardened Docker containers on this node, next to the data.
//!
//! One container per (job, phase) group runs that group's tasks, started
//! by a resident launcher that is the container's own process (a Docker
//! exec would cost ~50–60 ms more per container).
//! Inputs are hard links of the node's blob files in the group's read-only
//! `in/` directory: no copy, and the bytes stay alive for the task even if
//! the object is deleted meanwhile. Each task writes stdout and stderr to
//! files in its own directory under the group's writable `out/` mount
//! (measured: ~4x faster than streaming stdout through attach). Docker
//! cannot kill one process of a container cleanly, so a timeout or kill
//! destroys the container.
//!
//! This module owns containers; nothing else talks to Docker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::{
    AttachContainerOptions, AttachContainerResults, Config, CreateContainerOptions,
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::models::{
    HostConfig, HostConfigLogConfig, ImageInspect, Mount, MountTypeEnum, ResourcesUlimits,
};
use bollard::Docker;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use thiserror::Error;

use crate::image_archive::{self, ArchiveError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Mutex};

/// Labels on every task container, so a restarted node can find and reap
/// the containers it no longer owns.
pub const LABEL_NODE: &str = "insitu.node";
pub const LABEL_TENANT: &str = "insitu.tenant";
pub const LABEL_JOB: &str = "insitu.job";
pub const LABEL_PHASE: &str = "insitu.phase";
pub const LABEL_GROUP: &str = "insitu.group";
/// The node's task directory: unique per node on a host, even across
/// clusters that reuse node ids, so a node reaps only its own containers.
pub const LABEL_ROOT: &str = "insitu.root";
/// The container's own directory under the node's task directory.
pub const LABEL_DIR: &str = "insitu.dir";

/// The unprivileged user tasks run as (`nobody`).
const TASK_USER: &str = "65534:65534";
const TASK_UID: u32 = 65534;
/// Inside the container: inputs (read-only) and outputs (writable).
const IN_DIR: &str = "/insitu/in";
const OUT_DIR: &str = "/insitu/out";
const ASSETS_DIR: &str = "/insitu/assets";
use crate::task_endpoint::{SOCKET_DIR_INSIDE, SOCKET_INSIDE, TASK_S3_PORT, TOOLS_DIR_INSIDE};
/// stderr kept in memory per task (the file itself is kept whole).
const STDERR_PREVIEW_BYTES: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("the container engine is unavailable: {0}")]
    EngineUnavailable(String),
    #[error("image {0} is not available and could not be pulled")]
    ImageNotFound(String),
    #[error("container runtime error: {0}")]
    Runtime(String),
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("{0}")]
    InitFailed(String),
    #[error("the task's output is unusable: {0}")]
    BadOutput(String),
    #[error("the task's group {0} has ended")]
    GroupEnded(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<bollard::errors::Error> for TaskError {
    fn from(e: bollard::errors::Error) -> Self {
        TaskError::Runtime(e.to_string())
    }
}

/// Resource limits of a group's container.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    /// Processes (and threads) the tasks may run at once. Under gVisor
    /// the host sees the sandbox's threads, not the task's processes, so
    /// this becomes the sandbox's own `RLIMIT_NPROC` ([`Limits::gvisor`]).
    pub pids: i64,
    /// Size of the `/tmp` scratch space: a loop-mounted filesystem of its
    /// own (a hard byte quota) where the host can make one, else a tmpfs
    /// (which counts against memory, so at most half of it).
    pub scratch_mb: u64,
    pub open_files: i64,
    /// Largest file a task may write (`fsize` ulimit), bytes.
    pub max_file_bytes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            cpus: 1.0,
            pids: 512,
            scratch_mb: 64,
            open_files: 1024,
            max_file_bytes: 1 << 30,
        }
    }
}

/// A (job, phase) group: one container for its tasks on this node.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub tenant: String,
    pub job: String,
    pub phase: u32,
    pub image: String,
    pub limits: Limits,
    /// `runc` (default) or `runsc` (gVisor).
    pub runtime: Option<String>,
    /// The phase's assets: a `bucket/key` path (checked by
    /// `insitu_job_model::spec::check_asset`) and the blob file holding it.
    pub assets: Vec<(String, PathBuf)>,
    /// The task tools and the group's endpoint socket, when the node has
    /// the tools.
    pub tools: Option<ToolMounts>,
}

/// Mounted read-only into a task container: the directory of the task
/// tools at `/insitu/bin`, and that of its endpoint's socket at
/// `/insitu/sock`. The container's first process is then the tools'
/// relay (`insitu-task relay`), which also reaps orphans.
#[derive(Debug, Clone)]
pub struct ToolMounts {
    pub bin: PathBuf,
    pub socket_dir: PathBuf,
}

impl Limits {
    /// Under gVisor: the limit on the task's processes, enforced by the
    /// sandbox's kernel (a refused fork, as under runc), and the host pids
    /// limit of the sandbox. Measured with runsc 20221219 (ptrace
    /// platform): each guest process costs the sandbox about 9 host
    /// threads and 0.9 MiB of host memory, and a sandbox at its host pids
    /// limit dies. So the host limit leaves room for 12 threads a process
    /// plus the sandbox's own, and the guest limit is also held to one
    /// process per 2 MiB of memory (but at least 32), so a fork bomb meets
    /// the refused fork before the memory limit.
    pub fn gvisor(&self) -> (u64, i64) {
        let guest = (self.pids.max(1) as u64).min((self.memory_mb / 2).max(32));
        // The launcher runs outside the tasks' limit (a fork bomb must not
        // stop it starting the next task): room for a few of its own.
        (guest, (guest as i64 + 8) * 12 + 256)
    }
}

impl GroupSpec {
    fn under_gvisor(&self) -> bool {
        self.runtime.as_deref() == Some("runsc")
    }

    fn group_id(&self) -> String {
        format!("{}-{}-p{}", self.tenant, self.job, self.phase)
    }
}

#[derive(Clone)]
pub struct Group {
    pub container_id: String,
    pub group_id: String,
    dir: PathBuf,
    launcher: Arc<Launcher>,
    /// The `fsize` limit: a task whose stdout reaches it was stopped.
    max_file_bytes: u64,
    /// The container's cgroup file that counts OOM kills (cgroup v1
    /// `memory.oom_control` or v2 `memory.events`), when found.
    oom_file: Option<PathBuf>,
    /// The container's `pids.events` (its `max` count grows each time a
    /// fork is refused for the pids limit), when found.
    pids_file: Option<PathBuf>,
    /// Under runc, the container's process list (`cgroup.procs`) and the
    /// processes that belong there between tasks (its init and the
    /// launcher): anything else left when no task runs is a stray a task
    /// left behind (`setsid sleep 1000 &`), and is killed.
    strays: Option<(PathBuf, Vec<i32>)>,
    /// Under runc, a pidfd of the container's init: signalling it kills
    /// every process of the container at once (they share its pid
    /// namespace), with no engine call and no pid reuse to fear.
    init: Option<Arc<std::os::fd::OwnedFd>>,
    /// Held shared by running tasks; the stray sweep takes it alone.
    activity: Arc<tokio::sync::RwLock<()>>,
    /// Tasks running in the container now.
    running: Arc<std::sync::atomic::AtomicUsize>,
    /// Under gVisor, the task processes' limit inside the sandbox.
    guest_nproc: Option<u64>,
    /// The node's room held for this container's scratch space, given
    /// back when the last handle on the group goes.
    pub(crate) room: Option<Arc<crate::blob_store::Reservation>>,
    /// The group's task endpoint: its socket is served while the group
    /// lives.
    pub(crate) endpoint: Option<Arc<crate::task_endpoint::TaskEndpoint>>,
    /// The task tools are mounted: `/insitu/bin` goes first on the PATH.
    has_tools: bool,
    /// The content id of the image the container was made from.
    pub image_id: String,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("container_id", &self.container_id)
            .field("group_id", &self.group_id)
            .finish()
    }
}

/// The resident launcher of a group: the container's own process (under
/// its init), reading task ids on stdin and starting each task as a child
/// process, then answering `<task> <exit status> <processes>` on stdout
/// (the threads in the container as the task ended, counted under gVisor
/// only, where the node needs them; 0 otherwise). A task then
/// costs a process start inside the container instead of a Docker exec
/// (measured here: ~50–60 ms each).
struct Launcher {
    input: Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    waiters: Waiters,
}

impl Launcher {
    /// Registers a waiter for the answer named `name`; an error once the
    /// launcher is gone.
    fn expect(&self, name: &str, tx: oneshot::Sender<Answer>) -> Result<(), TaskError> {
        self.waiters
            .lock()
            .ok()
            .and_then(|mut w| w.as_mut().map(|w| w.insert(name.to_string(), tx)))
            .map(|_| ())
            .ok_or_else(|| TaskError::Runtime("the task container has stopped".into()))
    }
}

/// The longest line the launcher answers with: anything longer is not
/// its answer.
const MAX_ANSWER_LINE: usize = 4096;

/// The launcher's first line, once it reads tasks.
const LAUNCHER_READY: &str = "__ready";
/// How long a container's launcher may take to start (a gVisor sandbox
/// boots first).
const LAUNCHER_START: Duration = Duration::from_secs(60);

/// The launcher's answer for one task.
#[derive(Debug, Clone, Copy)]
struct Answer {
    code: i64,
    /// Threads of the task user in the container when the task ended.
    procs: Option<u64>,
}

/// Who waits for which answer; `None` once the launcher or the container
/// is gone (every waiter then gets an error).
type Waiters = Arc<std::sync::Mutex<Option<HashMap<String, oneshot::Sender<Answer>>>>>;

/// The launcher, run by `/bin/sh -c` as the task user. Each task's
/// environment (with `INSITU_EXEC` and `INSITU_INPUT_FILE`) is in its
/// directory's `env` file, written by the node.
/// Its own variables are `INSITU_`-named, which a spec's `env` cannot set.
/// `__sweep` kills every process but the container's init and the
/// launcher, with shell builtins only (no process is started for it): how
/// strays are removed where the host cannot see the task processes (gVisor).
/// `__count-<n>` answers how many threads the container runs, also with
/// builtins only, so it answers even when a fork bomb holds every slot.
/// `__seal-<task>` kills every process that still holds the task's stdout
/// or stderr open (how `seal_outputs` works under gVisor), answering how
/// many it found.
const LAUNCHER: &str = r#"insitu_count() {
  INSITU_N=0
  for INSITU_P in /proc/[0-9]*/task/[0-9]*; do INSITU_N=$((INSITU_N + 1)); done
}
echo "__ready 0"
while read -r INSITU_T; do
  if [ "$INSITU_T" = __sweep ]; then
    for INSITU_P in /proc/[0-9]*; do
      INSITU_P=${INSITU_P#/proc/}
      [ "$INSITU_P" = 1 ] || [ "$INSITU_P" = $$ ] || kill -9 "$INSITU_P" 2>/dev/null
    done
    echo "__sweep 0"
    continue
  fi
  case "$INSITU_T" in __count-*)
    insitu_count; echo "$INSITU_T 0 $INSITU_N"
    continue
  esac
  case "$INSITU_T" in __seal-*)
    INSITU_D=/insitu/out/${INSITU_T#__seal-}
    INSITU_N=0
    for INSITU_F in /proc/[0-9]*/fd/*; do
      if [ "$INSITU_F" -ef "$INSITU_D/stdout" ] || [ "$INSITU_F" -ef "$INSITU_D/stderr" ]; then
        INSITU_P=${INSITU_F#/proc/}; INSITU_P=${INSITU_P%%/*}
        [ "$INSITU_P" = 1 ] || [ "$INSITU_P" = $$ ] || { kill -9 "$INSITU_P" 2>/dev/null; INSITU_N=$((INSITU_N + 1)); }
      fi
    done
    echo "$INSITU_T 0 $INSITU_N"
    continue
  esac
  INSITU_D=/insitu/out/$INSITU_T
  (
    if [ -n "$INSITU_NPROC" ] && ! ulimit -u "$INSITU_NPROC" 2>/dev/null; then
      echo "insitu: this image's /bin/sh cannot set the process limit (ulimit -u) gVisor tasks need" >"$INSITU_D/stderr"
      echo "$INSITU_T 125 0"; exit
    fi
    cd /tmp && . "$INSITU_D/env" && /bin/sh -c "$INSITU_EXEC" <"$INSITU_INPUT_FILE" >"$INSITU_D/stdout" 2>"$INSITU_D/stderr"
    INSITU_S=$?; INSITU_N=0; [ -z "$INSITU_NPROC" ] || insitu_count
    echo "$INSITU_T $INSITU_S $INSITU_N"
  ) &
done"#;

/// Quotes a value for a POSIX shell: inside single quotes, with each
/// single quote closed, escaped and reopened.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// `[A-Za-z0-9_-]`, unique within the group.
    pub task_id: String,
    /// Run by `/bin/sh -c`.
    pub exec: String,
    /// The input blob file on this node, if the task has one.
    pub input: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// For a task whose input is a pipe fed while it runs: becomes true
    /// when the input is complete, and the timeout counts from then.
    pub input_end: Option<tokio::sync::watch::Receiver<bool>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    Exited(i64),
    /// Killed for a resource; the container is gone.
    Killed(String),
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub end: TaskEnd,
    /// The task's stdout and stderr, files on this node that nothing of
    /// the task holds or can open (the node's copies of a task that
    /// exited; of one stopped otherwise, the files of a container that is
    /// gone): they can be taken over as they are.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub stderr_preview: String,
}

pub struct TaskRunner {
    docker: Docker,
    node_id: String,
    root: PathBuf,
}

fn check_token(what: &str, v: &str) -> Result<(), TaskError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TaskError::Invalid(format!(
            "{what} {v:?} must be 1-128 of [A-Za-z0-9_-]"
        )))
    }
}

impl TaskRunner {
    /// The node's directory of task containers.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Connects to the local engine, negotiating the API version (Debian's
    /// engine speaks 1.41).
    pub async fn connect(node_id: &str, root: &Path) -> Result<Self, TaskError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| TaskError::EngineUnavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| TaskError::EngineUnavailable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| TaskError::EngineUnavailable(e.to_string()))?;
        tokio::fs::create_dir_all(root).await?;
        // Bind mounts need absolute paths.
        let root = tokio::fs::canonicalize(root).await?;
        Ok(Self {
            docker,
            node_id: node_id.to_string(),
            root,
        })
    }

    /// Makes `image` present (pulled if missing); returns its content
    /// id (`sha256:...`).
    pub async fn ensure_image(&self, image: &str) -> Result<String, TaskError> {
        Ok(self.present_image(image).await?.id.unwrap_or_default())
    }

    /// Makes `image` present: local, or pulled from its registry; returns
    /// what the engine says of it.
    async fn present_image(&self, image: &str) -> Result<ImageInspect, TaskError> {
        // Only a tag or digest of that name counts: the engine also takes
        // a name as the start of an image id, which would find an image
        // another tenant loaded from a private object.
        if let Ok(i) = self.docker.inspect_image(image).await {
            if names_image(&i, image) {
                return Ok(i);
            }
        }
        let opts = bollard::image::CreateImageOptions {
            from_image: image,
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                tracing::info!(image, error = %e, "image pull failed");
                return Err(TaskError::ImageNotFound(image.to_string()));
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(i) if names_image(&i, image) => Ok(i),
            _ => Err(TaskError::ImageNotFound(image.to_string())),
        }
    }

    /// The volumes an image declares (`VOLUME`), checked: the engine
    /// would back each with a fresh volume on the host's disk, outside the
    /// scratch quota and writable past the read-only root, so each is
    /// replaced by a mount of the node's ([`volume_mounts`]). One at or
    /// inside the task's own mounts (or at the root) is refused: the
    /// engine would make its mount point in the node's directories.
    fn image_volumes(image: &str, inspect: &ImageInspect) -> Result<Vec<String>, TaskError> {
        let mut volumes: Vec<String> = inspect
            .config
            .as_ref()
            .and_then(|c| c.volumes.as_ref())
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default();
        volumes.sort();
        for v in &volumes {
            // As the engine cleans it: `//insitu/./out` is `/insitu/out`.
            let path = Path::new(v);
            let plain = path.is_absolute()
                && path.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            let clean: PathBuf = path.components().collect();
            let ours = [IN_DIR, OUT_DIR, "/insitu", "/tmp"]
                .iter()
                .any(|m| clean.starts_with(m));
            if !plain || ours || clean == Path::new("/") {
                return Err(TaskError::ImageNotFound(format!(
                    "{image} declares the volume {v:?}, which a task container cannot have"
                )));
            }
        }
        Ok(volumes)
    }

    /// Feeds an image archive to the engine; returns what it reports
    /// loading (names and ids).
    async fn load_image_stream(
        &self,
        body: impl futures::Stream<Item = bytes::Bytes> + Send + 'static,
    ) -> Result<Vec<String>, TaskError> {
        let opts = bollard::image::ImportImageOptions { quiet: true };
        let mut progress = self.docker.import_image_stream(opts, body, None);
        let mut names = Vec::new();
        while let Some(step) = progress.next().await {
            let info =
                step.map_err(|e| TaskError::ImageNotFound(format!("image tarball rejected: {e}")))?;
            if let Some(err) = info.error {
                return Err(TaskError::ImageNotFound(format!(
                    "image tarball rejected: {err}"
                )));
            }
            for line in info.stream.unwrap_or_default().lines() {
                if let Some(name) = line.strip_prefix("Loaded image: ") {
                    names.push(name.trim().to_string());
                } else if let Some(id) = line.strip_prefix("Loaded image ID: ") {
                    names.push(id.trim().to_string());
                }
            }
        }
        Ok(names)
    }

    /// The node-private name of the image loaded from blob `key`. The
    /// node's task directory is in it (hashed): nodes sharing one engine
    /// (`insitu dev`, or two clusters on one machine) each keep their own,
    /// so one node dropping its copy leaves the others'.
    fn private_image(&self, key: &str) -> String {
        format!(
            "{}{}:latest",
            self.private_prefix(),
            key.to_ascii_lowercase()
        )
    }

    fn private_prefix(&self) -> String {
        let root = insitu_job_model::plan::stable_hash(self.root.to_string_lossy().as_bytes());
        format!("insitu-loaded/n{root:016x}-")
    }

    /// Untags the image loaded from blob `key` (its blob is gone).
    pub async fn remove_private_image(&self, key: &str) {
        let name = self.private_image(key);
        let removed = self
            .docker
            .remove_image(
                &name,
                // Untags even while a container uses the image; the engine
                // keeps the image itself until that container goes.
                Some(bollard::image::RemoveImageOptions {
                    force: true,
                    noprune: false,
                }),
                None,
            )
            .await;
        match removed {
            Ok(_) => tracing::info!(image = %name, "image of a deleted object removed"),
            Err(e) => tracing::debug!(image = %name, error = %e, "image not removed"),
        }
    }

    /// The blob keys of the images this node loaded from objects.
    pub async fn private_images(&self) -> Result<Vec<String>, TaskError> {
        let prefix = self.private_prefix();
        let images = self
            .docker
            .list_images(None::<bollard::image::ListImagesOptions<String>>)
            .await?;
        Ok(images
            .iter()
            .flat_map(|i| i.repo_tags.iter())
            .filter_map(|t| t.strip_prefix(&prefix)?.strip_suffix(":latest"))
            .map(str::to_string)
            .collect())
    }

    /// Loads an image tarball under a node-private name only
    /// (`insitu-loaded/n<node>-<key>:latest`, which specs cannot name). The
    /// archive reaches the engine with its tags removed
    /// ([`crate::image_archive`]), so a tenant's tarball never names, even
    /// for a moment, an image other tenants' jobs use.
    pub async fn load_image_private(&self, tarball: &Path, key: &str) -> Result<String, TaskError> {
        check_token("image key", key)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let path = tarball.to_path_buf();
        let rewrite = tokio::task::spawn_blocking(move || image_archive::send_untagged(&path, &tx));
        let body =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let loaded = self.load_image_stream(body).await;
        let id = match rewrite.await {
            Err(e) => return Err(TaskError::Runtime(e.to_string())),
            Ok(Err(ArchiveError::Closed)) => {
                loaded?;
                return Err(TaskError::ImageNotFound(
                    "the engine stopped reading the image tarball".into(),
                ));
            }
            Ok(Err(ArchiveError::Io(e))) => return Err(TaskError::Io(e)),
            Ok(Err(e @ ArchiveError::Refused(_))) => {
                return Err(TaskError::ImageNotFound(e.to_string()))
            }
            Ok(Ok(id)) => id,
        };
        let names = loaded?;
        tracing::debug!(?names, "image tarball loaded");
        // The archive reached the engine without tags: a name it reports
        // anyway is one a tarball got past the rewrite. Take it back.
        if let Some(tag) = names.iter().find(|n| !n.starts_with("sha256:")) {
            tracing::warn!(image = %tag, "an image tarball applied a tag; removing it");
            for tag in names.iter().filter(|n| !n.starts_with("sha256:")) {
                let _ = self
                    .docker
                    .remove_image(
                        tag,
                        Some(bollard::image::RemoveImageOptions {
                            force: true,
                            noprune: true,
                        }),
                        None,
                    )
                    .await;
            }
            return Err(TaskError::ImageNotFound(format!(
                "the tarball applied the tag {tag}; refused"
            )));
        }
        if !names.contains(&id) {
            return Err(TaskError::ImageNotFound(format!(
                "the engine did not report loading {id}"
            )));
        }
        let name = self.private_image(key);
        let repo = name.trim_end_matches(":latest");
        self.docker
            .tag_image(
                &id,
                Some(bollard::image::TagImageOptions {
                    repo: repo.to_string(),
                    tag: "latest".to_string(),
                }),
            )
            .await?;
        Ok(name)
    }

    /// Creates and starts the hardened container of a group.
    pub async fn start_group(&self, spec: &GroupSpec) -> Result<Group, TaskError> {
        check_token("tenant", &spec.tenant)?;
        check_token("job", &spec.job)?;
        let t0 = std::time::Instant::now();
        let step = |what: &str| {
            tracing::debug!(
                step = what,
                us = t0.elapsed().as_micros() as u64,
                "group start"
            )
        };
        // One look at the image for its id and its volumes.
        let image = self.present_image(&spec.image).await?;
        let image_id = image.id.clone().unwrap_or_default();
        let volumes = Self::image_volumes(&spec.image, &image)?;
        step("image");
        let group_id = spec.group_id();
        // Each container gets its own directory (and name): a group whose
        // container was destroyed can start again while the old one goes.
        let dir_name = format!(
            "{group_id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let dir = self.root.join(&dir_name);
        let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
        tokio::fs::create_dir_all(&in_dir).await?;
        tokio::fs::create_dir_all(&out_dir).await?;
        let assets_dir = dir.join("assets");
        link_assets(&assets_dir, &spec.assets).await?;
        // The node's: a task writes only the two files the node makes for
        // it (each capped by `fsize`), so output space is bounded and no
        // task can swap a file for a link.

        let guest_nproc = spec.under_gvisor().then(|| spec.limits.gvisor().0);
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), self.node_id.clone()),
            (
                LABEL_ROOT.to_string(),
                self.root.to_string_lossy().into_owned(),
            ),
            (LABEL_TENANT.to_string(), spec.tenant.clone()),
            (LABEL_JOB.to_string(), spec.job.clone()),
            (LABEL_PHASE.to_string(), spec.phase.to_string()),
            (LABEL_GROUP.to_string(), group_id.clone()),
            (LABEL_DIR.to_string(), dir_name.clone()),
        ]);
        // The scratch filesystem is made while the engine creates the
        // container: its mount point is there first, and the mount is in
        // place before the container starts. Where the host cannot (no
        // loop devices, not root), the container is made again with a
        // tmpfs.
        let scratch_dir = dir.join("scratch");
        let loop_scratch = tokio::fs::create_dir(&scratch_dir).await.is_ok();
        let making = loop_scratch.then(|| {
            let (dir, mb) = (dir.clone(), spec.limits.scratch_mb);
            tokio::task::spawn_blocking(move || make_scratch(&dir, mb))
        });
        // An image's volumes are directories made in the mounted scratch
        // file system (`volume_mounts`): for such an image it comes first.
        let (making, mut scratch) = match making {
            Some(job) if !volumes.is_empty() => (None, job.await.ok().flatten()),
            making => (making, None),
        };
        let first_scratch =
            (making.is_some() || scratch.is_some()).then_some(scratch_dir.as_path());
        let name = format!("insitu-{}-{}", self.node_id, dir_name);
        let create = |scratch: Option<&Path>, name: String| {
            let config = container_config(spec, &dir, scratch, &volumes, labels.clone());
            let options = CreateContainerOptions {
                name,
                platform: None,
            };
            async move { self.docker.create_container(Some(options), config).await }
        };
        let mut created = create(first_scratch, name.clone()).await;
        if let Some(job) = making {
            scratch = job.await.ok().flatten();
        }
        if first_scratch.is_some() && scratch.is_none() {
            if let Ok(c) = &created {
                self.remove(&c.id).await;
            }
            // Its own name, should that removal not be over.
            created = create(None, format!("{name}-tmpfs")).await;
        }
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                drop_dir(&dir).await;
                return Err(e.into());
            }
        };
        step("create");
        let started = async {
            // Attached before it starts: no answer is missed.
            let launcher = self.attach_launcher(&created.id).await?;
            let (tx, ready) = oneshot::channel();
            launcher.expect(LAUNCHER_READY, tx)?;
            self.docker
                .start_container::<String>(&created.id, None)
                .await?;
            self.watch_stop(&created.id, &launcher);
            step("start");
            match tokio::time::timeout(LAUNCHER_START, ready).await {
                Ok(Ok(_)) => Ok(launcher),
                _ => Err(TaskError::Runtime(
                    "the task container's launcher did not start".into(),
                )),
            }
        }
        .await;
        let launcher = match started {
            Ok(l) => l,
            Err(e) => {
                self.remove(&created.id).await;
                drop_dir(&dir).await;
                return Err(e);
            }
        };
        step("launcher");
        let init_pid = self
            .docker
            .inspect_container(&created.id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.pid);
        let oom_file = init_pid.and_then(oom_counter_file);
        let pids_file = init_pid.and_then(pids_counter_file);
        // Under gVisor the host sees the sandbox, not the task processes.
        // Before any task, the container's processes are its init and the
        // launcher: those a sweep keeps.
        let strays = match (&oom_file, init_pid, spec.runtime.as_deref()) {
            (Some(f), Some(init), None | Some("runc")) => {
                let procs = f.with_file_name("cgroup.procs");
                let keep: Vec<i32> = std::fs::read_to_string(&procs)
                    .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
                    .unwrap_or_default();
                if keep.len() == 2 && keep.contains(&(init as i32)) {
                    Some((procs, keep))
                } else {
                    // The image's shell started something of its own: the
                    // launcher sweeps instead (it is the tenant's anyway).
                    tracing::warn!(container = %created.id, ?keep, "unexpected processes at the container's start; the launcher sweeps");
                    None
                }
            }
            _ => None,
        };
        step("inspect");
        if oom_file.is_none() {
            tracing::warn!(container = %created.id, "cannot find the container's OOM counter; relying on the engine's OOMKilled flag");
        }
        tracing::info!(node = %self.node_id, group = %group_id, container = %created.id, "task container started");
        let init = match spec.runtime.as_deref() {
            None | Some("runc") => init_pid.and_then(|p| init_pidfd(p, &created.id)),
            _ => None,
        };
        Ok(Group {
            container_id: created.id,
            group_id,
            dir,
            launcher: Arc::new(launcher),
            max_file_bytes: spec.limits.max_file_bytes.max(0) as u64,
            oom_file,
            pids_file,
            strays,
            init,
            activity: Default::default(),
            running: Default::default(),
            guest_nproc,
            room: None,
            endpoint: None,
            has_tools: spec.tools.is_some(),
            image_id,
        })
    }

    /// Attaches to the launcher (the container's process), and starts the
    /// task that reads its answers.
    async fn attach_launcher(&self, container: &str) -> Result<Launcher, TaskError> {
        let AttachContainerResults { mut output, input } = self
            .docker
            .attach_container(
                container,
                Some(AttachContainerOptions::<String> {
                    stdin: Some(true),
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    logs: Some(false),
                    detach_keys: None,
                }),
            )
            .await?;
        let waiters: Waiters = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let answers = waiters.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = output.next().await {
                let bollard::container::LogOutput::StdOut { message } = chunk else {
                    continue;
                };
                buf.extend_from_slice(&message);
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let mut parts = line.split_whitespace();
                    let (Some(task), Some(code)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let answer = Answer {
                        code: code.parse::<i64>().unwrap_or(-1),
                        procs: parts.next().and_then(|n| n.parse().ok()),
                    };
                    let waiter = answers
                        .lock()
                        .ok()
                        .and_then(|mut w| w.as_mut().and_then(|w| w.remove(task)));
                    if let Some(tx) = waiter {
                        let _ = tx.send(answer);
                    }
                }
                if buf.len() > MAX_ANSWER_LINE {
                    // Not the launcher's: a process of a task writing to
                    // the launcher's stdout, which is not held in memory.
                    tracing::warn!("the launcher's output is not answers; its tasks fail");
                    break;
                }
            }
            // The launcher is gone (the container stopped): nobody waits
            // for an answer that cannot come.
            if let Ok(mut w) = answers.lock() {
                w.take();
            }
        });
        Ok(Launcher {
            input: Mutex::new(input),
            waiters,
        })
    }

    /// Fails every task waiting on `launcher` once its container stops (the
    /// engine may never end a stream whose gVisor sandbox died). Only for
    /// a started container: the engine's wait ends at once for one not yet
    /// running.
    fn watch_stop(&self, container: &str, launcher: &Launcher) {
        let (docker, id, waiters) = (
            self.docker.clone(),
            container.to_string(),
            launcher.waiters.clone(),
        );
        tokio::spawn(async move {
            loop {
                let _ = docker.wait_container::<String>(&id, None).next().await;
                let stopped = match docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                {
                    Ok(c) => c.state.and_then(|s| s.running) == Some(false),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => true,
                    // The engine is busy or restarting: look again.
                    Err(_) => false,
                };
                if stopped {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Ok(mut w) = waiters.lock() {
                w.take();
            }
        });
    }

    /// Kills what tasks left running in a group's container once none
    /// runs (processes started with `setsid ... &` outlive their task).
    async fn sweep_strays(&self, group: &Group) {
        let Some((procs, keep)) = &group.strays else {
            // The host cannot see the processes: the launcher sweeps.
            let _ = ask_launcher(group, "__sweep", Duration::from_secs(10)).await;
            return;
        };
        let Ok(text) = std::fs::read_to_string(procs) else {
            return;
        };
        let mut killed = 0;
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if keep.contains(&pid) {
                continue;
            }
            let target = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        if killed > 0 {
            tracing::info!(group = %group.group_id, killed, "killed processes a task left behind");
        }
    }

    /// Takes what an ended task wrote to its stdout and stderr, so that
    /// nothing of the task can change it afterwards, and returns the
    /// node's copies (`stdout.sealed`, `stderr.sealed`).
    ///
    /// Each file is copied as it is (no further than its size when the
    /// copy begins) into a new file of the node's that no process of the
    /// container ever held, and the original is then closed to new opens:
    /// whatever a process the task left writes from then on reaches only
    /// the originals, however it holds them (a second descriptor, or one
    /// in flight in a Unix socket). A write racing the copy may or may not
    /// be in it, as if made just before. Every process still holding an
    /// original is then killed; a container where that cannot be made
    /// sure goes, with everything in it (the copies stand). The copy is
    /// made however quiet the container looks: its launcher runs the
    /// image's own shell, which may hold a task's files.
    async fn seal_outputs(
        &self,
        group: &Group,
        task_id: &str,
        task_out: &Path,
    ) -> Result<(PathBuf, PathBuf), TaskError> {
        use std::os::unix::fs::MetadataExt;
        let originals = [task_out.join("stdout"), task_out.join("stderr")];
        let mut files = Vec::new();
        for path in &originals {
            let m = std::fs::symlink_metadata(path)?;
            files.push((m.dev(), m.ino()));
        }
        let taken = tokio::task::spawn_blocking(move || {
            let take = |path: &PathBuf| {
                let copy = snapshot_output(path)?;
                close_to_opens(path)?;
                Ok::<_, std::io::Error>(copy)
            };
            let [stdout, stderr] = &originals;
            take(stdout).and_then(|o| Ok((o, take(stderr)?)))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        let (stdout, stderr) = match taken {
            Ok(t) => t,
            Err(e) => {
                self.remove(&group.container_id).await;
                return Err(TaskError::Runtime(format!(
                    "cannot take the task's output ({e}); its container was removed"
                )));
            }
        };
        const PASSES: usize = 200;
        let deadline = std::time::Instant::now() + SEAL_BUDGET;
        for _ in 0..PASSES {
            if std::time::Instant::now() > deadline {
                break;
            }
            let found = match &group.strays {
                Some((procs, keep)) => {
                    let (procs, keep, files) = (procs.clone(), keep.clone(), files.clone());
                    tokio::task::spawn_blocking(move || {
                        kill_holders(&procs, &keep, &files, deadline)
                    })
                    .await
                    .ok()
                    .flatten()
                }
                None => {
                    let ask = format!("__seal-{task_id}");
                    ask_launcher(group, &ask, Duration::from_secs(5))
                        .await
                        .and_then(|a| a.procs)
                }
            };
            match found {
                Some(0) => return Ok((stdout, stderr)),
                Some(n) => {
                    tracing::info!(group = %group.group_id, task = %task_id, killed = n, "killed processes still holding an ended task's output");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => break,
            }
        }
        tracing::warn!(group = %group.group_id, task = %task_id, "processes of the task kept its output open; its container is removed");
        self.remove(&group.container_id).await;
        Ok((stdout, stderr))
    }

    /// Runs one task in its group's container and waits for it.
    pub async fn run_task(&self, group: &Group, task: &TaskSpec) -> Result<TaskOutcome, TaskError> {
        check_token("task", &task.task_id)?;
        let outcome = {
            let _running = group.activity.read().await;
            use std::sync::atomic::Ordering;
            group.running.fetch_add(1, Ordering::SeqCst);
            let outcome = self.run_task_inner(group, task).await;
            group.running.fetch_sub(1, Ordering::SeqCst);
            if task.input.is_some() {
                let _ = tokio::fs::remove_file(group.dir.join("in").join(&task.task_id)).await;
            }
            outcome
        };
        // The last task out sweeps; a task starting meanwhile waits for it.
        if let Ok(_alone) = group.activity.try_write() {
            self.sweep_strays(group).await;
        }
        outcome
    }

    async fn run_task_inner(
        &self,
        group: &Group,
        task: &TaskSpec,
    ) -> Result<TaskOutcome, TaskError> {
        let task_out = group.dir.join("out").join(&task.task_id);
        let input_inside = match &task.input {
            Some(_) => format!("{IN_DIR}/{}", task.task_id),
            None => "/dev/null".to_string(),
        };
        let mut env: Vec<(String, String)> = task.env.clone();
        env.push(("INSITU_INPUT_FILE".into(), input_inside));
        env.push(("INSITU_EXEC".into(), task.exec.clone()));
        let mut script = String::new();
        for (k, v) in &env {
            script.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        if group.has_tools {
            script.push_str(&format!(
                "export PATH=\"{TOOLS_DIR_INSIDE}:${{PATH:-/usr/local/bin:/usr/bin:/bin}}\"\n"
            ));
        }
        let input_link = task
            .input
            .as_ref()
            .map(|blob| (blob.clone(), group.dir.join("in").join(&task.task_id)));
        let dir = task_out.clone();
        // One trip to the blocking pool for the task's files.
        tokio::task::spawn_blocking(move || prepare_task_files(&dir, input_link, &script))
            .await
            .map_err(|e| TaskError::Runtime(e.to_string()))??;
        let stdout = task_out.join("stdout");
        let ooms_before = group.oom_file.as_deref().and_then(oom_kills);
        let forks_refused_before = group.pids_file.as_deref().and_then(pids_max_hits);
        let memory_hits_before = group.oom_file.as_deref().and_then(memory_limit_hits);
        let (tx, rx) = oneshot::channel();
        group.launcher.expect(&task.task_id, tx)?;
        {
            let mut input = group.launcher.input.lock().await;
            let line = format!("{}\n", task.task_id);
            if let Err(e) = async {
                input.write_all(line.as_bytes()).await?;
                input.flush().await
            }
            .await
            {
                return Err(TaskError::Runtime(format!(
                    "the task container has stopped: {e}"
                )));
            }
        }
        let mut rx = rx;
        let answer = async {
            if let Some(mut ended) = task.input_end.clone() {
                // The clock starts when the input is complete.
                tokio::select! {
                    a = &mut rx => return Ok(a),
                    _ = ended.wait_for(|e| *e) => {}
                }
            }
            tokio::time::timeout(task.timeout, &mut rx).await
        };
        let end = match answer.await {
            Err(_) => {
                // A task that stalled against a limit the container's
                // cgroup shows it hit is reported as killed for it (gVisor
                // can stall a task at a limit instead of failing it).
                // Under gVisor the sandbox refuses the forks itself: the
                // launcher counts what runs.
                let guest_full = if group.guest_nproc.is_some() {
                    let ask = format!("__count-{}", task.task_id);
                    let answer = ask_launcher(group, &ask, Duration::from_secs(2)).await;
                    at_guest_limit(group, answer.and_then(|a| a.procs))
                } else {
                    false
                };
                let stalled_on = if guest_full
                    || group.pids_file.as_deref().and_then(pids_max_hits) > forks_refused_before
                {
                    Some("pids")
                } else if group.oom_file.as_deref().and_then(memory_limit_hits) > memory_hits_before
                {
                    Some("memory")
                } else {
                    None
                };
                // Docker cannot kill one process of a container cleanly
                // from outside: the container goes.
                self.remove(&group.container_id).await;
                match stalled_on {
                    Some(resource) => TaskEnd::Killed(resource.into()),
                    None => TaskEnd::TimedOut,
                }
            }
            Ok(answer) => {
                let procs = answer.as_ref().ok().and_then(|a| a.procs);
                let answer = answer.map(|a| a.code);
                // The engine sets OOMKilled only when the container stops,
                // and under runc an OOM-killed child can leave the task
                // exiting 0: the cgroup's own OOM-kill counter tells.
                let ooms_after = group.oom_file.as_deref().and_then(oom_kills);
                // The counter is the container's: with other tasks running,
                // a kill is this task's only if it was killed (SIGKILL).
                let alone = group.running.load(std::sync::atomic::Ordering::SeqCst) <= 1;
                let killed = matches!(answer, Ok(137) | Err(_));
                // The engine's view, where the cgroup cannot tell (gone with
                // a stopped container, or not found).
                let state = if answer.is_err() || ooms_before.is_none() || ooms_after.is_none() {
                    self.docker
                        .inspect_container(&group.container_id, None::<InspectContainerOptions>)
                        .await
                        .ok()
                        .and_then(|c| c.state)
                } else {
                    None
                };
                let oom = match (ooms_before, ooms_after) {
                    (Some(b), Some(a)) => a > b && (alone || killed),
                    _ => state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false),
                };
                // A gVisor sandbox that ran out of host pids (threads the
                // guest limit does not bound) exits 2.
                let sandbox_out_of_pids = answer.is_err()
                    && group.guest_nproc.is_some()
                    && state.as_ref().and_then(|s| s.exit_code) == Some(2);
                let forks_refused_after = group.pids_file.as_deref().and_then(pids_max_hits);
                let failed = !matches!(answer, Ok(0));
                let pids = match (forks_refused_before, forks_refused_after) {
                    (Some(b), Some(a)) => a > b && (alone || failed),
                    _ => false,
                } || (failed && at_guest_limit(group, procs))
                    || sandbox_out_of_pids;
                if oom {
                    self.remove(&group.container_id).await;
                    TaskEnd::Killed("memory".into())
                } else if pids {
                    // A fork bomb's children may still run: the container goes.
                    self.remove(&group.container_id).await;
                    TaskEnd::Killed("pids".into())
                } else if output_capped(&stdout, group.max_file_bytes, &answer) {
                    self.remove(&group.container_id).await;
                    TaskEnd::Killed("output".into())
                } else if failed && scratch_full(&group.dir) {
                    self.remove(&group.container_id).await;
                    TaskEnd::Killed("disk".into())
                } else {
                    match answer {
                        Ok(code) => TaskEnd::Exited(code),
                        Err(_) => {
                            self.remove(&group.container_id).await;
                            return Err(TaskError::Runtime(
                                "the task container stopped during the task".into(),
                            ));
                        }
                    }
                }
            }
        };
        let (stdout, stderr) = if matches!(end, TaskEnd::Exited(_)) {
            self.seal_outputs(group, &task.task_id, &task_out).await?
        } else {
            // Any other end removes the container; copied all the same,
            // should its removal not be over yet.
            let stderr = task_out.join("stderr");
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                Ok((snapshot_output(&stdout)?, snapshot_output(&stderr)?))
            })
            .await
            .map_err(|e| TaskError::Runtime(e.to_string()))??
        };
        let stderr_preview = read_preview(&stderr).await;
        Ok(TaskOutcome {
            end,
            stdout,
            stderr,
            stderr_preview,
        })
    }

    /// Where a task of a group writes its stderr (on the node's side).
    pub fn stderr_path(&self, group: &Group, task_id: &str) -> PathBuf {
        group.dir.join("out").join(task_id).join("stderr")
    }

    /// Makes a named pipe in a group's input directory for a task whose
    /// input is streamed to it; returns its path (pass it as the task's
    /// input).
    pub fn make_fifo(&self, group: &Group, task_id: &str) -> Result<PathBuf, TaskError> {
        check_token("task", task_id)?;
        let path = group.dir.join("in").join(task_id);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| TaskError::Io(std::io::Error::from(e)))?;
        std::os::unix::fs::chown(&path, Some(TASK_UID), Some(TASK_UID))?;
        Ok(path)
    }

    /// Destroys a group's container and its directories.
    pub async fn end_group(&self, group: &Group) {
        self.remove(&group.container_id).await;
        drop_dir(&group.dir).await;
    }

    /// Ends a group whose job is over: every process in its container is
    /// killed before this returns (under runc its init, through a pidfd,
    /// waited for; else the engine, which waits for the container to
    /// stop); the container and the group's directories are
    /// removed in the background, which takes tens of milliseconds that
    /// nobody needs to wait for. A crash before the removal leaves them
    /// to [`TaskRunner::reap`].
    pub async fn retire_group(&self, group: Group) {
        let t0 = std::time::Instant::now();
        // Under runc its init is signalled directly, and waited for: it
        // exits only once the kernel has ended the rest of its pid
        // namespace. (The engine answers only once the container has
        // stopped, 45–55 ms later.)
        let killed = match &group.init {
            Some(fd) => {
                rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL).is_ok()
                    && exited(fd).await
            }
            None => false,
        };
        if !killed {
            let opts = KillContainerOptions { signal: "SIGKILL" };
            if let Err(e) = self
                .docker
                .kill_container(&group.container_id, Some(opts))
                .await
            {
                // Stopped already (a timeout or a kill), or the engine is
                // away: the removal below tries again.
                tracing::info!(container = %group.container_id, error = %e, "kill container");
            }
        }
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "group killed");
        let docker = self.docker.clone();
        tokio::spawn(async move {
            remove_container(&docker, &group.container_id).await;
            drop_dir(&group.dir).await;
            tracing::debug!(us = t0.elapsed().as_micros() as u64, "group removed");
            // Its scratch room goes back only now.
            drop(group);
        });
    }

    async fn remove(&self, container: &str) {
        remove_container(&self.docker, container).await;
    }

    /// Containers of this node whose id `keep` does not claim: left by a
    /// crash or by a finished job. They are removed, with their directories.
    pub async fn reap(&self, keep: impl Fn(&str) -> bool) -> Result<usize, TaskError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_ROOT}={}", self.root.to_string_lossy())],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await?;
        let mut reaped = 0;
        for c in list {
            let Some(id) = &c.id else { continue };
            if keep(id) {
                continue;
            }
            self.remove(id).await;
            reaped += 1;
            let dir = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_DIR))
                .cloned()
                .unwrap_or_default();
            if check_token("dir", &dir).is_ok() {
                drop_dir(&self.root.join(&dir)).await;
            }
        }
        // Directories no container claims (a crash between the two).
        let live: Vec<String> = self
            .docker
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                filters: HashMap::from([(
                    "label".to_string(),
                    vec![format!("{LABEL_ROOT}={}", self.root.to_string_lossy())],
                )]),
                ..Default::default()
            }))
            .await?
            .into_iter()
            .filter_map(|c| c.labels.and_then(|mut l| l.remove(LABEL_DIR)))
            .collect();
        let mut entries = tokio::fs::read_dir(&self.root).await?;
        while let Some(e) = entries.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && check_token("dir", &name).is_ok() {
                drop_dir(&e.path()).await;
            }
        }
        Ok(reaped)
    }

    /// Whether a container still exists (for tests and reaping checks).
    pub async fn container_exists(&self, id: &str) -> bool {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .is_ok()
    }
}

/// Makes a task's files on the node's side: its directory, with the
/// node's `env` file in it, made before the task user may write there (a
/// sibling task cannot plant a link); the input's hard link (a pipe made
/// by `make_fifo` is already in place); and the task's `stdout` and
/// `stderr`, root's and writable by others only: the task may open them to
/// write, but never to read (so never to map them) nor change their mode,
/// and `seal_outputs` closes them to new opens when it ends.
fn prepare_task_files(
    task_out: &Path,
    input_link: Option<(PathBuf, PathBuf)>,
    env_script: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(task_out)?;
    // Root's, whatever the node's umask: the task user cannot add, rename
    // or replace a name in it.
    std::fs::set_permissions(task_out, std::fs::Permissions::from_mode(0o755))?;
    if let Some((blob, link)) = input_link {
        if blob != link {
            let _ = std::fs::remove_file(&link);
            std::fs::hard_link(&blob, &link)?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(task_out.join("env"))?;
    f.write_all(env_script.as_bytes())?;
    for name in ["stdout", "stderr"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(task_out.join(name))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o622))?;
    }
    Ok(())
}

/// Sends the launcher one of its own commands and waits for the answer.
async fn ask_launcher(group: &Group, command: &str, wait: Duration) -> Option<Answer> {
    let (tx, rx) = oneshot::channel();
    group.launcher.expect(command, tx).ok()?;
    let ask = async {
        let sent = {
            let mut input = group.launcher.input.lock().await;
            let line = format!("{command}\n");
            input.write_all(line.as_bytes()).await.is_ok() && input.flush().await.is_ok()
        };
        if sent {
            rx.await.ok()
        } else {
            None
        }
    };
    let answer = tokio::time::timeout(wait, ask).await.ok().flatten();
    if answer.is_none() {
        if let Ok(mut w) = group.launcher.waiters.lock() {
            w.as_mut().map(|w| w.remove(command));
        }
    }
    answer
}

/// Whether a container under gVisor was at its process limit.
fn at_guest_limit(group: &Group, procs: Option<u64>) -> bool {
    match (group.guest_nproc, procs) {
        // Every thread of the task user counts (RLIMIT_NPROC counts
        // threads): the container's init (the relay, with its reaper),
        // the launcher, the task shells. One may have just exited.
        (Some(limit), Some(n)) => n + 1 >= limit,
        _ => false,
    }
}

/// The OOM-kill counter file of the memory cgroup of process `pid`.
/// How long sealing a task's outputs may take before its container is
/// removed instead.
const SEAL_BUDGET: Duration = Duration::from_secs(5);

/// Kills every process of a container (`cgroup.procs`, host pids) but
/// `keep` whose file table holds one of `files` (device, inode), looking
/// at each thread's table (a thread may have its own). Returns how many
/// it found; `None` when the container's list cannot be read.
fn kill_holders(
    procs: &Path,
    keep: &[i32],
    files: &[(u64, u64)],
    deadline: std::time::Instant,
) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(procs).ok()?;
    let holds = |fd_dir: &Path| {
        std::fs::read_dir(fd_dir).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                // Follows the descriptor to the open file itself.
                std::fs::metadata(fd.path()).is_ok_and(|m| files.contains(&(m.dev(), m.ino())))
            })
        })
    };
    let mut found = 0;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if keep.contains(&pid) {
            continue;
        }
        // A task with very many threads or descriptors cannot hold the
        // node up: past the budget the container goes instead.
        if std::time::Instant::now() > deadline {
            return None;
        }
        let base = PathBuf::from(format!("/proc/{pid}"));
        let held = holds(&base.join("fd"))
            || std::fs::read_dir(base.join("task"))
                .is_ok_and(|ts| ts.flatten().any(|t| holds(&t.path().join("fd"))));
        if held {
            found += 1;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Some(found)
}

/// Makes a task's output file root's to read only (a plain file; the
/// node's checks refuse anything else when it is opened).
fn close_to_opens(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path)?.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))?;
    }
    Ok(())
}

/// Copies a task's output file as it is now (no further than its size
/// as it is opened, should something still write to it) into a new file
/// of the node's beside it (`<name>.sealed`, which the task's side never
/// had open), and returns that file's path.
fn snapshot_output(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let source = crate::blob_store::open_no_follow(path)?;
    let m = source.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a plain file", path.display()),
        ));
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".sealed");
    let copy_path = PathBuf::from(name);
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy_path)?;
    copy_data(&source, &mut copy, m.len())?;
    copy.set_len(m.len())?;
    Ok(copy_path)
}

/// Copies the first `len` bytes of `from` into `to` at the same offsets,
/// its data only: a hole stays a hole (a task's sparse output takes no
/// more room copied than it did).
fn copy_data(from: &std::fs::File, to: &mut std::fs::File, len: u64) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let end = i64::try_from(len).map_err(std::io::Error::other)?;
    let mut at = 0i64;
    while at < end {
        let data = match lseek(from.as_raw_fd(), at, Whence::SeekData) {
            Ok(d) => d,
            // No data past `at` (or a filesystem without the lookup: then
            // everything from `at` on is data).
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL) => at,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = lseek(from.as_raw_fd(), data, Whence::SeekHole)
            .unwrap_or(end)
            .min(end);
        let mut src = from;
        src.seek(SeekFrom::Start(data as u64))?;
        to.seek(SeekFrom::Start(data as u64))?;
        let copied = std::io::copy(&mut src.take((hole - data) as u64), to)?;
        if copied < (hole - data) as u64 {
            // Shortened meanwhile: the rest reads as a hole.
            break;
        }
        at = hole;
    }
    Ok(())
}

fn oom_counter_file(pid: i64) -> Option<PathBuf> {
    cgroup_file(
        pid,
        "memory",
        "memory.oom_control",
        "memory.events",
        oom_kills,
    )
}

/// The `pids.events` file of the pids cgroup of process `pid`.
fn pids_counter_file(pid: i64) -> Option<PathBuf> {
    cgroup_file(pid, "pids", "pids.events", "pids.events", pids_max_hits)
}

/// A file of process `pid`'s cgroup for `controller` (cgroup v1), or of its
/// unified cgroup (v2), that `read` can read.
fn cgroup_file(
    pid: i64,
    controller: &str,
    v1_file: &str,
    v2_file: &str,
    read: fn(&Path) -> Option<u64>,
) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        let candidate = if controllers.split(',').any(|c| c == controller) {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(rel)
                .join(v1_file)
        } else if id == "0" && controllers.is_empty() {
            Path::new("/sys/fs/cgroup").join(rel).join(v2_file)
        } else {
            continue;
        };
        if read(&candidate).is_some() {
            return Some(candidate);
        }
    }
    None
}

/// A hard byte quota for a container's scratch space: an ext4 filesystem
/// in a sparse file in its directory, loop-mounted at `scratch/` (created
/// and mounted in tens of milliseconds). `None` where the host cannot
/// (no loop devices, not root): the caller falls back to a tmpfs.
fn make_scratch(dir: &Path, mb: u64) -> Option<PathBuf> {
    use std::process::{Command, Stdio};
    let img = dir.join("scratch.img");
    let mnt = dir.join("scratch");
    let run = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let made = mnt.is_dir()
        && std::fs::File::create(&img)
            .and_then(|f| f.set_len(mb.max(8) << 20))
            .is_ok()
        && run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg(&img))
        && run(Command::new("mount")
            .args(["-o", "loop,nosuid,nodev,noexec"])
            .arg(&img)
            .arg(&mnt));
    if !made {
        tracing::warn!(dir = %dir.display(), "no loop-mounted scratch space here; using a tmpfs");
        let _ = std::fs::remove_file(&img);
        let _ = std::fs::remove_dir(&mnt);
        return None;
    }
    let _ = std::fs::remove_dir(mnt.join("lost+found"));
    std::os::unix::fs::chown(&mnt, Some(TASK_UID), Some(TASK_UID)).ok()?;
    Some(mnt)
}

/// The hardened container of a group: its mounts (the group's
/// directories under `dir`, the scratch filesystem at `scratch` or else a
/// tmpfs), limits, and the launcher as its process.
fn container_config(
    spec: &GroupSpec,
    dir: &Path,
    scratch: Option<&Path>,
    volumes: &[String],
    labels: HashMap<String, String>,
) -> Config<String> {
    let l = &spec.limits;
    let mem = (l.memory_mb * 1024 * 1024) as i64;
    let (in_dir, out_dir, assets_dir) = (dir.join("in"), dir.join("out"), dir.join("assets"));
    let bind = |source: &Path, target: &str, read_only: bool| Mount {
        source: Some(source.to_string_lossy().into_owned()),
        target: Some(target.to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    let host = HostConfig {
        network_mode: Some("none".into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: scratch.is_none().then(|| {
            HashMap::from([(
                "/tmp".to_string(),
                format!(
                    "rw,nosuid,nodev,noexec,size={}m",
                    l.scratch_mb.min(l.memory_mb / 2).max(1)
                ),
            )])
        }),
        memory: Some(mem),
        // Equal to the memory limit: no swap to hide behind.
        memory_swap: Some(mem),
        pids_limit: Some(if spec.under_gvisor() {
            l.gvisor().1
        } else {
            l.pids
        }),
        nano_cpus: Some((l.cpus * 1e9) as i64),
        ulimits: Some(vec![
            ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(l.open_files),
                hard: Some(l.open_files),
            },
            ResourcesUlimits {
                name: Some("fsize".into()),
                soft: Some(l.max_file_bytes),
                hard: Some(l.max_file_bytes),
            },
        ]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        mounts: Some({
            let mut m = vec![
                bind(&in_dir, IN_DIR, true),
                bind(&out_dir, OUT_DIR, false),
                bind(&assets_dir, ASSETS_DIR, true),
            ];
            if let Some(scratch) = scratch {
                m.push(bind(scratch, "/tmp", false));
            }
            if let Some(t) = &spec.tools {
                m.push(bind(&t.bin, TOOLS_DIR_INSIDE, true));
                m.push(bind(&t.socket_dir, SOCKET_DIR_INSIDE, true));
            }
            m.extend(volume_mounts(volumes, scratch));
            m
        }),
        runtime: spec.runtime.clone(),
        // Set either way: an engine whose default is an init of its own
        // would put the relay under it, where tasks could kill it.
        init: Some(spec.tools.is_none()),
        auto_remove: Some(false),
        ..Default::default()
    };
    let guest_nproc = spec.under_gvisor().then(|| spec.limits.gvisor().0);
    let launcher = ["/bin/sh", "-c", LAUNCHER].map(String::from);
    Config {
        image: Some(spec.image.clone()),
        // The container's own process is the launcher, which reads the
        // tasks to start on its standard input (attached below): no
        // exec, whose start costs tens of milliseconds. Its parent is
        // an init that reaps orphans: the tools' relay, which also
        // relays the endpoint, or else the engine's.
        entrypoint: Some(match &spec.tools {
            Some(_) => [
                format!("{TOOLS_DIR_INSIDE}/insitu-task"),
                "relay".to_string(),
                format!("127.0.0.1:{TASK_S3_PORT}"),
                SOCKET_INSIDE.to_string(),
                "--".to_string(),
            ]
            .into_iter()
            .chain(launcher)
            .collect(),
            None => launcher.to_vec(),
        }),
        env: guest_nproc.map(|n| vec![format!("INSITU_NPROC={n}")]),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        user: Some(TASK_USER.into()),
        working_dir: Some("/tmp".into()),
        // The image's own health check would run commands in the
        // container on the engine's schedule, and its stop signal is
        // the tenant's choice: neither applies to a task container.
        healthcheck: Some(bollard::models::HealthConfig {
            test: Some(vec!["NONE".to_string()]),
            ..Default::default()
        }),
        stop_signal: Some("SIGKILL".into()),
        labels: Some(labels),
        network_disabled: Some(true),
        host_config: Some(host),
        ..Default::default()
    }
}

/// Whether `name` is one of the image's tags or digests, as the engine
/// lists them (`busybox:latest` for `docker.io/library/busybox`), and not
/// merely the start of its id.
fn names_image(image: &bollard::models::ImageInspect, name: &str) -> bool {
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("index.docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    if short.contains('@') {
        let digests = image.repo_digests.as_deref().unwrap_or_default();
        return digests.iter().any(|d| d == short || d == name);
    }
    let tagged = short
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    let full = if tagged {
        short.to_string()
    } else {
        format!("{short}:latest")
    };
    let tags = image.repo_tags.as_deref().unwrap_or_default();
    tags.contains(&full)
}

/// Mounts over an image's declared volumes, so the engine makes none:
/// a directory of the task's scratch filesystem each (writable, within its
/// quota), or, where there is no scratch filesystem, an empty read-only
/// tmpfs.
fn volume_mounts(volumes: &[String], scratch: Option<&Path>) -> Vec<Mount> {
    volumes
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let dir = scratch.map(|s| s.join(format!(".volume-{i}"))).filter(|d| {
                std::fs::create_dir(d).is_ok()
                    && std::os::unix::fs::chown(d, Some(TASK_UID), Some(TASK_UID)).is_ok()
            });
            match dir {
                Some(dir) => Mount {
                    source: Some(dir.to_string_lossy().into_owned()),
                    target: Some(target.clone()),
                    typ: Some(MountTypeEnum::BIND),
                    read_only: Some(false),
                    ..Default::default()
                },
                None => Mount {
                    target: Some(target.clone()),
                    typ: Some(MountTypeEnum::TMPFS),
                    read_only: Some(true),
                    tmpfs_options: Some(bollard::models::MountTmpfsOptions {
                        size_bytes: Some(4096),
                        mode: Some(0o555),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// Removes a container's directory, unmounting its scratch filesystem
/// first (its loop device is released with it).
/// Hard-links each asset's blob file at `<dir>/<bucket>/<key>`, in a
/// directory of the node's that no container has seen yet: no copy, and
/// the bytes outlive a concurrent delete. The blob files are root's and
/// not writable by the task user; the directory is mounted read-only.
async fn link_assets(dir: &Path, assets: &[(String, PathBuf)]) -> Result<(), TaskError> {
    tokio::fs::create_dir_all(dir).await?;
    for (path, blob) in assets {
        insitu_job_model::spec::check_asset("asset", path)
            .map_err(|e| TaskError::Invalid(e.to_string()))?;
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::hard_link(blob, &target).await?;
    }
    Ok(())
}

/// Whether the process of a pidfd has exited (the descriptor turns
/// readable), within a few seconds.
async fn exited(fd: &Arc<std::os::fd::OwnedFd>) -> bool {
    let fd = fd.clone();
    tokio::task::spawn_blocking(move || {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&*fd, PollFlags::IN)];
        let wait = Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&wait)), Ok(n) if n > 0)
    })
    .await
    .unwrap_or(false)
}

/// A pidfd of process `pid`, the init of `container`, checked after it is
/// opened to still be that container's (its cgroup names the container):
/// from then on it names that process whatever happens to the pid.
fn init_pidfd(pid: i64, container: &str) -> Option<Arc<std::os::fd::OwnedFd>> {
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup.contains(container).then(|| Arc::new(fd))
}

async fn remove_container(docker: &Docker, container: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(container, Some(opts)).await {
        tracing::debug!(container, error = %e, "remove container");
    }
}

async fn drop_dir(dir: &Path) {
    let mnt = dir.join("scratch");
    if tokio::fs::try_exists(mnt.join(".")).await.unwrap_or(false) {
        let _ = tokio::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
}

/// Whether a container's scratch filesystem is (all but) full: a write
/// that failed for space leaves less than a block of the writer's size.
#[allow(clippy::unnecessary_cast)] // the statvfs field types vary by platform
fn scratch_full(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(&dir.join("scratch"))
        .map(|v| {
            let free = v.blocks_available() as u64 * v.fragment_size() as u64;
            v.blocks() > 0
                && (free < 4 << 20 || (v.blocks_available() as u64) < v.blocks() as u64 / 100)
        })
        .unwrap_or(false)
}

/// Whether a task was stopped by its output cap: SIGXFSZ (exit 153), or
/// a stdout that reached the cap.
fn output_capped(stdout: &Path, cap: u64, answer: &Result<i64, oneshot::error::RecvError>) -> bool {
    if matches!(answer, Ok(153)) {
        return true;
    }
    std::fs::symlink_metadata(stdout)
        .map(|m| m.is_file() && cap > 0 && m.len() >= cap)
        .unwrap_or(false)
}

/// How often a fork was refused for the pids limit.
fn pids_max_hits(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
}

/// How often the memory cgroup (next to its OOM counter file) hit its
/// limit: v1 `memory.failcnt`, v2 `max` in `memory.events`.
fn memory_limit_hits(oom_file: &Path) -> Option<u64> {
    let v1 = oom_file.with_file_name("memory.failcnt");
    if let Ok(text) = std::fs::read_to_string(&v1) {
        return text.trim().parse().ok();
    }
    let text = std::fs::read_to_string(oom_file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
}

/// The `oom_kill` count in a cgroup memory file.
fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

async fn read_preview(path: &Path) -> String {
    use std::io::Read;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let Ok(f) = crate::blob_store::open_task_output(&path) else {
            return String::new();
        };
        let mut buf = Vec::new();
        let _ = f.take(STDERR_PREVIEW_BYTES).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sealed copy keeps nothing written after it was taken, through
    /// any descriptor, and a sparse output stays sparse.
    #[test]
    fn a_sealed_copy_keeps_no_later_write_and_no_filled_hole() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut held = std::fs::File::create(&path).unwrap();
        held.write_all(b"on-time\n").unwrap();
        let mut second = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let copy = snapshot_output(&path).unwrap();
        close_to_opens(&path).unwrap();
        second.write_all(b"LATE").unwrap();
        held.write_all(b"APPENDED").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"LATEime\nAPPENDED");
        assert_eq!(std::fs::read(&copy).unwrap(), b"on-time\n");
        assert_eq!(copy.file_name().unwrap(), "stdout.sealed");
        // Sealing again finds its copy's name taken: refused, not reused.
        assert!(snapshot_output(&path).is_err());

        const MIB: u64 = 1 << 20;
        let sparse = dir.path().join("stderr");
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.seek(SeekFrom::Start(32 * MIB)).unwrap();
        f.write_all(b"x").unwrap();
        let copy = snapshot_output(&sparse).unwrap();
        let m = std::fs::metadata(&copy).unwrap();
        assert_eq!(m.len(), 64 * MIB);
        assert!(m.blocks() * 512 < MIB, "{} blocks", m.blocks());
        let bytes = std::fs::read(&copy).unwrap();
        assert_eq!(bytes[32 * MIB as usize], b'x');
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1);
    }

    #[test]
    fn gvisor_limits_leave_the_sandbox_room() {
        let l = Limits::default();
        let (guest, host) = l.gvisor();
        // 256 MiB holds 128 guest processes at ~0.9 MiB each, with room.
        assert_eq!(guest, 128);
        assert!(
            host >= 512 && host >= (guest as i64 + 8) * 9 + 256,
            "{host}"
        );
        let small = Limits {
            pids: 32,
            memory_mb: 4096,
            ..Limits::default()
        };
        assert_eq!(small.gvisor().0, 32, "the operator's limit holds");
        let tiny = Limits {
            memory_mb: 4,
            ..Limits::default()
        };
        assert_eq!(tiny.gvisor().0, 32, "never below a few pipelines");
    }
}
