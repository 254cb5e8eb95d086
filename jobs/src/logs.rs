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

/// How often a follower asks the nodes.
const POLL: Duration = Duration::from_millis(250);
/// Rounds a one-off read makes at most while nodes still have more.
const SNAPSHOT_ROUNDS: usize = 16;
/// Chunks of text queued for a slow reader before the poller waits.
const QUEUED_CHUNKS: usize = 16;

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
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (sv, tenant, id) = (self.clone(), tenant.to_string(), id.to_string());
        tokio::spawn(async move {
            let mut poller = Poller {
                sv,
                tenant,
                job: id,
                filter,
                labelled,
                cursors: HashMap::new(),
            };
            poller.run(&tx, follow).await;
        });
        Ok(rx)
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
}

impl Poller {
    async fn run(&mut self, tx: &mpsc::Sender<String>, follow: bool) {
        let mut rounds = 0;
        loop {
            // Read before the round: a round that starts after the job
            // ended sees every line its tasks wrote.
            let ended = match self.sv.get(&self.tenant, &self.job).await {
                Ok(rec) => rec.state.is_final(),
                Err(JobError::NotFound(_)) => true,
                Err(_) => false,
            };
            let wrote = match self.round(tx).await {
                Some(n) => n,
                None => return, // the reader is gone
            };
            rounds += 1;
            let done = match follow {
                true => ended && wrote == 0,
                false => wrote == 0 || rounds >= SNAPSHOT_ROUNDS,
            };
            if done {
                return;
            }
            if wrote == 0 {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Asks every node that is up once; the bytes of text sent, or `None`
    /// once the reader is gone.
    async fn round(&mut self, tx: &mpsc::Sender<String>) -> Option<usize> {
        let mut wrote = 0;
        for node in self.sv.nodes.node_ids() {
            if !self.sv.nodes.is_up(&node) {
                continue;
            }
            let req = LogRequest {
                from: self.cursors.get(&node).cloned().unwrap_or_default(),
                phase: self.filter.phase,
                task: self.filter.task.clone(),
            };
            let resp = match self
                .sv
                .nodes
                .read_logs(&node, &self.tenant, &self.job, &req)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "cannot read task logs from a node");
                    continue;
                }
            };
            // Attempts the node no longer lists are over and forgotten
            // there: only the ones it lists are kept.
            let mut next = BTreeMap::new();
            for chunk in resp.tasks {
                next.insert(chunk.attempt.clone(), chunk.next);
                if chunk.text.is_empty() {
                    continue;
                }
                let text = self.format(&chunk);
                wrote += text.len();
                tx.send(text).await.ok()?;
            }
            self.cursors.insert(node, next);
        }
        if tx.is_closed() {
            return None;
        }
        Some(wrote)
    }

    /// A chunk's lines, each ended by a newline, labelled when the job has
    /// several tasks.
    fn format(&self, chunk: &LogChunk) -> String {
        let mut out = String::with_capacity(chunk.text.len() + 64);
        for line in chunk.text.split_inclusive('\n') {
            if self.labelled {
                out.push_str(&format!("[{} {}] ", chunk.task, chunk.input));
            }
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}
