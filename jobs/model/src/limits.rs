//! Limits on job specs, with their reasons. Operators will be able to lower
//! (not raise) them per tenant.

/// Phases per job: long pipelines are better split into jobs.
pub const MAX_PHASES: usize = 16;
/// A job name is a label for people.
pub const MAX_NAME_BYTES: usize = 128;
/// `exec` and `init` are shell snippets, not programs: ship programs in the image.
pub const MAX_EXEC_BYTES: usize = 64 * 1024;
/// Inputs listed in the create request; more are added while input is open.
pub const MAX_INLINE_INPUTS: usize = 10_000;
/// Reducers per reduce phase.
pub const MAX_REDUCERS: u32 = 1024;
/// Per-task memory, MiB: enough for real tools, bounded by node RAM.
pub const MIN_MEMORY_MB: u64 = 16;
pub const MAX_MEMORY_MB: u64 = 64 * 1024;
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// CPUs per task.
pub const MIN_CPUS: f64 = 0.05;
pub const MAX_CPUS: f64 = 64.0;
pub const DEFAULT_CPUS: f64 = 1.0;
/// Scratch space per task, MiB.
pub const MAX_DISK_MB: u64 = 1024 * 1024;
pub const DEFAULT_DISK_MB: u64 = 256;
/// Output per task (stdout, and any file it writes), MiB: past it the task
/// is killed (`TaskKilledError`, output).
pub const MAX_OUTPUT_MB: u64 = 1024 * 1024;
pub const DEFAULT_OUTPUT_MB: u64 = 1024;
/// Wall-clock time per task, seconds.
pub const MAX_TIMEOUT_S: u64 = 24 * 3600;
pub const DEFAULT_TIMEOUT_S: u64 = 600;
/// Environment variables per phase, and their total size.
pub const MAX_ENV_VARS: usize = 128;
pub const MAX_ENV_BYTES: usize = 32 * 1024;
/// A line of a task's output routed by key (`"partition": "key"`) is held
/// whole by the node while it is routed: longer lines fail the task.
pub const MAX_KEY_LINE_BYTES: usize = 1024 * 1024;
/// Assets per phase: each is linked (or copied) into every container of
/// the phase before its first task; a phase that needs more data reads it
/// as input.
pub const MAX_ASSETS: usize = 64;
/// An asset's key becomes a path under `/insitu/assets/<bucket>/`: each of
/// its `/`-separated parts is a file name, which Linux caps at 255 bytes.
pub const MAX_ASSET_NAME_PART: usize = 255;
/// Named outputs one task may write through its endpoint: each becomes an
/// object, and in a non-final phase a task or a reducer's input.
pub const MAX_NAMED_OUTPUTS: usize = 1000;
/// A named output's name: it becomes part of a key (at most 1024 bytes),
/// after the job's output prefix.
pub const MAX_OUTPUT_NAME_BYTES: usize = 512;
/// User metadata (`x-amz-meta-*`, names and values) a named output may
/// carry: S3's own limit for an object's user metadata.
pub const MAX_OUTPUT_METADATA_BYTES: usize = 2 * 1024;

/// Memo entries a tenant keeps (`memoize`); past it the oldest go.
pub const MAX_MEMO_ENTRIES_PER_TENANT: usize = 100_000;
