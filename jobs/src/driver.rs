//! One job's driver loop: expands its inputs, dispatches map tasks, starts
//! reducers when their input can come, commits what finished, and ends
//! the job.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use insitu_catalog::{JobChange, ListQuery};
use insitu_job_model::plan::{self, Downstream};
use insitu_job_model::records::{ErrorRecord, JobRecord, JobState, TaskRecord, TaskState};
use insitu_job_model::{JobErrorCode, PhaseKind};
use tracing::Instrument;

use crate::active::*;
use crate::attempt::*;
use crate::commit::*;
use crate::error::*;
use crate::inputs::*;
use crate::placement::*;
use crate::reducer::*;
use crate::Supervisor;

/// Queued map tasks kept in memory per job; the rest wait in the catalog.
pub(crate) const BACKLOG: usize = 256;

/// How far into the backlog the dispatcher looks for a task whose holders
/// have a free slot.
pub(crate) const LOOKAHEAD: usize = 64;

pub(super) async fn drive(sv: Arc<Supervisor>, job: Arc<ActiveJob>) {
    let (tenant, id) = {
        let r = job.record.lock().await;
        (r.tenant.clone(), r.id.clone())
    };
    let span = tracing::info_span!("job", tenant = %tenant, job = %id);
    // However the driver ends (a panic included), its entry goes, so the
    // job's lease finds no driver and the next turn starts a new one.
    let _entry = ActiveEntry {
        sv: sv.clone(),
        job: job.clone(),
    };
    drive_job(sv, job).instrument(span).await;
}

/// A driver's place among the gateway's active jobs, removed on drop.
pub(crate) struct ActiveEntry {
    pub(crate) sv: Arc<Supervisor>,
    pub(crate) job: Arc<ActiveJob>,
}

impl Drop for ActiveEntry {
    fn drop(&mut self) {
        if let Ok(mut active) = self.sv.active.lock() {
            // Only this driver's entry: a newer epoch's driver may have it.
            if active
                .get(&self.job.id)
                .is_some_and(|a| Arc::ptr_eq(a, &self.job))
            {
                active.remove(&self.job.id);
            }
        }
    }
}

/// Records a queued job as running; false if the catalog did not take it
/// (the driver tries again on its next turn).
async fn mark_running(sv: &Arc<Supervisor>, job: &ActiveJob) -> bool {
    if job.record.lock().await.state != JobState::Queued {
        return true;
    }
    let Ok(mut rec) = job.lock_settled(sv).await else {
        return false;
    };
    if rec.state != JobState::Queued {
        return true;
    }
    let mut new = rec.clone();
    new.state = JobState::Running;
    let mut step = JobChange::default();
    step.put_job(&new);
    match job.commit(sv, step).await {
        Ok(()) => {
            *rec = new;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the job as running; will retry");
            false
        }
    }
}

pub(crate) async fn drive_job(sv: Arc<Supervisor>, job: Arc<ActiveJob>) {
    let phases = job.record.lock().await.spec.phases.len();
    let mut cursor: Option<u64> = None;
    let mut backlog: VecDeque<TaskRecord> = VecDeque::new();
    let mut inflight: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
    let mut in_flight_tasks: HashMap<String, TaskRecord> = HashMap::new();
    let mut reducers_started = vec![false; phases];
    let mut reducers_running: std::collections::HashSet<(usize, u32)> = Default::default();
    // Finished tasks whose commit waits for the catalog to come back.
    let mut uncommitted: Vec<Finished> = Vec::new();
    // Tasks just finished: committed once what their slots let start has
    // been sent, so the nodes do not wait on the catalog.
    let mut fresh: Vec<Finished> = Vec::new();
    loop {
        if job.is_lost() {
            // Another gateway drives the job now; what runs here is
            // abandoned (its outputs can no longer be committed).
            break;
        }
        if !mark_running(&sv, &job).await {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if job.record.lock().await.state == JobState::Cancelled {
            drop(inflight);
            let aborted = in_flight_tasks.into_values();
            let unrecorded = uncommitted.into_iter().chain(fresh).map(|f| f.task);
            cancelled(&sv, &job, aborted.chain(unrecorded).collect()).await;
            break;
        }
        if !uncommitted.is_empty() {
            // Tried again every turn, while tasks in flight go on.
            uncommitted = commit_all(&sv, &job, std::mem::take(&mut uncommitted)).await;
        }
        let rec = job.record.lock().await.clone();
        if rec.prefix_cursor.is_some() && backlog.len() < BACKLOG {
            if let Err(e) = expand_prefix_page(&sv, &job).await {
                tracing::error!(error = %e, "listing the input prefix failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if backlog.len() < BACKLOG / 2 {
            refill(&sv, &rec.id, &mut cursor, &mut backlog).await;
        }
        // Map tasks: each to the least-loaded holder of its input that has
        // a free slot, or, past the job's locality wait, to another node.
        let mut starting: Vec<(TaskRecord, MapRun)> = Vec::new();
        let pass = Pass {
            sv: &sv,
            job: &job,
            rec: &rec,
        };
        let (mut waiting, placed) = pass
            .place(&mut backlog, false, &mut starting, &mut uncommitted)
            .await;
        // Delay scheduling: a job that starts nothing next to its input
        // while tasks wait for their holders' slots runs them elsewhere
        // once its wait is over. A full cluster leaves the clock as it is.
        match placed {
            _ if !starting.is_empty() => job.locality.stop(),
            Placed::Held if job.locality.waited(sv.config.locality_wait) => {
                waiting = pass
                    .place(&mut backlog, true, &mut starting, &mut uncommitted)
                    .await
                    .0;
                if starting.is_empty() {
                    // No other node would do (full, or no room): another
                    // wait before looking again.
                    job.locality.restart();
                }
            }
            Placed::Held | Placed::Blocked => {}
            Placed::Free => job.locality.stop(),
        }
        // What starts is recorded first, so that a gateway that takes the
        // job over knows which tasks an attempt had started (and counts
        // their new attempts as retries).
        if !starting.is_empty() {
            let tasks: Vec<&TaskRecord> = starting.iter().map(|(t, _)| t).collect();
            if record_starts(&sv, &job, &tasks).await {
                for (task, run) in starting.drain(..) {
                    adjust_running(&job, task.phase, 1);
                    in_flight_tasks.insert(task.id.clone(), task.clone());
                    let ctx = task_ctx(&job, &rec, task.phase);
                    inflight.push(spawned(run_map(sv.clone(), ctx, task, run)));
                }
            } else {
                // Not recorded (the catalog is away): they wait, and their
                // slots go back.
                backlog.extend(starting.drain(..).map(|(t, _)| t));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if let Ok(mut w) = job.waiting.lock() {
            *w = waiting;
        }
        let rec = if fresh.is_empty() {
            rec
        } else {
            let again = commit_all(&sv, &job, std::mem::take(&mut fresh)).await;
            uncommitted.extend(again);
            job.record.lock().await.clone()
        };
        // Reducers: once everything upstream has finished.
        for (k, started) in reducers_started.iter_mut().enumerate() {
            // Pipelined: a reduce phase starts as soon as the phase before
            // it has finished a task (or at once when it is the first).
            // A memoized reducer waits for all of its input: its
            // fingerprint names every piece.
            let can_start = match memoizes(&rec, k) {
                true => rec.upstream_done(k),
                false => k == 0 || rec.phases[k - 1].finished() > 0 || rec.upstream_done(k),
            };
            if *started || rec.spec.phases[k].kind != PhaseKind::Reduce || !can_start {
                continue;
            }
            *started = true;
            for r in 0..rec.spec.phases[k].reducers() {
                if reducers_running.contains(&(k, r)) {
                    continue;
                }
                let task = match sv.catalog.job_reducer(&rec.id, k as u32, r).await {
                    Ok(t) => t,
                    Err(e) => {
                        // Tried again on the next turn.
                        tracing::error!(error = %e, "cannot read a reducer's record");
                        *started = false;
                        continue;
                    }
                };
                let Some(task) = task.filter(|t| t.state == TaskState::Queued) else {
                    continue;
                };
                if !record_starts(&sv, &job, &[&task]).await {
                    *started = false;
                    continue;
                }
                reducers_running.insert((k, r));
                adjust_running(&job, task.phase, 1);
                in_flight_tasks.insert(task.id.clone(), task.clone());
                let ctx = task_ctx(&job, &rec, k as u32);
                inflight.push(spawned(run_reducer(sv.clone(), job.clone(), ctx, task)));
            }
        }
        if inflight.is_empty() && backlog.is_empty() && uncommitted.is_empty() {
            let rec = job.record.lock().await.clone();
            if rec.state == JobState::Running && rec.upstream_done(phases) {
                finish(&sv, &job).await;
                break;
            }
        }
        tokio::select! {
            Some(fin) = inflight.next(), if !inflight.is_empty() => {
                // Commit every task that has finished by now in one batch.
                let mut done = vec![fin];
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    done.push(more);
                }
                let mut to_commit = Vec::with_capacity(done.len());
                for fin in done {
                    in_flight_tasks.remove(&fin.task.id);
                    adjust_running(&job, fin.task.phase, -1);
                    if matches!(fin.outcome, Outcome::Requeue) {
                        backlog.push_back(fin.task);
                    } else {
                        to_commit.push(fin);
                    }
                }
                fresh.extend(to_commit);
            }
            _ = job.wake.notified() => {}
            _ = tokio::time::sleep(tick(&sv, &job)) => {}
        }
    }
}

/// The longest a driver sleeps between turns when nothing wakes it; less
/// while its job's locality wait runs, so that it ends on time.
fn tick(sv: &Supervisor, job: &ActiveJob) -> Duration {
    const TURN: Duration = Duration::from_millis(250);
    match job.locality.left(sv.config.locality_wait) {
        Some(left) => left.clamp(Duration::from_millis(1), TURN),
        None => TURN,
    }
}

/// What a pass over the window found, besides the tasks it started.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Placed {
    /// A task waits only for its holders' slots, while another node has
    /// a free one.
    Held,
    /// Every up node's slots are taken (or the tenant is at its share).
    Blocked,
    /// Neither.
    Free,
}

/// One pass of a driver's turn over the window of queued map tasks.
struct Pass<'a> {
    sv: &'a Arc<Supervisor>,
    job: &'a Arc<ActiveJob>,
    rec: &'a JobRecord,
}

impl Pass<'_> {
    /// Each task of the window is placed (into `starting`), failed (its
    /// outcome committed) or left waiting, counted by why; with `away`, a
    /// task whose holders are full may go to another node. Also says
    /// what kept the rest waiting.
    async fn place(
        &self,
        backlog: &mut VecDeque<TaskRecord>,
        away: bool,
        starting: &mut Vec<(TaskRecord, MapRun)>,
        uncommitted: &mut Vec<Finished>,
    ) -> (HashMap<Waiting, u64>, Placed) {
        let (sv, job, rec) = (self.sv, self.job, self.rec);
        let mut waiting: HashMap<Waiting, u64> = HashMap::new();
        let mut placed = Placed::Free;
        let mut i = 0;
        let mut looked = 0;
        let window = backlog.len().min(LOOKAHEAD);
        // Each task of the window is looked at once (one put back at the
        // end for want of a live replica is not looked at again).
        while i < backlog.len().min(LOOKAHEAD) && looked < window {
            if let Some(why) = blocked(sv, &rec.tenant) {
                // The slots are taken: the rest of the window is not
                // looked up.
                *waiting.entry(why).or_default() += window.saturating_sub(looked) as u64;
                placed = Placed::Blocked;
                break;
            }
            looked += 1;
            match place_map(sv, rec, &backlog[i], away).await {
                Place::Wait(Waiting::NoLiveReplica) => {
                    // To the back: tasks whose inputs are on live nodes go
                    // first, rather than waiting behind it.
                    *waiting.entry(Waiting::NoLiveReplica).or_default() += 1;
                    if let Some(task) = backlog.remove(i) {
                        backlog.push_back(task);
                    }
                }
                Place::Wait(why) => {
                    if why == Waiting::NodeBusy {
                        placed = Placed::Held;
                    }
                    *waiting.entry(why).or_default() += 1;
                    i += 1;
                }
                Place::Fail(code, message) => {
                    let task = backlog.remove(i).unwrap_or_else(|| backlog[0].clone());
                    let fin = Finished {
                        task,
                        outcome: failed(code, message),
                        retries: 0,
                        bytes_local: 0,
                        bytes_remote: 0,
                        refused: Vec::new(),
                        _leases: Vec::new(),
                        retried: false,
                    };
                    uncommitted.extend(commit(sv, job, fin).await);
                }
                Place::Run(run) => {
                    let Some(task) = backlog.remove(i) else { break };
                    starting.push((task, run));
                }
            }
        }
        (waiting, placed)
    }
}

/// A task's future on a tokio task of its own. The driver polls its
/// tasks only between its own steps; a task future left unpolled
/// meanwhile could hold what the driver waits for (a PostgreSQL
/// transaction's row locks on the job, or the job's record lock handed
/// to it as the next waiter), and the two would wait on each other. The
/// task is aborted when this future is dropped (a cancelled or lost
/// job's tasks stop, as when their futures were dropped in place), and a
/// panic in it unwinds the driver, as before.
fn spawned(
    task: impl std::future::Future<Output = Finished> + Send + 'static,
) -> BoxFuture<'static, Finished> {
    let handle = tokio::spawn(task);
    let abort = AbortOnDrop(handle.abort_handle());
    async move {
        let _abort = abort;
        match handle.await {
            Ok(finished) => finished,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Aborted only once this future is gone, or the runtime
                // is shutting down: nothing waits for it.
                Err(_) => futures::future::pending().await,
            },
        }
    }
    .boxed()
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records that an attempt of each task starts now (its attempt count as
/// the attempt will have it); a task that an earlier attempt
/// had started without finishing (its driver stopped) counts a retry.
/// False if the catalog did not take it.
pub(crate) async fn record_starts(
    sv: &Arc<Supervisor>,
    job: &ActiveJob,
    tasks: &[&TaskRecord],
) -> bool {
    let Ok(mut rec) = job.lock_settled(sv).await else {
        return false;
    };
    let mut new = rec.clone();
    let mut step = JobChange::default();
    for task in tasks {
        if task.attempts > 0 {
            new.counters.retries += 1;
        }
        let mut started = (*task).clone();
        started.attempts += 1;
        match started.reducer {
            Some(_) => step.put_reducer(&rec.id, started),
            None => match plan::map_task_seq(&started.id) {
                Some(seq) => step.put_task(&rec.id, seq, started),
                None => return false,
            },
        }
    }
    step.put_job(&new);
    match job.commit(sv, step).await {
        Ok(()) => {
            *rec = new;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record task starts; they wait");
            false
        }
    }
}

pub(crate) fn task_ctx(active: &Arc<ActiveJob>, rec: &JobRecord, phase: u32) -> TaskCtx {
    let downstream = plan::downstream(&rec.spec, phase as usize);
    let split = match downstream {
        Downstream::ReduceByKey { count } => Some(count),
        _ => None,
    };
    let next_reducers = match downstream {
        Downstream::ReduceByKey { count } | Downstream::ReduceByName { count } => Some(count),
        _ => None,
    };
    let out = plan::OutputPlace::of(&rec.spec);
    TaskCtx {
        active: active.clone(),
        job: rec.id.clone(),
        tenant: rec.tenant.clone(),
        phase,
        spec: rec.spec.phases[phase as usize].clone(),
        split,
        output_place: format!("{}/{}", out.bucket, out.prefix),
        next_reducers,
        memoize: memoizes(rec, phase as usize),
    }
}

/// Whether the job memoizes phase `phase`'s tasks: its last phase, whose
/// outputs outlive the job (an earlier phase's are removed when it ends).
pub(crate) fn memoizes(rec: &JobRecord, phase: usize) -> bool {
    rec.spec.memoize && phase + 1 == rec.spec.phases.len()
}

/// Loads queued map tasks after `cursor` (a sequence number) into the
/// backlog.
pub(crate) async fn refill(
    sv: &Supervisor,
    job: &str,
    cursor: &mut Option<u64>,
    backlog: &mut VecDeque<TaskRecord>,
) {
    let page = match sv.catalog.job_tasks(job, *cursor, BACKLOG).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the job's tasks");
            return;
        }
    };
    for (seq, t) in page {
        *cursor = Some(seq);
        if t.state == TaskState::Queued {
            backlog.push_back(t);
        }
    }
}

/// Lists one page of the job's input prefix into inputs.
pub(crate) async fn expand_prefix_page(sv: &Supervisor, job: &ActiveJob) -> Result<(), JobError> {
    let mut rec = job.lock_settled(sv).await?;
    let Some(cursor) = rec.prefix_cursor.clone() else {
        return Ok(());
    };
    let location = rec.spec.input_prefix.clone().unwrap_or_default();
    let (bucket, prefix) = split(location.strip_prefix("s3://").unwrap_or(&location));
    let mut new = rec.clone();
    let mut step = JobChange::default();
    // Holds on the versions pinned, until the commit lands.
    let mut held = Vec::new();
    let denied = match sv.catalog.get_bucket(&bucket).await? {
        None => Some((
            JobErrorCode::ResourceNotFoundError,
            format!("bucket {bucket} does not exist"),
        )),
        Some(b) => {
            if may_list(&rec.tenant, &b) {
                None
            } else {
                Some((
                    JobErrorCode::AccessDeniedError,
                    format!("bucket {bucket} may not be listed by tenant {}", rec.tenant),
                ))
            }
        }
    };
    if let Some((code, message)) = denied {
        add_error(
            &mut step,
            &mut new,
            ErrorRecord {
                phase: 0,
                task: String::new(),
                input: location.clone(),
                code,
                message,
                stderr: None,
                node: None,
                input_etag: None,
            },
        );
        new.prefix_cursor = None;
    } else {
        let page = sv
            .catalog
            .list_objects(
                &bucket,
                &ListQuery {
                    prefix: prefix.clone(),
                    delimiter: None,
                    start_after: (!cursor.is_empty()).then_some(cursor),
                    max: 1000,
                },
            )
            .await?;
        let inputs: Vec<(String, String, u64)> = page
            .objects
            .iter()
            .map(|(k, o)| (bucket.clone(), k.clone(), o.size))
            .collect();
        held.extend(
            add_inputs(
                sv.catalog.as_ref(),
                sv.holds.as_ref(),
                &mut step,
                &mut new,
                &inputs,
            )
            .await?,
        );
        new.prefix_cursor = match (page.is_truncated, page.last) {
            (true, Some(last)) => Some(last),
            _ => None,
        };
    }
    step.put_job(&new);
    job.commit(sv, step).await?;
    *rec = new;
    Ok(())
}
