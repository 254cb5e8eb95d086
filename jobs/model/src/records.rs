//! Durable job state: the records the supervisor keeps in the catalog.
//! The catalog owns how they are stored (docs/ARCHITECTURE.md).

use serde::{Deserialize, Serialize};

use crate::errors::JobErrorCode;
use crate::spec::JobSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled)
    }
}

/// Per-phase task counts. `tasks` counts every task created (for a reduce
/// phase, its reducers); `done + failed` of them have finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounters {
    pub tasks: u64,
    pub done: u64,
    pub failed: u64,
    /// Input bytes the phase's tasks read from their own node's disk, and
    /// bytes that had to be fetched from another node.
    pub bytes_local: u64,
    pub bytes_remote: u64,
    /// Of `done`, tasks not run: an earlier task of the tenant with the
    /// same fingerprint left outputs that were reused (`memoize`).
    #[serde(default)]
    pub memoized: u64,
}

impl PhaseCounters {
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounters {
    pub inputs: u64,
    pub outputs: u64,
    pub errors: u64,
    /// Attempts re-run after an internal failure.
    pub retries: u64,
}

/// Next sequence numbers of a job's lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seqs {
    pub input: u64,
    pub task: u64,
    pub piece: u64,
    pub output: u64,
    pub error: u64,
    pub failed_input: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub created_ms: i64,
    #[serde(default)]
    pub done_ms: Option<i64>,
    /// No more inputs will be added.
    pub input_closed: bool,
    /// While the input prefix is being listed: the last key listed so far
    /// ("" before the first page). `None` once it is done (or unused).
    #[serde(default)]
    pub prefix_cursor: Option<String>,
    pub seq: Seqs,
    pub phases: Vec<PhaseCounters>,
    pub counters: JobCounters,
}

impl JobRecord {
    /// Every input is known: input closed and the prefix fully listed.
    pub fn inputs_complete(&self) -> bool {
        self.input_closed && self.prefix_cursor.is_none()
    }

    /// Whether every phase before `phase` has finished all its tasks, so
    /// that phase `phase`'s reducers have all their input (for
    /// `phase == phases.len()`: whether the job is complete). `running`
    /// counts tasks in flight per phase.
    pub fn upstream_done(&self, phase: usize) -> bool {
        self.inputs_complete()
            && self.phases[..phase.min(self.phases.len())]
                .iter()
                .all(|p| p.finished() == p.tasks)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// `bucket/key`.
    pub input: String,
    /// The version the job reads: its ETag when it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// The version of an object a job reads, fixed when the input is added
/// (or a task references it): its blob, kept from garbage collection
/// until the job ends, whatever happens to the key meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPin {
    pub blob: String,
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub phase: u32,
    /// `bucket/key` of a map task's input; `None` for a reducer.
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub reducer: Option<u32>,
    pub state: TaskState,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// The version of its input a map task reads (none in records written
    /// before inputs were pinned: those read the key's current version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<InputPin>,
}

/// One input of a reducer: an object (an earlier phase's output, or for a
/// job that starts with a reduce phase, a job input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRecord {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// The version read, for a job input or a referenced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<InputPin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub phase: u32,
    pub task: String,
    /// `bucket/key` of the output object.
    pub object: String,
    pub size: u64,
    /// The ETag of the input version the task read, for a map task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_etag: Option<String>,
    /// The object's ETag, for an output that is an existing object (a
    /// reference, `mcat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub phase: u32,
    pub task: String,
    /// The task's input (`bucket/key`), or `reducer N`.
    pub input: String,
    pub code: JobErrorCode,
    pub message: String,
    /// `bucket/key` of the saved stderr, when the task ran and failed.
    #[serde(default)]
    pub stderr: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    /// The ETag of the input version, when one was pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_etag: Option<String>,
}

/// A memoized task: what an earlier successful task of a tenant left as
/// its job's final outputs, each by the version it wrote, kept under the
/// task's fingerprint (`insitu_jobs` computes it) so that a task with the
/// same fingerprint reuses them instead of running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoRecord {
    pub created_ms: i64,
    /// The job and task that ran.
    pub job: String,
    pub task: String,
    pub outputs: Vec<MemoOutput>,
}

/// One output of a memoized task: the object and the version it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoOutput {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub blob: String,
}
