//! A job's driver: expands its inputs, dispatches map tasks to nodes that
//! hold their inputs, runs reducers once their input is complete, and
//! commits every outcome atomically with the job's state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use insitu_catalog::{
    now_ms, BlobRef, CannedAcl, JobChange, ListQuery, ObjectHeaders, ObjectRecord,
};
use insitu_jobs::plan::{self, Downstream, OutputPlace};
use insitu_jobs::records::{
    ErrorRecord, JobRecord, JobState, OutputRecord, PieceRecord, TaskRecord, TaskState,
};
use insitu_jobs::{ImageRef, JobErrorCode, PhaseKind, PhaseSpec};
use insitu_node_api::{TaskEndReport, TaskRequest, TaskResponse};
use tracing::Instrument;

use super::{
    add_error, add_inputs, add_map_task, check_input, may_read, output_bucket, split, ActiveJob,
};
use crate::cluster::InflightGuard;
use crate::nodes::{NodeError, NodeState};
use crate::s3::put::new_blob_id;
use crate::Gateway;

/// Queued map tasks kept in memory per job; the rest wait in the catalog.
const BACKLOG: usize = 256;
/// How far into the backlog the dispatcher looks for a task whose holders
/// have a free slot.
const LOOKAHEAD: usize = 64;
/// Attempts per task: the first and at most two retries.
const MAX_ATTEMPTS: u32 = 3;
/// Time allowed beyond a task's own timeout (image pull or load, copies).
const DEADLINE_SLACK: Duration = Duration::from_secs(900);

pub(crate) fn running_counts(job: &ActiveJob) -> (Vec<u64>, Vec<u64>) {
    (
        job.running.lock().map(|r| r.clone()).unwrap_or_default(),
        job.preparing.lock().map(|r| r.clone()).unwrap_or_default(),
    )
}

fn adjust(counts: &std::sync::Mutex<Vec<u64>>, phase: u32, delta: i64) {
    if let Ok(mut r) = counts.lock() {
        if let Some(n) = r.get_mut(phase as usize) {
            *n = n.saturating_add_signed(delta);
        }
    }
}

fn adjust_running(job: &ActiveJob, phase: u32, delta: i64) {
    adjust(&job.running, phase, delta);
}

/// A blob a task produced, and the nodes holding it.
#[derive(Debug, Clone)]
struct Blob {
    id: String,
    size: u64,
    md5: String,
    replicas: Vec<String>,
}

#[derive(Debug)]
enum Outcome {
    Success {
        stdout: Option<Blob>,
        pieces: Vec<(u32, Blob)>,
    },
    Failed {
        code: JobErrorCode,
        message: String,
        stderr: Option<Blob>,
    },
    /// Not run: no holder of the input is reachable now.
    Requeue,
}

fn failed(code: JobErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        code,
        message: message.into(),
        stderr: None,
    }
}

struct Finished {
    task: TaskRecord,
    outcome: Outcome,
    retries: u64,
    bytes_local: u64,
    bytes_remote: u64,
    /// Inputs a reducer was refused when it came to read them.
    refused: Vec<ErrorRecord>,
    /// Keep the task's blobs from the orphan sweep until committed.
    _leases: Vec<InflightGuard>,
}

/// A task slot on a node, released when dropped.
struct Slot {
    gw: Arc<Gateway>,
    node: String,
    tenant: String,
}

impl Slot {
    fn take(gw: &Arc<Gateway>, node: &str, tenant: &str) -> Self {
        gw.jobs.take_slot(node, tenant);
        Self {
            gw: gw.clone(),
            node: node.to_string(),
            tenant: tenant.to_string(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gw.jobs.release_slot(&self.node, &self.tenant);
    }
}

/// What one attempt of a task needs to know about its job.
#[derive(Clone)]
struct TaskCtx {
    active: Arc<ActiveJob>,
    job: String,
    tenant: String,
    phase: u32,
    spec: PhaseSpec,
    split: Option<u32>,
}

enum AttemptError {
    /// An internal failure: worth another attempt elsewhere.
    Retry(String),
    Fail(JobErrorCode, String),
}

pub(super) async fn drive(gw: Arc<Gateway>, job: Arc<ActiveJob>) {
    let (tenant, id) = {
        let r = job.record.lock().await;
        (r.tenant.clone(), r.id.clone())
    };
    let span = tracing::info_span!("job", tenant = %tenant, job = %id);
    // However the driver ends (a panic included), its entry goes, so the
    // job's lease finds no driver and the next turn starts a new one.
    let _entry = ActiveEntry {
        gw: gw.clone(),
        job: job.clone(),
    };
    drive_job(gw, job).instrument(span).await;
}

/// A driver's place among the gateway's active jobs, removed on drop.
struct ActiveEntry {
    gw: Arc<Gateway>,
    job: Arc<ActiveJob>,
}

impl Drop for ActiveEntry {
    fn drop(&mut self) {
        if let Ok(mut active) = self.gw.jobs.active.lock() {
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

async fn drive_job(gw: Arc<Gateway>, job: Arc<ActiveJob>) {
    {
        let mut rec = job.record.lock().await;
        if rec.state == JobState::Queued {
            let mut new = rec.clone();
            new.state = JobState::Running;
            let mut step = JobChange::default();
            step.put_job(&new);
            if job.commit(&gw, step).await.is_ok() {
                *rec = new;
            }
        }
    }
    let phases = job.record.lock().await.spec.phases.len();
    let mut cursor: Option<u64> = None;
    let mut backlog: VecDeque<TaskRecord> = VecDeque::new();
    let mut inflight: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
    let mut in_flight_tasks: HashMap<String, TaskRecord> = HashMap::new();
    let mut reducers_started = vec![false; phases];
    let mut reducers_running: std::collections::HashSet<(usize, u32)> = Default::default();
    loop {
        if job.is_lost() {
            // Another gateway drives the job now; what runs here is
            // abandoned (its outputs can no longer be committed).
            break;
        }
        let rec = job.record.lock().await.clone();
        if rec.state == JobState::Cancelled {
            drop(inflight);
            cancelled(&gw, &job, in_flight_tasks.into_values().collect()).await;
            break;
        }
        if rec.prefix_cursor.is_some() && backlog.len() < BACKLOG {
            if let Err(e) = expand_prefix_page(&gw, &job).await {
                tracing::error!(error = %e, "listing the input prefix failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if backlog.len() < BACKLOG / 2 {
            refill(&gw, &rec.id, &mut cursor, &mut backlog).await;
        }
        // Map tasks: each to the least-loaded holder of its input that has
        // a free slot.
        let mut i = 0;
        let mut starting: Vec<(TaskRecord, MapRun)> = Vec::new();
        let mut waiting: HashMap<Waiting, u64> = HashMap::new();
        let mut looked = 0;
        while i < backlog.len().min(LOOKAHEAD) && looked < LOOKAHEAD {
            looked += 1;
            match place_map(&gw, &rec, &backlog[i]).await {
                Place::Wait(Waiting::NoLiveReplica) => {
                    // To the back: tasks whose inputs are on live nodes go
                    // first, rather than waiting behind it.
                    *waiting.entry(Waiting::NoLiveReplica).or_default() += 1;
                    if let Some(task) = backlog.remove(i) {
                        backlog.push_back(task);
                    }
                }
                Place::Wait(why) => {
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
                    };
                    commit(&gw, &job, fin).await;
                }
                Place::Run(run) => {
                    let Some(task) = backlog.remove(i) else { break };
                    starting.push((task, run));
                }
            }
        }
        // What starts is recorded first, so that a gateway that takes the
        // job over knows which tasks an attempt had started (and counts
        // their new attempts as retries).
        if !starting.is_empty() {
            let tasks: Vec<&TaskRecord> = starting.iter().map(|(t, _)| t).collect();
            if record_starts(&gw, &job, &tasks).await {
                for (task, run) in starting.drain(..) {
                    adjust_running(&job, task.phase, 1);
                    in_flight_tasks.insert(task.id.clone(), task.clone());
                    let ctx = task_ctx(&job, &rec, task.phase);
                    inflight.push(run_map(gw.clone(), ctx, task, run).boxed());
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
        // Reducers: once everything upstream has finished.
        for (k, started) in reducers_started.iter_mut().enumerate() {
            // Pipelined: a reduce phase starts as soon as the phase before
            // it has finished a task (or at once when it is the first).
            let can_start = k == 0 || rec.phases[k - 1].finished() > 0 || rec.upstream_done(k);
            if *started || rec.spec.phases[k].kind != PhaseKind::Reduce || !can_start {
                continue;
            }
            *started = true;
            for r in 0..rec.spec.phases[k].reducers() {
                if reducers_running.contains(&(k, r)) {
                    continue;
                }
                let task = match gw.catalog.job_reducer(&rec.id, k as u32, r).await {
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
                if !record_starts(&gw, &job, &[&task]).await {
                    *started = false;
                    continue;
                }
                reducers_running.insert((k, r));
                adjust_running(&job, task.phase, 1);
                in_flight_tasks.insert(task.id.clone(), task.clone());
                let ctx = task_ctx(&job, &rec, k as u32);
                inflight.push(run_reducer(gw.clone(), job.clone(), ctx, task).boxed());
            }
        }
        if inflight.is_empty() && backlog.is_empty() {
            let rec = job.record.lock().await.clone();
            if rec.state == JobState::Running && rec.upstream_done(phases) {
                finish(&gw, &job).await;
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
                commit_all(&gw, &job, to_commit).await;
            }
            _ = job.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Records that an attempt of each task starts now (its attempt count as
/// the attempt will have it); a task that an earlier attempt
/// had started without finishing (its driver stopped) counts a retry.
/// False if the catalog did not take it.
async fn record_starts(gw: &Arc<Gateway>, job: &ActiveJob, tasks: &[&TaskRecord]) -> bool {
    let mut rec = job.record.lock().await;
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
    match job.commit(gw, step).await {
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

fn task_ctx(active: &Arc<ActiveJob>, rec: &JobRecord, phase: u32) -> TaskCtx {
    let split = match plan::downstream(&rec.spec, phase as usize) {
        Downstream::ReduceByKey { count } => Some(count),
        _ => None,
    };
    TaskCtx {
        active: active.clone(),
        job: rec.id.clone(),
        tenant: rec.tenant.clone(),
        phase,
        spec: rec.spec.phases[phase as usize].clone(),
        split,
    }
}

/// Loads queued map tasks after `cursor` (a sequence number) into the
/// backlog.
async fn refill(
    gw: &Gateway,
    job: &str,
    cursor: &mut Option<u64>,
    backlog: &mut VecDeque<TaskRecord>,
) {
    let page = match gw.catalog.job_tasks(job, *cursor, BACKLOG).await {
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
async fn expand_prefix_page(gw: &Gateway, job: &ActiveJob) -> Result<(), super::JobError> {
    let mut rec = job.record.lock().await;
    let Some(cursor) = rec.prefix_cursor.clone() else {
        return Ok(());
    };
    let location = rec.spec.input_prefix.clone().unwrap_or_default();
    let (bucket, prefix) = split(location.strip_prefix("s3://").unwrap_or(&location));
    let mut new = rec.clone();
    let mut step = JobChange::default();
    let denied = match gw.catalog.get_bucket(&bucket).await? {
        None => Some((
            JobErrorCode::ResourceNotFoundError,
            format!("bucket {bucket} does not exist"),
        )),
        Some(b) => {
            let p = crate::auth::Principal::User {
                tenant: rec.tenant.clone(),
                access_key_id: String::new(),
                is_root: false,
            };
            if crate::s3::access::is_owner(&p, &b) || crate::s3::access::acl_allows_read(&p, b.acl)
            {
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
            },
        );
        new.prefix_cursor = None;
    } else {
        let page = gw
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
        add_inputs(gw.catalog.as_ref(), &mut step, &mut new, &inputs).await?;
        new.prefix_cursor = match (page.is_truncated, page.last) {
            (true, Some(last)) => Some(last),
            _ => None,
        };
    }
    step.put_job(&new);
    job.commit(gw, step).await?;
    *rec = new;
    Ok(())
}

enum Place {
    Run(MapRun),
    Wait(Waiting),
    Fail(JobErrorCode, String),
}

/// Where a map task runs and what it reads.
struct MapRun {
    /// The slot taken on the chosen node, at placement, so that one
    /// dispatch pass cannot overfill a node.
    slot: Slot,
    holders: Vec<String>,
    input: BlobRef,
    /// The version checked is the version read: GC keeps its blob while
    /// the task waits for its image and runs, even if the key is
    /// overwritten meanwhile.
    input_lease: InflightGuard,
}

impl Waiting {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::NodeBusy => "node_busy",
            Self::TenantShare => "tenant_share",
            Self::NoLiveReplica => "no_live_replica",
            Self::Catalog => "catalog",
        }
    }
}

/// Why a queued task is not running yet (reported in the job's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Waiting {
    /// Its nodes' slots are taken.
    NodeBusy,
    /// Other tenants wait too, and this tenant has its share of the slots
    /// (or its cap).
    TenantShare,
    /// No node holding a replica of its input is up.
    NoLiveReplica,
    /// The catalog could not be read; tried again shortly.
    Catalog,
}

async fn place_map(gw: &Arc<Gateway>, rec: &JobRecord, task: &TaskRecord) -> Place {
    let loc = task.input.clone().unwrap_or_default();
    let (bucket, key) = split(&loc);
    // The version checked is the version read: the key may be overwritten
    // with other permissions at any moment.
    let obj = match check_input(gw.catalog.as_ref(), &rec.tenant, &bucket, &key).await {
        Ok(o) => o,
        Err((JobErrorCode::InternalError, _)) => return Place::Wait(Waiting::Catalog),
        Err((code, message)) => return Place::Fail(code, message),
    };
    let slots = gw.config.task_slots;
    let up = |n: &String| gw.nodes.state(n) == Some(NodeState::Up);
    // With no bytes there is nothing to be local to: any up node will do.
    let holders: Vec<String> = if obj.blob.size == 0 {
        gw.nodes.node_ids().into_iter().filter(up).collect()
    } else {
        obj.blob
            .replicas
            .iter()
            .filter(|n| up(n))
            .cloned()
            .collect()
    };
    if holders.is_empty() {
        // Repair or a returning node will make a replica available.
        return Place::Wait(Waiting::NoLiveReplica);
    }
    // The share first: a tenant over its share waits for that reason,
    // whether or not a slot happens to be free at this moment.
    let total = (gw.nodes.node_ids().into_iter().filter(up).count() as u32) * slots;
    if !gw
        .jobs
        .may_start(&rec.tenant, total, gw.config.tenant_max_tasks)
    {
        gw.jobs.note_waiting(&rec.tenant);
        return Place::Wait(Waiting::TenantShare);
    }
    let Some(node) = plan::choose_node(&holders, &[], |n| gw.jobs.load(n), slots) else {
        gw.jobs.note_waiting(&rec.tenant);
        return Place::Wait(Waiting::NodeBusy);
    };
    Place::Run(MapRun {
        slot: Slot::take(gw, &node, &rec.tenant),
        holders,
        input_lease: gw.inflight.hold(&obj.blob.id),
        input: obj.blob,
    })
}

async fn run_map(gw: Arc<Gateway>, ctx: TaskCtx, mut task: TaskRecord, run: MapRun) -> Finished {
    let span = tracing::info_span!("task", tenant = %ctx.tenant, job = %ctx.job, task = %task.id, phase = ctx.phase);
    async move {
        let mut leases = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        let MapRun {
            slot: first_slot,
            holders,
            input,
            input_lease,
        } = run;
        leases.push(input_lease);
        let mut node = Some(first_slot.node.clone());
        let mut placed = Some(first_slot);
        let mut retries = 0;
        let input_key = task.input.clone().unwrap_or_default();
        loop {
            let Some(n) = node.clone() else {
                // No reachable holder now: back to the queue until one is
                // (a returning node, or repair's new replica).
                return finished(task, Outcome::Requeue, retries, 0, 0, leases);
            };
            let _slot = match placed.take() {
                Some(s) => s,
                None => Slot::take(&gw, &n, &ctx.tenant),
            };
            task.attempts += 1;
            task.node = Some(n.clone());
            let input_blob = (input.size > 0).then(|| input.id.clone());
            let id = attempt_id(&task);
            match attempt(&gw, &ctx, &task, &id, &n, input_blob, &input_key, &mut leases).await {
                Ok(outcome) => return finished(task, outcome, retries, input.size, 0, leases),
                Err(AttemptError::Fail(code, message)) => {
                    return finished(task, failed(code, message), retries, 0, 0, leases)
                }
                Err(AttemptError::Retry(why)) => {
                    tracing::warn!(node = %n, error = %why, "task attempt failed; trying another holder");
                    if never_started(&gw, &n) {
                        task.attempts -= 1;
                    }
                    tried.push(n);
                    node = plan::choose_node(&holders, &tried, |x| gw.jobs.load(x), u32::MAX)
                        .filter(|x| gw.nodes.state(x) == Some(NodeState::Up));
                    if task.attempts >= MAX_ATTEMPTS {
                        let outcome = failed(
                            JobErrorCode::InternalError,
                            format!("task failed after {} attempts: {why}", task.attempts),
                        );
                        return finished(task, outcome, retries, 0, 0, leases);
                    }
                    retries += 1;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// A failed call to a node now marked unreachable never started the task
/// (a stale address after a restart, a node that just died): it does not
/// count against the task's attempts.
fn never_started(gw: &Gateway, node: &str) -> bool {
    gw.nodes.state(node) != Some(NodeState::Up)
}

fn finished(
    task: TaskRecord,
    outcome: Outcome,
    retries: u64,
    bytes_local: u64,
    bytes_remote: u64,
    leases: Vec<InflightGuard>,
) -> Finished {
    Finished {
        task,
        outcome,
        retries,
        bytes_local,
        bytes_remote,
        refused: Vec::new(),
        _leases: leases,
    }
}

/// The image a task runs in: a name, or an image tarball object made
/// available on the node (returned as the blob to load).
async fn image_for(
    gw: &Arc<Gateway>,
    ctx: &TaskCtx,
    node: &str,
) -> Result<(String, Option<String>), AttemptError> {
    let object = match &ctx.spec.image {
        ImageRef::Name(n) => return Ok((n.clone(), None)),
        ImageRef::Object { object } => object.clone(),
    };
    let (bucket, key) = split(object.strip_prefix("s3://").unwrap_or(&object));
    let not_found = || {
        AttemptError::Fail(
            JobErrorCode::ImageNotFoundError,
            format!("image object {object} does not exist"),
        )
    };
    let b = gw
        .catalog
        .get_bucket(&bucket)
        .await
        .map_err(|e| AttemptError::Retry(e.to_string()))?
        .ok_or_else(not_found)?;
    let obj = gw
        .catalog
        .get_object(&bucket, &key)
        .await
        .map_err(|e| AttemptError::Retry(e.to_string()))?
        .ok_or_else(not_found)?;
    if !may_read(&ctx.tenant, &b, &obj) {
        return Err(AttemptError::Fail(
            JobErrorCode::AccessDeniedError,
            format!("tenant {} may not read image {object}", ctx.tenant),
        ));
    }
    let label = format!("image object {object}");
    if obj.blob.replicas.iter().any(|n| n == node) {
        return Ok((label, Some(obj.blob.id)));
    }
    let copy_id = format!("img-{}", obj.blob.id);
    let pair = (node.to_string(), copy_id.clone());
    let _one_at_a_time = gw.jobs.image_copy.lock().await;
    let present = gw
        .jobs
        .images_on_nodes
        .lock()
        .map(|s| s.contains(&pair))
        .unwrap_or(false);
    if !present {
        let lease = gw.inflight.hold(&copy_id);
        match gw.nodes.copy_to(&obj.blob, node, &copy_id).await {
            Ok(_) => {}
            // Already there from an earlier job.
            Err(NodeError::Status { status: 409, .. }) => {}
            Err(e) => return Err(AttemptError::Retry(format!("copying the image: {e}"))),
        }
        if let Some(job) = gw.jobs.active(&ctx.job) {
            if let Ok(mut l) = job.image_leases.lock() {
                l.push(lease);
            }
        }
        if let Ok(mut s) = gw.jobs.images_on_nodes.lock() {
            s.insert(pair);
        }
    }
    Ok((label, Some(copy_id)))
}

/// One attempt of a task on one node: run it, then replicate what it
/// produced.
/// A task id for one attempt on a node, unique even across gateway
/// restarts (an earlier gateway's attempt may still be running there).
fn attempt_id(task: &TaskRecord) -> String {
    format!(
        "{}-a{}-{:06x}",
        task.id,
        task.attempts,
        rand::random::<u32>() & 0xff_ffff
    )
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Arc<Gateway>,
    ctx: &TaskCtx,
    task: &TaskRecord,
    attempt_id: &str,
    node: &str,
    input_blob: Option<String>,
    input_key: &str,
    leases: &mut Vec<InflightGuard>,
) -> Result<Outcome, AttemptError> {
    let (image, image_blob) = image_for(gw, ctx, node).await?;
    let stdout_blob = new_blob_id();
    let stderr_blob = new_blob_id();
    leases.push(gw.inflight.hold(&stdout_blob));
    leases.push(gw.inflight.hold(&stderr_blob));
    if let Some(n) = ctx.split {
        for r in 0..n {
            leases.push(gw.inflight.hold(&format!("{stdout_blob}-r{r}")));
        }
    }
    let mut env: Vec<(String, String)> = ctx
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (in_bucket, in_key) = input_key.split_once('/').unwrap_or(("", input_key));
    env.push(("INSITU_INPUT_BUCKET".into(), in_bucket.to_string()));
    env.push(("INSITU_INPUT_KEY".into(), in_key.to_string()));
    env.push(("INSITU_JOB_ID".into(), ctx.job.clone()));
    env.push(("INSITU_PHASE".into(), ctx.phase.to_string()));
    env.push(("INSITU_TASK_ID".into(), task.id.clone()));
    if let Some(r) = task.reducer {
        env.push(("INSITU_REDUCER".into(), r.to_string()));
    }
    let req = TaskRequest {
        tenant: ctx.tenant.clone(),
        job: ctx.job.clone(),
        phase: ctx.phase,
        image,
        image_blob,
        runtime: ctx.spec.runtime.clone(),
        memory_mb: ctx.spec.memory_mb(),
        cpus: ctx.spec.cpus(),
        disk_mb: ctx.spec.disk_mb(),
        output_mb: ctx.spec.output_mb(),
        timeout_s: ctx.spec.timeout_s(),
        task_id: attempt_id.to_string(),
        exec: ctx.spec.exec.clone(),
        init: ctx.spec.init.clone(),
        input_blob,
        env,
        stdout_blob: stdout_blob.clone(),
        stderr_blob: stderr_blob.clone(),
        split: ctx.split,
        input_stream: task.reducer.is_some(),
    };
    // The image first, once per (phase, node): a pull or load is its own
    // state, not part of the task's time.
    let key = (ctx.phase, node.to_string());
    let ready = ctx
        .active
        .prepared
        .lock()
        .map(|p| p.contains(&key))
        .unwrap_or(false);
    if !ready {
        adjust(&ctx.active.preparing, ctx.phase, 1);
        let prepared = gw.nodes.prepare_image(node, &req, DEADLINE_SLACK).await;
        adjust(&ctx.active.preparing, ctx.phase, -1);
        match prepared {
            Ok(()) => {
                if let Ok(mut p) = ctx.active.prepared.lock() {
                    p.insert(key);
                }
            }
            Err(e) => {
                // A copied image object may have been swept from the node
                // since: copy it again next time.
                if let (Some(blob), Ok(mut copies)) =
                    (&req.image_blob, gw.jobs.images_on_nodes.lock())
                {
                    copies.remove(&(node.to_string(), blob.clone()));
                }
                return Err(node_failure(e));
            }
        }
    }
    // A reducer's clock starts when its input ends, which may be long after
    // the call; the node enforces its timeout, and the node's liveness is
    // watched anyway.
    let deadline = match req.input_stream {
        true => Duration::from_secs(366 * 24 * 3600),
        false => Duration::from_secs(ctx.spec.timeout_s()) + DEADLINE_SLACK,
    };
    let resp: TaskResponse = match gw.nodes.run_task(node, &req, deadline).await {
        Ok(r) => r,
        Err(e) => return Err(node_failure(e)),
    };
    let on_node = |id: String, size: u64, md5: String| Blob {
        id,
        size,
        md5,
        replicas: vec![node.to_string()],
    };
    match resp.end {
        TaskEndReport::Exited { code: 0 } => {
            if ctx.split.is_some() {
                let mut pieces = Vec::new();
                for p in resp.pieces {
                    let blob = replicate(gw, on_node(p.blob, p.size, p.md5)).await;
                    pieces.push((p.reducer, blob));
                }
                Ok(Outcome::Success {
                    stdout: None,
                    pieces,
                })
            } else {
                let blob = on_node(stdout_blob, resp.stdout_size, resp.stdout_md5);
                Ok(Outcome::Success {
                    stdout: Some(replicate(gw, blob).await),
                    pieces: Vec::new(),
                })
            }
        }
        end => {
            let _ = gw.nodes.delete(node, &stdout_blob).await;
            let stderr = if resp.stderr_kept {
                Some(replicate(gw, on_node(stderr_blob, resp.stderr_size, String::new())).await)
            } else {
                None
            };
            let last_line = resp
                .stderr_preview
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(512)
                .collect::<String>();
            let (code, message) = match end {
                TaskEndReport::Exited { code } => (
                    JobErrorCode::UserTaskError,
                    format!("exec exited with status {code}: {last_line}"),
                ),
                TaskEndReport::Killed { resource } => (
                    JobErrorCode::TaskKilledError,
                    format!("the task exceeded its {resource} limit and was killed"),
                ),
                TaskEndReport::TimedOut => (
                    JobErrorCode::TaskTimeoutError,
                    format!(
                        "the task ran longer than its {} s timeout",
                        ctx.spec.timeout_s()
                    ),
                ),
            };
            Ok(Outcome::Failed {
                code,
                message,
                stderr,
            })
        }
    }
}

/// What a node's refusal means for a task: its own failure (bad image,
/// bad spec, failed `init`), or an internal one worth another attempt.
fn node_failure(e: NodeError) -> AttemptError {
    match e {
        NodeError::Status {
            status: 400 | 404 | 422,
            body,
            ..
        } => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let message = v["message"].as_str().unwrap_or(&body).to_string();
            match v["code"].as_str() {
                Some("ImageNotFoundError") => {
                    AttemptError::Fail(JobErrorCode::ImageNotFoundError, message)
                }
                Some("UserTaskError") => AttemptError::Fail(JobErrorCode::UserTaskError, message),
                Some("InvalidArgumentError") => {
                    AttemptError::Fail(JobErrorCode::InvalidArgumentError, message)
                }
                // The input replica vanished from that node.
                _ => AttemptError::Retry(message),
            }
        }
        e => AttemptError::Retry(e.to_string()),
    }
}

/// Copies a task's blob from its node to R-1 more. A copy that fails is
/// left to repair, which restores every committed blob to R replicas.
async fn replicate(gw: &Arc<Gateway>, mut blob: Blob) -> Blob {
    let want = gw.config.replicas.saturating_sub(1);
    if want == 0 {
        return blob;
    }
    let targets = match gw
        .nodes
        .place_excluding(&blob.id, want, blob.size, &blob.replicas)
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(blob = %blob.id, error = %e, "task output left under-replicated; repair will copy it");
            return blob;
        }
    };
    let source = BlobRef {
        id: blob.id.clone(),
        size: blob.size,
        replicas: blob.replicas.clone(),
    };
    let copies = targets
        .iter()
        .map(|t| gw.nodes.copy_to(&source, t, &blob.id));
    for (t, r) in targets.iter().zip(futures::future::join_all(copies).await) {
        match r {
            Ok(_) => blob.replicas.push(t.clone()),
            Err(e) => {
                tracing::warn!(blob = %blob.id, node = %t, error = %e, "copy of a task output failed; repair will retry")
            }
        }
    }
    blob
}

/// A reducer runs from the moment its phase can get input: the node starts
/// it with a pipe for stdin, and `feed_reducer` appends each input piece as
/// earlier phases commit it, so reducers work while maps still run. The
/// reducer sees end of input once every earlier phase is done and the
/// job's input is complete.
async fn run_reducer(
    gw: Arc<Gateway>,
    job: Arc<ActiveJob>,
    ctx: TaskCtx,
    mut task: TaskRecord,
) -> Finished {
    let span = tracing::info_span!("task", tenant = %ctx.tenant, job = %ctx.job, task = %task.id, phase = ctx.phase);
    async move {
        let reducer = task.reducer.unwrap_or(0);
        let mut leases = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        let mut retries = 0;
        loop {
            // The live node with the fewest reducers, then the least busy.
            let node = gw
                .nodes
                .node_ids()
                .into_iter()
                .filter(|n| gw.nodes.state(n) == Some(NodeState::Up) && !tried.contains(n))
                .min_by_key(|n| (gw.jobs.reducers_on(n), gw.jobs.load(n)));
            let Some(node) = node else {
                // Every node was tried or is down: wait for one.
                tokio::time::sleep(Duration::from_secs(1)).await;
                tried.clear();
                continue;
            };
            let _placed = ReducerPlace::take(&gw, &node);
            task.attempts += 1;
            task.node = Some(node.clone());
            let attempt_id = attempt_id(&task);
            let (result, fed) = {
                let call = attempt(&gw, &ctx, &task, &attempt_id, &node, None, "", &mut leases);
                let feed = feed_reducer(&gw, &job, &ctx, reducer, &node, &attempt_id);
                tokio::pin!(call, feed);
                let mut fed: Option<Fed> = None;
                let result = loop {
                    tokio::select! {
                        r = &mut call => break r,
                        f = &mut feed, if fed.is_none() => match f {
                            Ok(counts) => fed = Some(counts),
                            Err(e) => break Err(AttemptError::Retry(format!("feeding the reducer: {e}"))),
                        },
                    }
                };
                (result, fed)
            };
            let fed = fed.unwrap_or_default();
            match result {
                Ok(outcome) => {
                    let mut fin = finished(task, outcome, retries, fed.local, fed.remote, leases);
                    fin.refused = fed.refused;
                    return fin;
                }
                Err(AttemptError::Fail(code, message)) => {
                    return finished(task, failed(code, message), retries, 0, 0, leases)
                }
                Err(AttemptError::Retry(why)) => {
                    tracing::warn!(node = %node, error = %why, "reducer attempt failed; trying another node");
                    if never_started(&gw, &node) {
                        task.attempts -= 1;
                    }
                    tried.push(node);
                    if task.attempts >= MAX_ATTEMPTS {
                        let outcome = failed(
                            JobErrorCode::InternalError,
                            format!("reducer failed after {} attempts: {why}", task.attempts),
                        );
                        return finished(task, outcome, retries, 0, 0, leases);
                    }
                    retries += 1;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// What a reducer was fed: bytes read from its node's disk and from
/// others, and the inputs it was refused.
#[derive(Default)]
struct Fed {
    local: u64,
    remote: u64,
    refused: Vec<ErrorRecord>,
}

/// How long the feeder keeps offering input to a task that has not opened
/// it yet (its image may be being pulled).
const FEED_OPEN_PATIENCE: Duration = Duration::from_secs(900);

/// Appends a reducer's input pieces to its running task, in commit order,
/// as they appear; ends its input when nothing more can come. Pieces the
/// node holds are read from its disk; others are streamed to it. Returns
/// what was fed.
async fn feed_reducer(
    gw: &Arc<Gateway>,
    job: &ActiveJob,
    ctx: &TaskCtx,
    reducer: u32,
    node: &str,
    attempt_id: &str,
) -> Result<Fed, String> {
    let stream = format!("{}/{}/{attempt_id}", ctx.tenant, ctx.job);
    let mut after: Option<u64> = None;
    let mut fed = Fed::default();
    loop {
        // Looked at before the scan: once every earlier task has committed
        // (pieces are committed with their task), an empty scan is final.
        let complete = job.record.lock().await.upstream_done(ctx.phase as usize);
        let page = gw
            .catalog
            .job_pieces(&ctx.job, ctx.phase, reducer, after, 100)
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            if complete {
                with_patience(|| gw.nodes.stream_end(node, &stream)).await?;
                return Ok(fed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for (seq, p) in page {
            after = Some(seq);
            // Access is checked again on the version read: a job input
            // of another tenant's may have been overwritten as private
            // since it was added.
            let o = match check_input(gw.catalog.as_ref(), &ctx.tenant, &p.bucket, &p.key).await {
                Ok(o) => o,
                Err((JobErrorCode::InternalError, e)) => return Err(e),
                Err((JobErrorCode::AccessDeniedError, message)) => {
                    fed.refused.push(ErrorRecord {
                        phase: ctx.phase,
                        task: String::new(),
                        input: format!("{}/{}", p.bucket, p.key),
                        code: JobErrorCode::AccessDeniedError,
                        message,
                        stderr: None,
                        node: None,
                    });
                    continue;
                }
                // Deleted since: nothing to read.
                Err(_) => continue,
            };
            if o.blob.size == 0 {
                continue;
            }
            let _lease = gw.inflight.hold(&o.blob.id);
            let sent = if o.blob.replicas.iter().any(|n| n == node) {
                fed.local += o.blob.size;
                with_patience(|| gw.nodes.stream_append_blob(node, &stream, &o.blob.id)).await
            } else {
                fed.remote += o.blob.size;
                with_patience(|| async {
                    let body = gw.nodes.get(&o.blob, None).await?;
                    gw.nodes.stream_append_body(node, &stream, body).await
                })
                .await
            };
            match sent {
                Ok(()) => {}
                // The task stopped reading (it may need no more input):
                // its own answer tells how it ended.
                Err(e) if e.contains("409") => return Ok(fed),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Retries a call to a task's input while the task has not opened it yet
/// (404), up to `FEED_OPEN_PATIENCE`.
async fn with_patience<F, Fut>(mut call: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), NodeError>>,
{
    let deadline = tokio::time::Instant::now() + FEED_OPEN_PATIENCE;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(NodeError::Status { status: 404, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A reducer placed on a node, counted until dropped (reducers wait for
/// input, so they do not take task slots, or maps could never run).
struct ReducerPlace {
    gw: Arc<Gateway>,
    node: String,
}

impl ReducerPlace {
    fn take(gw: &Arc<Gateway>, node: &str) -> Self {
        gw.jobs.add_reducer(node, 1);
        Self {
            gw: gw.clone(),
            node: node.to_string(),
        }
    }
}

impl Drop for ReducerPlace {
    fn drop(&mut self) {
        self.gw.jobs.add_reducer(&self.node, -1);
    }
}

fn object_record(tenant: &str, blob: &Blob) -> ObjectRecord {
    ObjectRecord {
        size: blob.size,
        etag: blob.md5.clone(),
        last_modified_ms: now_ms(),
        owner: tenant.to_string(),
        headers: ObjectHeaders::default(),
        acl: CannedAcl::Private,
        blob: BlobRef {
            id: blob.id.clone(),
            size: blob.size,
            replicas: blob.replicas.clone(),
        },
        parts_count: 0,
        part_sizes: Vec::new(),
    }
}

/// Records a task's outcome: its output objects, its successors, its
/// counters and its own state, in one atomic batch.
/// Commits finished tasks in one atomic batch; if that fails (an output
/// bucket is gone), one by one, so each failure is recorded on its own.
async fn commit_all(gw: &Arc<Gateway>, job: &ActiveJob, fins: Vec<Finished>) {
    if fins.len() > 1 {
        let mut rec = job.record.lock().await;
        if rec.state.is_final() {
            return;
        }
        let mut current = rec.clone();
        let mut merged = JobChange::default();
        let mut built = true;
        for fin in &fins {
            match build_commit(gw, &current, fin, true).await {
                Ok((step, new)) => {
                    merged.merge(step);
                    current = new;
                }
                Err(_) => {
                    built = false;
                    break;
                }
            }
        }
        if built && job.commit(gw, merged).await.is_ok() {
            *rec = current;
            return;
        }
    }
    for fin in fins {
        commit(gw, job, fin).await;
    }
}

async fn commit(gw: &Arc<Gateway>, job: &ActiveJob, fin: Finished) {
    let mut rec = job.record.lock().await;
    if rec.state.is_final() {
        return;
    }
    let first_try = build_commit(gw, &rec, &fin, true).await;
    let result = match first_try {
        Ok((step, new)) => job.commit(gw, step).await.map(|_| new),
        Err(e) => Err(e),
    };
    match result {
        Ok(new) => *rec = new,
        // Another gateway drives the job: nothing of this is recorded.
        Err(insitu_catalog::CatalogError::Fenced(_)) => {}
        Err(e) => {
            // The output bucket is gone (or the catalog refused): the task
            // fails with an internal error rather than lose its record.
            tracing::error!(task = %fin.task.id, error = %e, "committing task output failed");
            let fail = Finished {
                task: fin.task.clone(),
                outcome: failed(
                    JobErrorCode::InternalError,
                    format!("committing the output failed: {e}"),
                ),
                retries: fin.retries,
                bytes_local: fin.bytes_local,
                bytes_remote: fin.bytes_remote,
                refused: fin.refused.clone(),
                _leases: Vec::new(),
            };
            if let Ok((step, new)) = build_commit(gw, &rec, &fail, false).await {
                if job.commit(gw, step).await.is_ok() {
                    *rec = new;
                }
            }
        }
    }
}

async fn build_commit(
    gw: &Gateway,
    rec: &JobRecord,
    fin: &Finished,
    with_objects: bool,
) -> Result<(JobChange, JobRecord), insitu_catalog::CatalogError> {
    let mut new = rec.clone();
    let mut step = JobChange::default();
    let phase = fin.task.phase as usize;
    let last = phase + 1 == rec.spec.phases.len();
    let out = OutputPlace::of(&rec.spec);
    let mut task = fin.task.clone();
    new.counters.retries += fin.retries;
    new.phases[phase].bytes_local += fin.bytes_local;
    new.phases[phase].bytes_remote += fin.bytes_remote;
    for refused in &fin.refused {
        add_error(&mut step, &mut new, refused.clone());
    }
    let bucket = if with_objects {
        Some(
            output_bucket(gw.catalog.as_ref(), &rec.tenant, &rec.spec)
                .await
                .map_err(|e| insitu_catalog::CatalogError::Corrupt(e.to_string()))?,
        )
    } else {
        None
    };
    match (&fin.outcome, bucket) {
        (Outcome::Success { stdout, pieces }, Some(bucket)) => {
            task.state = TaskState::Done;
            new.phases[phase].done += 1;
            if let Some(blob) = stdout {
                let key = out.output_key(
                    &rec.id,
                    fin.task.phase,
                    last,
                    &task.id,
                    task.input.as_deref(),
                    task.reducer,
                );
                step.put_object(&bucket, &key, object_record(&rec.tenant, blob));
                let loc = format!("{}/{key}", bucket.name);
                match plan::downstream(&rec.spec, phase) {
                    Downstream::None => {
                        step.add_output(
                            &rec.id,
                            new.seq.output,
                            OutputRecord {
                                phase: fin.task.phase,
                                task: task.id.clone(),
                                object: loc,
                                size: blob.size,
                            },
                        );
                        new.seq.output += 1;
                        new.counters.outputs += 1;
                    }
                    Downstream::Map => add_map_task(&mut step, &mut new, fin.task.phase + 1, loc),
                    Downstream::ReduceByName { count } | Downstream::ReduceByKey { count } => {
                        let r = plan::reducer_for_name(&loc, count);
                        step.add_piece(
                            &rec.id,
                            fin.task.phase + 1,
                            r,
                            new.seq.piece,
                            PieceRecord {
                                bucket: bucket.name.clone(),
                                key,
                                size: blob.size,
                            },
                        );
                        new.seq.piece += 1;
                    }
                }
            }
            for (r, blob) in pieces {
                let key = OutputPlace::piece_key(&rec.id, fin.task.phase, &task.id, *r);
                step.put_object(&bucket, &key, object_record(&rec.tenant, blob));
                step.add_piece(
                    &rec.id,
                    fin.task.phase + 1,
                    *r,
                    new.seq.piece,
                    PieceRecord {
                        bucket: bucket.name.clone(),
                        key,
                        size: blob.size,
                    },
                );
                new.seq.piece += 1;
            }
        }
        (outcome, bucket) => {
            let (code, message, stderr) = match outcome {
                Outcome::Failed {
                    code,
                    message,
                    stderr,
                } => (*code, message.clone(), stderr.as_ref()),
                Outcome::Success { .. } | Outcome::Requeue => (
                    JobErrorCode::InternalError,
                    "the output bucket is gone".to_string(),
                    None,
                ),
            };
            task.state = TaskState::Failed;
            new.phases[phase].failed += 1;
            let mut stderr_loc = None;
            if let (Some(blob), Some(bucket)) = (stderr, bucket) {
                let key = OutputPlace::stderr_key(&rec.id, &task.id, task.attempts);
                stderr_loc = Some(format!("{}/{key}", bucket.name));
                step.put_object(&bucket, &key, object_record(&rec.tenant, blob));
            }
            let input = match (&task.input, task.reducer) {
                (Some(i), _) => i.clone(),
                (None, Some(r)) => format!("reducer {r}"),
                _ => String::new(),
            };
            add_error(
                &mut step,
                &mut new,
                ErrorRecord {
                    phase: fin.task.phase,
                    task: task.id.clone(),
                    input,
                    code,
                    message,
                    stderr: stderr_loc,
                    node: task.node.clone(),
                },
            );
        }
    }
    match task.reducer {
        Some(_) => step.put_reducer(&rec.id, task),
        None => {
            let seq = plan::map_task_seq(&task.id).ok_or_else(|| {
                insitu_catalog::CatalogError::Corrupt(format!("map task id {}", task.id))
            })?;
            step.put_task(&rec.id, seq, task);
        }
    }
    step.put_job(&new);
    Ok((step, new))
}

/// The job is complete: record it, remove intermediate objects, and end
/// the job's containers on every node.
async fn finish(gw: &Arc<Gateway>, job: &ActiveJob) {
    // Containers and intermediate outputs go first, so that a job seen as
    // done has nothing left running and nothing left over (a crash in
    // between repeats this, which is harmless).
    let snapshot = job.record.lock().await.clone();
    cleanup(gw, job, &snapshot).await;
    let mut rec = job.record.lock().await;
    if rec.state.is_final() {
        return;
    }
    let mut new = rec.clone();
    new.state = JobState::Done;
    new.done_ms = Some(now_ms());
    let mut step = JobChange::default();
    step.put_job(&new);
    step.release_lease(&new.id);
    if let Err(e) = job.commit(gw, step).await {
        tracing::error!(error = %e, "cannot record the job as done");
        return;
    }
    *rec = new.clone();
    tracing::info!(
        outputs = new.counters.outputs,
        errors = new.counters.errors,
        retries = new.counters.retries,
        "job done"
    );
}

async fn cancelled(gw: &Arc<Gateway>, job: &ActiveJob, aborted: Vec<TaskRecord>) {
    let rec = {
        let mut rec = job.record.lock().await;
        let mut new = rec.clone();
        let mut step = JobChange::default();
        for task in aborted {
            add_error(
                &mut step,
                &mut new,
                ErrorRecord {
                    phase: task.phase,
                    task: task.id.clone(),
                    input: task
                        .input
                        .clone()
                        .unwrap_or_else(|| format!("reducer {}", task.reducer.unwrap_or(0))),
                    code: JobErrorCode::JobCancelledError,
                    message: "the job was cancelled while the task ran".into(),
                    stderr: None,
                    node: task.node.clone(),
                },
            );
        }
        step.put_job(&new);
        if job.commit(gw, step).await.is_ok() {
            *rec = new;
        }
        rec.clone()
    };
    cleanup(gw, job, &rec).await;
    // Now nothing of the job is left to do: its lease goes.
    let mut step = JobChange::default();
    step.release_lease(&rec.id);
    if let Err(e) = job.commit(gw, step).await {
        tracing::warn!(error = %e, "cannot release the cancelled job's lease; its next owner will");
    }
}

async fn cleanup(gw: &Arc<Gateway>, job: &ActiveJob, rec: &JobRecord) {
    for node in gw.nodes.node_ids() {
        for phase in 0..rec.spec.phases.len() as u32 {
            if let Err(e) = gw.nodes.end_group(&node, &rec.tenant, &rec.id, phase).await {
                tracing::debug!(node = %node, error = %e, "ending task group");
            }
        }
    }
    // Intermediate outputs served their purpose; saved stderr stays.
    let out = OutputPlace::of(&rec.spec);
    let prefix = format!("{}p", OutputPlace::job_prefix(&rec.id));
    let query = ListQuery {
        prefix,
        delimiter: None,
        start_after: None,
        max: 1000,
    };
    while let Ok(page) = gw.catalog.list_objects(&out.bucket, &query).await {
        if page.objects.is_empty() {
            break;
        }
        let mut step = JobChange::default();
        for (k, _) in page.objects {
            step.delete_object(&out.bucket, &k);
        }
        if job.commit(gw, step).await.is_err() {
            break;
        }
    }
    if let Ok(mut l) = job.image_leases.lock() {
        l.clear();
    }
}
