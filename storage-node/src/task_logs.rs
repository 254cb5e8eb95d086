//! What running tasks write to stderr, readable while they run: the node's
//! side of `insitu job logs`. Each attempt is registered when it starts;
//! when it ends, its stderr file is moved aside and kept for
//! [`KEEP_ENDED`], so a follower polling the node still reads its last
//! lines. Reads go by offsets the caller keeps, and give whole lines.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use insitu_node_api::{LogChunk, LogRequest, LogResponse};

/// How long an ended attempt's stderr stays readable: a few of a
/// follower's polls.
pub const KEEP_ENDED: Duration = Duration::from_secs(30);
/// Most bytes read from one attempt's stderr per call; a line longer
/// than this comes in pieces.
pub const READ_PER_TASK: u64 = 64 << 10;
/// Most bytes of text in one answer; the rest comes next call.
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

struct Entry {
    label: LogLabel,
    /// The stderr file: in the task's directory while it runs, in the
    /// board's own directory once it ended.
    path: PathBuf,
    ended: Option<Instant>,
}

/// The attempts whose stderr can be read, by `tenant/job/attempt`.
pub struct LogBoard {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

fn key(tenant: &str, job: &str, attempt: &str) -> String {
    format!("{tenant}/{job}/{attempt}")
}

impl LogBoard {
    /// A board keeping ended attempts' files in `dir` (emptied: what an
    /// earlier process kept is nobody's now).
    /// Without the directory, ended attempts are forgotten at once.
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
    /// keeps or forgets it when the attempt is over.
    pub fn open(self: &Arc<Self>, label: LogLabel, path: PathBuf) -> LogGuard {
        let k = key(&label.tenant, &label.job, &label.attempt);
        self.sweep();
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                k.clone(),
                Entry {
                    label,
                    path,
                    ended: None,
                },
            );
        }
        LogGuard {
            board: self.clone(),
            key: Some(k),
        }
    }

    /// Removes what ended more than [`KEEP_ENDED`] ago.
    fn sweep(&self) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|_, e| match e.ended {
            Some(t) if t.elapsed() > KEEP_ENDED => {
                let _ = std::fs::remove_file(&e.path);
                false
            }
            _ => true,
        });
    }

    /// Reads a job's attempts past the caller's offsets (blocking file
    /// reads: call it off the async workers).
    pub fn read(&self, tenant: &str, job: &str, req: &LogRequest) -> LogResponse {
        self.sweep();
        let wanted: Vec<(LogLabel, PathBuf, bool)> = match self.entries.lock() {
            Ok(entries) => entries
                .values()
                .filter(|e| e.label.tenant == tenant && e.label.job == job)
                .filter(|e| req.phase.is_none_or(|p| p == e.label.phase))
                .filter(|e| req.task.as_deref().is_none_or(|t| t == e.label.task))
                .map(|e| (e.label.clone(), e.path.clone(), e.ended.is_some()))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut budget = READ_PER_CALL;
        let mut tasks = Vec::with_capacity(wanted.len());
        for (label, path, ended) in wanted {
            let from = req.from.get(&label.attempt).copied().unwrap_or(0);
            let want = budget.min(READ_PER_TASK);
            let (text, used) = match read_lines(&path, from, want, ended) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(attempt = %label.attempt, error = %e, "cannot read a task's stderr");
                    (String::new(), 0)
                }
            };
            budget -= used.min(budget);
            tasks.push(LogChunk {
                attempt: label.attempt,
                task: label.task,
                phase: label.phase,
                input: label.input,
                text,
                next: from + used,
                ended,
            });
        }
        tasks.sort_by(|a, b| (a.phase, &a.task, &a.attempt).cmp(&(b.phase, &b.task, &b.attempt)));
        LogResponse { tasks }
    }
}

/// An attempt's place on the board while it runs.
pub struct LogGuard {
    board: Arc<LogBoard>,
    key: Option<String>,
}

impl LogGuard {
    /// The attempt ended and its stderr is complete at `stderr`: moves it
    /// aside (before its directory goes) and keeps it a while.
    pub fn ended(mut self, stderr: &Path) {
        let Some(k) = self.key.take() else { return };
        let kept = self.board.dir.join(k.replace('/', "."));
        // A plain file of the node's (the task may have replaced it).
        let moved = match safe_open(stderr).and_then(|_| std::fs::rename(stderr, &kept)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(file = %stderr.display(), error = %e, "cannot keep an ended task's stderr for followers");
                false
            }
        };
        if let Ok(mut e) = self.board.entries.lock() {
            match (moved, e.get_mut(&k)) {
                (true, Some(entry)) => {
                    entry.path = kept;
                    entry.ended = Some(Instant::now());
                }
                _ => {
                    e.remove(&k);
                }
            }
        }
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

/// Opens a task's stderr to read without changing it: a plain file of
/// root's with one name, never through a symbolic link (the task owns the
/// directory it is in).
fn safe_open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.nlink() != 1 || m.uid() != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not the node's stderr file",
        ));
    }
    Ok(f)
}

/// Reads at most `max` bytes from `from`: up to the last newline while the
/// writer may go on (or `max` bytes of one long line, cut where a UTF-8
/// sequence begins), everything once it has `ended`. Returns the text and
/// the bytes it used.
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
    } else if full {
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
        assert!(!stderr.exists(), "moved aside before its directory goes");
        let mut req = LogRequest::default();
        req.from.insert("a1".into(), 8);
        let r = board.read("acme", "j1", &req);
        assert_eq!(r.tasks[0].text, "thr");
        assert!(r.tasks[0].ended);
        req.from.insert("a1".into(), 11);
        assert_eq!(board.read("acme", "j1", &req).tasks[0].text, "");
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
    }

    #[test]
    fn filters_and_a_replaced_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let board = LogBoard::new(dir.path().join("logs"));
        let a = dir.path().join("a");
        std::fs::write(&a, "from a\n").unwrap();
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let _ga = board.open(label("a", 0), a);
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
    }
}
