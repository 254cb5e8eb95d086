//! What running tasks write to stderr, readable while they run: the node's
//! side of `insitu job logs`. Each attempt is registered when it starts;
//! when it ends, however it ends, the tail of its stderr is copied aside
//! and kept for [`KEEP_ENDED`], so a follower polling the node still reads
//! its last lines. Reads go by offsets the caller keeps, and give whole
//! lines.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use insitu_node_api::{LogChunk, LogRequest, LogResponse};

/// How long an ended attempt's stderr stays readable: a few of a
/// follower's polls.
pub const KEEP_ENDED: Duration = Duration::from_secs(30);
/// Most of an ended attempt's stderr kept: its last bytes.
pub const KEEP_TAIL: u64 = 1 << 20;
/// Most bytes kept for ended attempts on the node; the oldest go first.
pub const KEEP_TOTAL: u64 = 64 << 20;
/// Most bytes read from one attempt's stderr per call; a line longer
/// than this comes in pieces.
pub const READ_PER_TASK: u64 = 64 << 10;
/// Most bytes read in one call; the attempts a call starts with rotate
/// (`LogRequest::start`), so every attempt gets its turn.
pub const READ_PER_CALL: u64 = 1 << 20;

/// Who an attempt is, as its log lines are labelled.
#[derive(Debug, Clone)]
pub struct LogLabel {
    pub tenant: String,
    pub job: String,
    pub attempt: String,
    pub task: String,
    pub phase: u32,
    pub input: String,
}

#[derive(Debug)]
enum Source {
    /// The task's own stderr file, while it runs.
    Running(PathBuf),
    /// A copy of the last bytes of an ended attempt's stderr, which began
    /// at `base` in the original; `None` when it wrote nothing.
    Ended {
        kept: Option<PathBuf>,
        base: u64,
        bytes: u64,
        at: Instant,
    },
}

struct Entry {
    label: LogLabel,
    source: Source,
}

/// The attempts whose stderr can be read, by `tenant/job/attempt`.
pub struct LogBoard {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

fn key(tenant: &str, job: &str, attempt: &str) -> String {
    format!("{tenant}/{job}/{attempt}")
}

/// Ids that name files: `[A-Za-z0-9_-]`, as the runner requires.
fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl LogBoard {
    /// A board keeping ended attempts' tails in `dir` (emptied: what an
    /// earlier process kept is nobody's now). Without the directory,
    /// ended attempts are forgotten at once.
    pub fn new(dir: PathBuf) -> Arc<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep ended tasks' stderr for followers");
        }
        Arc::new(Self {
            dir,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Registers a starting attempt whose stderr is `path`; the guard
    /// keeps its tail or forgets it when the attempt is over. An attempt
    /// whose ids could not name a file is not registered.
    pub fn open(self: &Arc<Self>, label: LogLabel, path: PathBuf) -> LogGuard {
        if ![&label.tenant, &label.job, &label.attempt]
            .iter()
            .all(|v| is_token(v))
        {
            return LogGuard {
                board: self.clone(),
                key: None,
            };
        }
        let k = key(&label.tenant, &label.job, &label.attempt);
        self.sweep();
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                k.clone(),
                Entry {
                    label,
                    source: Source::Running(path),
                },
            );
        }
        LogGuard {
            board: self.clone(),
            key: Some(k),
        }
    }

    /// Forgets what ended more than [`KEEP_ENDED`] ago, then the oldest
    /// ended attempts while the kept bytes are over [`KEEP_TOTAL`].
    fn sweep(&self) {
        let doomed: Vec<PathBuf> = {
            let Ok(mut entries) = self.entries.lock() else {
                return;
            };
            let mut ended: Vec<(Instant, u64, String)> = entries
                .iter()
                .filter_map(|(k, e)| match &e.source {
                    Source::Ended { at, bytes, .. } => Some((*at, *bytes, k.clone())),
                    Source::Running(_) => None,
                })
                .collect();
            ended.sort();
            let mut total: u64 = ended.iter().map(|(_, b, _)| b).sum();
            let mut doomed = Vec::new();
            for (at, bytes, k) in ended {
                if at.elapsed() <= KEEP_ENDED && total <= KEEP_TOTAL {
                    continue;
                }
                total -= bytes;
                if let Some(Entry {
                    source: Source::Ended { kept: Some(p), .. },
                    ..
                }) = entries.remove(&k)
                {
                    doomed.push(p);
                }
            }
            doomed
        };
        for p in doomed {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Reads a job's attempts past the caller's offsets (blocking file
    /// reads: call it off the async workers).
    pub fn read(&self, tenant: &str, job: &str, req: &LogRequest) -> LogResponse {
        self.sweep();
        let mut wanted: Vec<(LogLabel, Option<PathBuf>, u64, bool)> = match self.entries.lock() {
            Ok(entries) => entries
                .values()
                .filter(|e| e.label.tenant == tenant && e.label.job == job)
                .filter(|e| req.phase.is_none_or(|p| p == e.label.phase))
                .filter(|e| req.task.as_deref().is_none_or(|t| t == e.label.task))
                .map(|e| match &e.source {
                    Source::Running(p) => (e.label.clone(), Some(p.clone()), 0, false),
                    Source::Ended { kept, base, .. } => {
                        (e.label.clone(), kept.clone(), *base, true)
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        wanted.sort_by(|a, b| a.0.attempt.cmp(&b.0.attempt));
        // A call begins where the last one ran out of room, so a budget
        // spent early does not starve the same attempts every time.
        if let Some(start) = &req.start {
            let at = wanted.partition_point(|w| w.0.attempt < *start);
            wanted.rotate_left(at);
        }
        let mut budget = READ_PER_CALL;
        let mut resume = None;
        let mut tasks = Vec::with_capacity(wanted.len());
        for (label, path, base, ended) in wanted {
            if budget < READ_PER_TASK && resume.is_none() {
                resume = Some(label.attempt.clone());
            }
            let from = req.from.get(&label.attempt).copied().unwrap_or(0);
            // Bytes before the kept tail are gone: go on from the tail.
            let start = from.max(base);
            let (text, used) = match &path {
                Some(p) if budget > 0 => {
                    match read_lines(p, start - base, budget.min(READ_PER_TASK), ended) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(attempt = %label.attempt, error = %e, "cannot read a task's stderr");
                            (String::new(), 0)
                        }
                    }
                }
                _ => (String::new(), 0),
            };
            budget -= used.min(budget);
            tasks.push(LogChunk {
                attempt: label.attempt,
                task: label.task,
                phase: label.phase,
                input: label.input,
                text,
                next: start + used,
                ended,
            });
        }
        tasks.sort_by(|a, b| (a.phase, &a.task, &a.attempt).cmp(&(b.phase, &b.task, &b.attempt)));
        LogResponse { tasks, resume }
    }
}

/// An attempt's place on the board while it runs.
pub struct LogGuard {
    board: Arc<LogBoard>,
    key: Option<String>,
}

impl LogGuard {
    /// The attempt is over (however it ended) and its stderr complete at
    /// `stderr`: copies the file's last [`KEEP_TAIL`] bytes aside, so
    /// followers read them for a while after the task's directory goes.
    /// Blocking: call it off the async workers.
    pub fn ended(mut self, stderr: &Path) {
        let Some(k) = self.key.take() else { return };
        let kept_path = self.board.dir.join(k.replace('/', "."));
        let kept = match keep_tail(stderr, &kept_path) {
            Ok(kept) => Some(kept),
            Err(e) => {
                tracing::debug!(file = %stderr.display(), error = %e, "cannot keep an ended task's stderr for followers");
                let _ = std::fs::remove_file(&kept_path);
                None
            }
        };
        if let Ok(mut e) = self.board.entries.lock() {
            match (kept, e.get_mut(&k)) {
                (Some((base, bytes)), Some(entry)) => {
                    entry.source = Source::Ended {
                        kept: (bytes > 0).then_some(kept_path),
                        base,
                        bytes,
                        at: Instant::now(),
                    };
                }
                (kept, _) => {
                    e.remove(&k);
                    if matches!(kept, Some((_, b)) if b > 0) {
                        let _ = std::fs::remove_file(&kept_path);
                    }
                }
            }
        }
        self.board.sweep();
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            if let Ok(mut e) = self.board.entries.lock() {
                e.remove(&k);
            }
        }
    }
}

/// Copies the last [`KEEP_TAIL`] bytes of `stderr` to `kept` (nothing for
/// an empty file); returns where the copy began in the original, and its
/// length.
fn keep_tail(stderr: &Path, kept: &Path) -> std::io::Result<(u64, u64)> {
    let mut f = safe_open(stderr)?;
    let size = f.metadata()?.len();
    if size == 0 {
        return Ok((0, 0));
    }
    let base = size.saturating_sub(KEEP_TAIL);
    f.seek(SeekFrom::Start(base))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(kept)?;
    let copied = std::io::copy(&mut f.take(size - base), &mut out)?;
    out.flush()?;
    Ok((base, copied))
}

/// Opens a task's stderr to read without changing it: a plain file of
/// the node's with one name, never through a symbolic link.
fn safe_open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let f = crate::blob_store::open_no_follow(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.nlink() != 1 || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not the node's stderr file",
        ));
    }
    Ok(f)
}

/// Reads at most `max` bytes from `from`: up to the last newline while the
/// writer may go on, everything once it has `ended`. A line longer than
/// [`READ_PER_TASK`] comes in pieces of that size, cut where a UTF-8
/// sequence begins; a shorter one waits for a call with room for it.
/// Returns the text and the bytes it used.
fn read_lines(path: &Path, from: u64, max: u64, ended: bool) -> std::io::Result<(String, u64)> {
    let mut f = match safe_open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    if from >= size || max == 0 {
        return Ok((String::new(), 0));
    }
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(max.min(size - from)).read_to_end(&mut buf)?;
    let full = buf.len() as u64 == max;
    let keep = if ended && !full {
        buf.len()
    } else if let Some(nl) = buf.iter().rposition(|&b| b == b'\n') {
        nl + 1
    } else if full && max == READ_PER_TASK {
        // One line longer than a read: a piece of it, not split inside a
        // character.
        match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
            Err(_) => buf.len(),
        }
    } else {
        0
    };
    buf.truncate(keep);
    Ok((String::from_utf8_lossy(&buf).into_owned(), keep as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(attempt: &str, phase: u32) -> LogLabel {
        LogLabel {
            tenant: "acme".into(),
            job: "j1".into(),
            attempt: attempt.into(),
            task: format!("task-{attempt}"),
            phase,
            input: "b/k".into(),
        }
    }

    #[test]
    fn running_tasks_give_whole_lines_and_ended_ones_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let board = LogBoard::new(dir.path().join("logs"));
        let task_dir = dir.path().join("t1");
        std::fs::create_dir(&task_dir).unwrap();
        let stderr = task_dir.join("stderr");
        std::fs::write(&stderr, "one\ntwo\nthr").unwrap();
        let guard = board.open(label("a1", 0), stderr.clone());
        let r = board.read("acme", "j1", &LogRequest::default());
        assert_eq!(r.tasks.len(), 1);
        assert_eq!(r.tasks[0].text, "one\ntwo\n");
        assert_eq!(r.tasks[0].next, 8);
        assert!(!r.tasks[0].ended);
        // Another tenant's job of the same name sees nothing.
        assert!(board
            .read("other", "j1", &LogRequest::default())
            .tasks
            .is_empty());
        guard.ended(&stderr);
        std::fs::remove_dir_all(&task_dir).unwrap();
        let mut req = LogRequest::default();
        req.from.insert("a1".into(), 8);
        let r = board.read("acme", "j1", &req);
        assert_eq!(r.tasks[0].text, "thr", "read after its directory went");
        assert!(r.tasks[0].ended);
        req.from.insert("a1".into(), 11);
        assert_eq!(board.read("acme", "j1", &req).tasks[0].text, "");
    }

    #[test]
    fn an_ended_attempt_keeps_only_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let board = LogBoard::new(dir.path().join("logs"));
        let stderr = dir.path().join("stderr");
        let line = format!("{}\n", "x".repeat(1023));
        std::fs::write(&stderr, line.repeat(1030)).unwrap();
        board.open(label("a1", 0), stderr.clone()).ended(&stderr);
        let kept: u64 = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(kept, KEEP_TAIL);
        // A follower that read nothing goes on from where the tail begins.
        let r = board.read("acme", "j1", &LogRequest::default());
        assert_eq!(r.tasks[0].next, 6 * 1024 + READ_PER_TASK);
        assert!(r.tasks[0].text.starts_with('x'));
    }

    #[test]
    fn a_long_line_comes_in_pieces_cut_between_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        // 'é' is two bytes: a cut at an odd offset would split one.
        let line = "é".repeat(READ_PER_TASK as usize);
        std::fs::write(&path, format!("a{line}\n")).unwrap();
        let (text, used) = read_lines(&path, 0, READ_PER_TASK, false).unwrap();
        assert_eq!(used, READ_PER_TASK - 1);
        assert!(text.starts_with('a') && !text.contains('\u{fffd}'));
        let (rest, _) = read_lines(&path, used, READ_PER_TASK, false).unwrap();
        assert!(rest.starts_with('é'));
        // With less room than a whole line, nothing rather than a piece.
        std::fs::write(&path, "a short line\n").unwrap();
        assert_eq!(read_lines(&path, 0, 5, false).unwrap().1, 0);
    }

    #[test]
    fn every_attempt_gets_its_turn_when_the_budget_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let board = LogBoard::new(dir.path().join("logs"));
        let mut guards = Vec::new();
        let per = READ_PER_TASK as usize;
        let n = (READ_PER_CALL / READ_PER_TASK) as usize + 4;
        for i in 0..n {
            let p = dir.path().join(format!("e{i}"));
            std::fs::write(&p, format!("{}\n", "y".repeat(per - 1))).unwrap();
            guards.push(board.open(label(&format!("a{i:02}"), 0), p));
        }
        let mut got = std::collections::BTreeSet::new();
        let mut req = LogRequest::default();
        for _ in 0..2 {
            let r = board.read("acme", "j1", &req);
            for t in r.tasks {
                if !t.text.is_empty() {
                    got.insert(t.attempt.clone());
                    req.from.insert(t.attempt, t.next);
                }
            }
            req.start = r.resume;
        }
        assert_eq!(got.len(), n, "every attempt read within two calls");
    }

    #[test]
    fn filters_bad_ids_and_a_replaced_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let board = LogBoard::new(dir.path().join("logs"));
        let a = dir.path().join("a");
        std::fs::write(&a, "from a\n").unwrap();
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let _ga = board.open(label("a", 0), a.clone());
        let _gb = board.open(label("b", 1), b);
        let req = LogRequest {
            phase: Some(1),
            ..Default::default()
        };
        let r = board.read("acme", "j1", &req);
        assert_eq!(r.tasks.len(), 1);
        assert_eq!(r.tasks[0].text, "", "a symbolic link is not followed");
        let req = LogRequest {
            task: Some("task-a".into()),
            ..Default::default()
        };
        assert_eq!(board.read("acme", "j1", &req).tasks[0].text, "from a\n");
        // An id that could not name a file is not registered.
        board.open(label("../x", 0), a.clone()).ended(&a);
        assert!(std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .next()
            .is_none());
    }
}
