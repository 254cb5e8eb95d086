//! Durable job state: the records the supervisor keeps in the catalog and
//! the keys it keeps them under.
//!
//! Keys (column family `jobs`): `tenant \0 job_id` → [`JobRecord`].
//! Keys (column family `job_items`), all starting `job_id \0 kind \0`:
//!
//! | kind | rest of the key                 | value             |
//! |------|---------------------------------|-------------------|
//! | `i`  | seq (u64 BE)                    | [`InputRecord`]   |
//! | `t`  | seq (u64 BE)                    | [`TaskRecord`] (map tasks, in creation order) |
//! | `R`  | phase (u32 BE), reducer (u32 BE)| [`TaskRecord`] (reducers) |
//! | `p`  | phase, reducer (u32 BE), seq    | [`PieceRecord`] (a reducer's inputs) |
//! | `o`  | seq                             | [`OutputRecord`]  |
//! | `e`  | seq                             | [`ErrorRecord`]   |
//! | `f`  | seq                             | [`InputRecord`] (inputs whose task failed) |
//! | `x`  | `bucket/key`                    | empty: the input is in the job |
//!
//! Every value is one version byte followed by JSON, like the catalog's own
//! records; an unknown version is refused rather than misread.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::errors::JobErrorCode;
use crate::spec::JobSpec;

const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("corrupt job record: {0}")]
pub struct CorruptRecord(pub String);

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serialising plain data structures into a Vec cannot fail.
    serde_json::to_writer(&mut out, v).unwrap_or_default();
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CorruptRecord> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| CorruptRecord(e.to_string()))
        }
        Some((v, _)) => Err(CorruptRecord(format!("unknown version {v}"))),
        None => Err(CorruptRecord("empty".into())),
    }
}

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
}

/// One input of a reducer: an object (an earlier phase's output, or for a
/// job that starts with a reduce phase, a job input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRecord {
    pub bucket: String,
    pub key: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub phase: u32,
    pub task: String,
    /// `bucket/key` of the output object.
    pub object: String,
    pub size: u64,
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
}

// ---- keys -------------------------------------------------------------------

pub fn job_key(tenant: &str, job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + job.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

/// The list kinds under a job in `job_items`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Input,
    Task,
    Reducer,
    Piece,
    Output,
    Error,
    FailedInput,
    /// Inputs by name, to add each once.
    Seen,
}

impl ItemKind {
    fn byte(self) -> u8 {
        match self {
            Self::Input => b'i',
            Self::Task => b't',
            Self::Reducer => b'R',
            Self::Piece => b'p',
            Self::Output => b'o',
            Self::Error => b'e',
            Self::FailedInput => b'f',
            Self::Seen => b'x',
        }
    }
}

/// `job_id \0 kind \0`: the prefix of one of a job's lists.
pub fn item_prefix(job: &str, kind: ItemKind) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.len() + 3);
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.push(kind.byte());
    k.push(0);
    k
}

pub fn seq_key(job: &str, kind: ItemKind, seq: u64) -> Vec<u8> {
    let mut k = item_prefix(job, kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Marks an input (`bucket/key`) as part of the job.
pub fn seen_key(job: &str, input: &str) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Seen);
    k.extend_from_slice(input.as_bytes());
    k
}

pub fn reducer_key(job: &str, phase: u32, reducer: u32) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Reducer);
    k.extend_from_slice(&phase.to_be_bytes());
    k.extend_from_slice(&reducer.to_be_bytes());
    k
}

pub fn piece_prefix(job: &str, phase: u32, reducer: u32) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Piece);
    k.extend_from_slice(&phase.to_be_bytes());
    k.extend_from_slice(&reducer.to_be_bytes());
    k
}

pub fn piece_key(job: &str, phase: u32, reducer: u32, seq: u64) -> Vec<u8> {
    let mut k = piece_prefix(job, phase, reducer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number at the end of a list key, for pagination markers.
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_unknown_versions() {
        let r = InputRecord {
            input: "b/k".into(),
        };
        let bytes = encode(&r);
        assert_eq!(decode::<InputRecord>(&bytes).unwrap(), r);
        let mut bad = bytes.clone();
        bad[0] = 7;
        assert!(decode::<InputRecord>(&bad).is_err());
        assert!(decode::<InputRecord>(&[]).is_err());
    }

    #[test]
    fn list_keys_sort_by_sequence_and_stay_inside_their_job() {
        let a = seq_key("j1", ItemKind::Task, 2);
        let b = seq_key("j1", ItemKind::Task, 10);
        assert!(a < b);
        assert!(a.starts_with(&item_prefix("j1", ItemKind::Task)));
        assert!(!a.starts_with(&item_prefix("j1", ItemKind::Input)));
        assert!(!seq_key("j10", ItemKind::Task, 0).starts_with(&item_prefix("j1", ItemKind::Task)));
        assert_eq!(seq_of(&b), Some(10));
        assert!(piece_key("j", 1, 2, 3).starts_with(&piece_prefix("j", 1, 2)));
    }
}
