//! `insitu job logs`: what a job's running tasks write to stderr, read
//! from the nodes as they write it. Every node keeps its tasks' stderr
//! while they run and a little after (`insitu_storage_node::task_logs`);
//! this polls the nodes with the offsets read so far and turns what comes
//! back into labelled lines. Any gateway can serve it, whichever drives
//! the job.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use insitu_node_api::{LogChunk, LogRequest};
use tokio::sync::mpsc;

use crate::{JobError, Supervisor};

/// How often a follower asks the nodes when nothing came; and the least
/// pause between rounds when something did.
const POLL: Duration = Duration::from_millis(250);
const MIN_PAUSE: Duration = Duration::from_millis(50);
/// Rounds a one-off read makes at most while nodes still have more.
const SNAPSHOT_ROUNDS: usize = 16;
/// Rounds a follower makes at most after its job ended, waiting for every
/// up node to answer with nothing new.
const ROUNDS_AFTER_END: usize = 40;
/// Most bytes of one message to the reader, and messages queued for a
/// slow one before the poller waits: at most 1 MiB held per follower.
const MESSAGE_BYTES: usize = 64 << 10;
const QUEUED_MESSAGES: usize = 16;
/// Most bytes of an input's name in a line's label.
const LABEL_INPUT_BYTES: usize = 256;
/// Log streams one tenant may have open on one gateway at once.
pub const MAX_FOLLOWERS_PER_TENANT: usize = 16;

/// Which tasks' lines to show.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub phase: Option<u32>,
    pub task: Option<String>,
}

impl Supervisor {
    /// A stream of the job's stderr lines, each labelled with its task and
    /// input when the job has several tasks. With `follow`, it goes on
    /// until the job ends (and its last lines are read); without, it
    /// gives what the running tasks wrote so far. Ends when the receiver
    /// is dropped.
    pub async fn logs(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        filter: LogFilter,
        follow: bool,
    ) -> Result<mpsc::Receiver<String>, JobError> {
        let rec = self.get(tenant, id).await?;
        let tasks: u64 = rec.phases.iter().map(|p| p.tasks).sum();
        let labelled = !(rec.inputs_complete() && tasks == 1);
        let seat = FollowerSeat::take(self, tenant)?;
        let (tx, rx) = mpsc::channel(QUEUED_MESSAGES);
        let (sv, tenant, id) = (self.clone(), tenant.to_string(), id.to_string());
        tokio::spawn(async move {
            let _seat = seat;
            let mut poller = Poller {
                sv,
                tenant,
                job: id,
                filter,
                labelled,
                cursors: HashMap::new(),
                starts: HashMap::new(),
            };
            poller.run(&tx, follow).await;
        });
        Ok(rx)
    }
}

/// One of a tenant's log streams on this gateway, given back when the
/// stream ends.
struct FollowerSeat {
    sv: Arc<Supervisor>,
    tenant: String,
}

impl FollowerSeat {
    fn take(sv: &Arc<Supervisor>, tenant: &str) -> Result<Self, JobError> {
        let mut f = sv
            .followers
            .lock()
            .map_err(|_| JobError::Unavailable("log streams are unavailable".into()))?;
        let n = f.entry(tenant.to_string()).or_default();
        if *n >= MAX_FOLLOWERS_PER_TENANT {
            return Err(JobError::Unavailable(format!(
                "{MAX_FOLLOWERS_PER_TENANT} log streams of this tenant are open on this gateway (the limit); retry when one ends"
            )));
        }
        *n += 1;
        Ok(Self {
            sv: sv.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for FollowerSeat {
    fn drop(&mut self) {
        if let Ok(mut f) = self.sv.followers.lock() {
            if let Some(n) = f.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    f.remove(&self.tenant);
                }
            }
        }
    }
}

struct Poller {
    sv: Arc<Supervisor>,
    tenant: String,
    job: String,
    filter: LogFilter,
    labelled: bool,
    /// Per node, the offsets read of each attempt it still knows.
    cursors: HashMap<String, BTreeMap<String, u64>>,
    /// Per node, the attempt its next read begins with.
    starts: HashMap<String, String>,
}

/// What one round over the nodes brought.
struct Round {
    /// Bytes of text sent.
    wrote: usize,
    /// Every node that is up answered.
    all_answered: bool,
}

impl Poller {
    async fn run(&mut self, tx: &mpsc::Sender<String>, follow: bool) {
        let (mut rounds, mut after_end) = (0, 0);
        loop {
            // Read before the round: a round that starts after the job
            // ended sees every line its tasks wrote.
            let ended = match self.sv.get(&self.tenant, &self.job).await {
                Ok(rec) => rec.state.is_final(),
                Err(JobError::NotFound(_)) => true,
                Err(_) => false,
            };
            let Some(round) = self.round(tx).await else {
                return; // the reader is gone
            };
            rounds += 1;
            after_end += usize::from(ended);
            let done = match follow {
                true => {
                    ended
                        && ((round.wrote == 0 && round.all_answered)
                            || after_end >= ROUNDS_AFTER_END)
                }
                false => round.wrote == 0 || rounds >= SNAPSHOT_ROUNDS,
            };
            if done {
                return;
            }
            let pause = if round.wrote == 0 { POLL } else { MIN_PAUSE };
            tokio::time::sleep(pause).await;
        }
    }

    /// Asks every node that is up once; `None` once the reader is gone.
    async fn round(&mut self, tx: &mpsc::Sender<String>) -> Option<Round> {
        let mut round = Round {
            wrote: 0,
            all_answered: true,
        };
        for node in self.sv.nodes.node_ids() {
            if !self.sv.nodes.is_up(&node) {
                continue;
            }
            let req = LogRequest {
                from: self.cursors.get(&node).cloned().unwrap_or_default(),
                phase: self.filter.phase,
                task: self.filter.task.clone(),
                start: self.starts.get(&node).cloned(),
            };
            let answer = self
                .sv
                .nodes
                .read_logs(&node, &self.tenant, &self.job, &req)
                .await;
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "cannot read task logs from a node");
                    round.all_answered = false;
                    continue;
                }
            };
            match resp.resume {
                Some(a) => self.starts.insert(node.clone(), a),
                None => self.starts.remove(&node),
            };
            // Attempts the node no longer lists are over and forgotten
            // there: only the ones it lists are kept.
            let mut next = BTreeMap::new();
            for chunk in resp.tasks {
                next.insert(chunk.attempt.clone(), chunk.next);
                if chunk.text.is_empty() {
                    continue;
                }
                for message in format_chunk(&chunk, self.labelled) {
                    round.wrote += message.len();
                    tx.send(message).await.ok()?;
                }
            }
            self.cursors.insert(node, next);
        }
        if tx.is_closed() {
            return None;
        }
        Some(round)
    }
}

/// A chunk's lines, each ended by a newline and labelled when the job has
/// several tasks, in messages of at most about [`MESSAGE_BYTES`].
fn format_chunk(chunk: &LogChunk, labelled: bool) -> Vec<String> {
    let label = match labelled {
        true => format!(
            "[{} {}] ",
            chunk.task,
            clip(&chunk.input, LABEL_INPUT_BYTES)
        ),
        false => String::new(),
    };
    let mut messages = Vec::new();
    let mut out = String::new();
    for line in chunk.text.split_inclusive('\n') {
        if !out.is_empty() && out.len() + label.len() + line.len() + 1 > MESSAGE_BYTES {
            messages.push(std::mem::take(&mut out));
        }
        out.push_str(&label);
        out.push_str(line);
        if !line.ends_with('\n') {
            out.push('\n');
        }
    }
    if !out.is_empty() {
        messages.push(out);
    }
    messages
}

/// `s` cut to at most `max` bytes, at a character boundary, marked `…`.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_clipped_and_messages_bounded() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("ééé", 3), "é…");
        // A chunk of bare newlines: a label on each, in bounded messages.
        let chunk = LogChunk {
            attempt: "m1-a1".into(),
            task: "m1".into(),
            phase: 0,
            input: "b/k".into(),
            text: "\n".repeat(64 << 10),
            next: 0,
            ended: false,
        };
        let messages = format_chunk(&chunk, true);
        assert!(messages.iter().all(|m| m.len() <= MESSAGE_BYTES));
        let total: usize = messages.iter().map(String::len).sum();
        assert_eq!(total, (64 << 10) * ("[m1 b/k] ".len() + 1));
        assert_eq!(format_chunk(&chunk, false).concat().len(), 64 << 10);
        // A piece of a line without its newline still ends one.
        let piece = LogChunk {
            text: "abc".into(),
            ..chunk
        };
        assert_eq!(format_chunk(&piece, true), vec!["[m1 b/k] abc\n"]);
    }
}
