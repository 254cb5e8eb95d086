//! The storage node's wire protocol: the types a node and the gateway
//! exchange (heartbeats, health, blob listings, task requests and
//! responses), and the bounded HTTP/1 server both of them run. The gateway
//! links this crate, not the node's Docker and filesystem code.

pub mod byte_range;
pub mod http_server;

pub use byte_range::ByteRange;

use serde::{Deserialize, Serialize};

/// Path of the gateway's heartbeat endpoint.
pub const HEARTBEAT_PATH: &str = "/_insitu/v1/internal/heartbeat";

/// What a node tells the gateway every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub addr: String,
    pub usage: Usage,
    /// Blobs whose replica here failed its checksum.
    pub corrupt: Vec<String>,
    /// Requests in progress.
    #[serde(default)]
    pub load: u64,
    /// The node's own key, made on its first start and kept in its data
    /// directory: the gateway ties the node id to it, so another holder of
    /// the cluster secret cannot take the id over (point it elsewhere).
    #[serde(default)]
    pub node_key: Option<String>,
}

/// Space and content figures reported in heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub blob_count: u64,
}

/// One entry of a blob listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: String,
    pub size: u64,
    pub modified_ms: i64,
}

/// Header carrying the exact body length the gateway intends to send.
pub const EXPECTED_LENGTH_HEADER: &str = "x-insitu-expected-length";

#[derive(Serialize, Deserialize)]
pub struct Health {
    pub node_id: String,
    pub temp_files: usize,
    pub usage: Usage,
    pub corrupt: Vec<String>,
    /// Requests in progress.
    #[serde(default)]
    pub load: u64,
}

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
    /// Largest file (stdout included) a task may write, MiB; 0: the
    /// node's default.
    #[serde(default)]
    pub output_mb: u64,
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
    /// The phase's assets, each a blob on this node, readable in the
    /// group's container at `/insitu/assets/<path>`.
    #[serde(default)]
    pub assets: Vec<AssetOnNode>,
    /// `bucket/prefix` under which the task may write named outputs
    /// through its endpoint (the job's output place).
    #[serde(default)]
    pub output_place: Option<String>,
    /// Reducers of the next phase, when it is a reduce: an output may name
    /// one (`x-insitu-reducer`).
    #[serde(default)]
    pub next_reducers: Option<u32>,
    /// The job's id for the task (an attempt's `task_id` differs), and
    /// its input (`bucket/key`, or `reducer N`): how its log lines are
    /// labelled.
    #[serde(default)]
    pub task_name: String,
    #[serde(default)]
    pub input_name: String,
}

/// Path of a node's log reads: `POST {LOG_PATH}/{tenant}/{job}` with a
/// [`LogRequest`], answered with a [`LogResponse`].
pub const LOG_PATH: &str = "/v1/logs";

/// Asks a node what a job's tasks wrote to stderr past what the caller has
/// read. The node knows a task's stderr while it runs and for a short
/// while after it ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogRequest {
    /// Attempt id → bytes of its stderr already read; attempts not named
    /// are read from the start.
    #[serde(default)]
    pub from: std::collections::BTreeMap<String, u64>,
    /// Only this phase's tasks.
    #[serde(default)]
    pub phase: Option<u32>,
    /// Only this task (its job task id).
    #[serde(default)]
    pub task: Option<String>,
    /// Begin with this attempt (the last answer's `resume`), so attempts
    /// a call had no room for come first in the next.
    #[serde(default)]
    pub start: Option<String>,
}

/// What one attempt wrote past the caller's offset: whole lines while it
/// runs (a line longer than the node's read budget comes in pieces), and
/// everything once it has ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogChunk {
    pub attempt: String,
    pub task: String,
    pub phase: u32,
    pub input: String,
    /// The bytes read, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// The offset to ask from next time.
    pub next: u64,
    /// The attempt has ended: once `next` reaches its end, nothing more
    /// will come.
    pub ended: bool,
}

/// Every attempt of the job the node knows, including those with nothing
/// new (so a caller can forget the others).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogResponse {
    pub tasks: Vec<LogChunk>,
    /// The first attempt this call had no room to read, if any.
    #[serde(default)]
    pub resume: Option<String>,
}

/// An object a task wrote through its endpoint, staged on the node as a
/// blob until the task's outcome is committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedOut {
    /// The key the task wrote, less the output prefix.
    pub name: String,
    pub blob: String,
    pub size: u64,
    pub md5: String,
    /// The reducer of the next phase it asked for.
    #[serde(default)]
    pub reducer: Option<u32>,
    /// An output that is an existing object, by reference (`mcat`): no
    /// bytes were written, `blob` is empty and `size` 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ObjectReference>,
    /// The headers the task's PUT gave it, kept with its object.
    #[serde(default)]
    pub headers: OutputHeaders,
}

/// Standard and user-metadata headers a task gave a named output, as the
/// S3 API keeps them with an object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `x-amz-meta-*`, names lower-cased without the prefix.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub user_metadata: std::collections::BTreeMap<String, String>,
}

impl NamedOut {
    /// The blob staged on the node for this output: none for a
    /// reference (whose blob is the object's own, never the node's to
    /// drop).
    pub fn staged_blob(&self) -> Option<&str> {
        (self.reference.is_none() && !self.blob.is_empty()).then_some(self.blob.as_str())
    }
}

/// The version of an object a task referenced, as the gateway resolved it
/// with the tenant's read access checked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectReference {
    pub bucket: String,
    pub key: String,
    pub blob: String,
    pub etag: String,
    pub size: u64,
    /// The nodes holding it.
    pub replicas: Vec<String>,
}

/// An asset of a task's phase: its `bucket/key` path, and the blob on the
/// node that holds its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssetOnNode {
    pub path: String,
    pub blob: String,
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
    /// Named outputs, when the task exited 0.
    #[serde(default)]
    pub named: Vec<NamedOut>,
    /// The task asked its endpoint for more than writing outputs (read,
    /// listed or referenced objects): its outputs may depend on more than
    /// its input, so they are not memoized.
    #[serde(default)]
    pub read_through_endpoint: bool,
    /// The content id of the image the task's container was made from
    /// (empty from a node that does not say).
    #[serde(default)]
    pub image_id: String,
}

/// What a task endpoint on a node asks the gateway, for a task of
/// `tenant`, authenticated by the cluster secret: an object's current
/// version (`TASK_OBJECT_PATH`) or a page of a listing (`TASK_LIST_PATH`),
/// each checked against the tenant's read access as the S3 API would.
/// Only metadata crosses the gateway: the node reads the bytes from a
/// holder of the blob.
pub const TASK_OBJECT_PATH: &str = "/_insitu/v1/internal/task-object";
pub const TASK_LIST_PATH: &str = "/_insitu/v1/internal/task-list";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskObjectQuery {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    /// Pin the version answered for this job of the tenant (a task's
    /// reference, `mcat`), if the job has not ended: from then on the
    /// job reads that version whatever happens to the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_for_job: Option<String>,
}

/// A node that holds a replica of a blob, and its address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskObject {
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: i64,
    #[serde(default)]
    pub content_type: Option<String>,
    pub blob: String,
    pub holders: Vec<Holder>,
    /// The version was pinned for the job the query named.
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskListQuery {
    pub tenant: String,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub delimiter: Option<String>,
    /// List keys after this one.
    #[serde(default)]
    pub after: Option<String>,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskListEntry {
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskListing {
    pub objects: Vec<TaskListEntry>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or prefix returned: the next page lists after it.
    #[serde(default)]
    pub last: Option<String>,
}

/// A refused or failed task read: the S3 error code and message the task
/// gets (`NoSuchBucket`, `NoSuchKey`, `AccessDenied`, ...), with the HTTP
/// status of the gateway's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReadError {
    pub code: String,
    pub message: String,
}
