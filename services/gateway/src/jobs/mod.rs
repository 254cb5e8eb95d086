//! The job supervisor: it drives every running job, placing each map task on
//! a node that holds its input, feeding reducers, and committing outputs
//! together with the job's durable state (see `insitu_jobs::records`).
//!
//! One driver task per running job owns the job's progress. The job's
//! record lives in memory behind a mutex and is written to the catalog in
//! the same atomic batch as every change it describes, so a restarted
//! gateway resumes each job from exactly what was committed: finished
//! tasks are never run again and tasks that were in flight run again, with
//! only one attempt's output ever committed.

pub mod api;
mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use insitu_catalog::{
    now_ms, BucketRecord, Catalog, CatalogError, GatewayLoad, InputList, JobChange, JobLease,
};
use insitu_jobs::plan::{self, OutputPlace};
use insitu_jobs::records::{
    self, InputRecord, JobCounters, JobRecord, JobState, PhaseCounters, PieceRecord, Seqs,
    TaskRecord, TaskState,
};
use insitu_jobs::{JobSpec, PhaseKind};
use tokio::sync::{Mutex, Notify};

use crate::auth::Principal;
use crate::cluster::InflightGuard;
use crate::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error("job {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("the tenant already has {0} jobs that have not ended (the limit)")]
    TooManyJobs(u32),
    /// Not now: the job changes hands, or the catalog is away.
    #[error("{0}")]
    Unavailable(String),
    /// The job is driven by a peer gateway at this address; the API
    /// forwards the call there.
    #[error("job is driven by the gateway at {0}")]
    Elsewhere(String),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

/// A running job, shared by its driver and the API.
pub struct ActiveJob {
    pub id: String,
    pub tenant: String,
    /// The epoch of this gateway's lease on the job: every commit carries
    /// it, and the catalog refuses it once another gateway took the job.
    pub epoch: u64,
    /// Set when a commit was refused for a stale epoch: the driver stops,
    /// leaving the job to its new owner.
    lost: std::sync::atomic::AtomicBool,
    pub record: Mutex<JobRecord>,
    /// Wakes the driver: inputs added or ended, job cancelled.
    pub wake: Notify,
    /// Image copies made for this job, kept from the orphan sweep.
    image_leases: std::sync::Mutex<Vec<InflightGuard>>,
    /// Tasks in flight, per phase.
    running: std::sync::Mutex<Vec<u64>>,
    /// Of those, tasks waiting for their image to be pulled or loaded.
    preparing: std::sync::Mutex<Vec<u64>>,
    /// (phase, node) pairs whose image is ready.
    prepared: std::sync::Mutex<std::collections::HashSet<(u32, String)>>,
    /// Why the queued tasks the dispatcher last looked at are waiting.
    waiting: std::sync::Mutex<HashMap<run::Waiting, u64>>,
}

impl ActiveJob {
    /// Commits a change to the job under this gateway's lease.
    pub(crate) async fn commit(
        &self,
        gw: &Gateway,
        mut step: JobChange,
    ) -> Result<(), CatalogError> {
        step.fence(&self.id, &gw.control.id, self.epoch);
        let result = gw.catalog.job_commit(step).await;
        if let Err(CatalogError::Fenced(_)) = &result {
            self.lose();
        }
        result
    }

    /// Another gateway drives the job now.
    pub(crate) fn lose(&self) {
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(tenant = %self.tenant, job = %self.id, "job taken over by another gateway; stopping here");
        }
        self.wake.notify_one();
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A tenant's running tasks, and when it last had a task wait for a slot.
#[derive(Default)]
struct TenantLoad {
    running: u32,
    waiting_at: Option<Instant>,
}

/// How long a tenant whose task could not get a slot counts as waiting.
const WAITING_FOR: Duration = Duration::from_secs(2);

/// Every running job, and tasks in flight per node across all jobs.
#[derive(Default)]
pub struct Supervisor {
    active: std::sync::Mutex<HashMap<String, Arc<ActiveJob>>>,
    node_tasks: std::sync::Mutex<HashMap<String, u32>>,
    node_reducers: std::sync::Mutex<HashMap<String, i64>>,
    tenants: std::sync::Mutex<HashMap<String, TenantLoad>>,
    /// (node, image blob) pairs already copied to the node.
    images_on_nodes: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    image_copy: Mutex<()>,
    /// What the other gateways on the catalog run, summed, as of their
    /// last beats: slots and fair share count it too.
    remote: std::sync::RwLock<GatewayLoad>,
}

impl Supervisor {
    fn active(&self, id: &str) -> Option<Arc<ActiveJob>> {
        self.active.lock().ok()?.get(id).cloned()
    }

    /// Tasks running on a node, from every gateway.
    pub(crate) fn load(&self, node: &str) -> u32 {
        let remote = self
            .remote
            .read()
            .map(|r| r.node_tasks.get(node).copied().unwrap_or(0))
            .unwrap_or(0);
        self.node_tasks
            .lock()
            .map(|m| m.get(node).copied().unwrap_or(0).saturating_add(remote))
            .unwrap_or(u32::MAX)
    }

    /// What this gateway runs, for its beat.
    pub(crate) fn local_load(&self) -> GatewayLoad {
        let mut load = GatewayLoad::default();
        if let Ok(m) = self.node_tasks.lock() {
            load.node_tasks = m
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect();
        }
        if let Ok(m) = self.node_reducers.lock() {
            load.node_reducers = m
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n as u32))
                .collect();
        }
        if let Ok(t) = self.tenants.lock() {
            let now = Instant::now();
            for (name, l) in t.iter() {
                if l.running > 0 {
                    load.tenant_tasks.insert(name.clone(), l.running);
                }
                if l.waiting_at.is_some_and(|w| now - w < WAITING_FOR) {
                    load.tenants_waiting.push(name.clone());
                }
            }
        }
        if let Ok(active) = self.active.lock() {
            load.jobs = active.len() as u32;
            for j in active.values() {
                *load.tenant_jobs.entry(j.tenant.clone()).or_default() += 1;
            }
        }
        load
    }

    /// Records what the other gateways run (their last beats, summed).
    pub(crate) fn set_remote(&self, loads: impl Iterator<Item = GatewayLoad>) {
        let mut sum = GatewayLoad::default();
        for l in loads {
            // Saturating: a peer's figures are input like any other.
            let add = |m: &mut std::collections::BTreeMap<String, u32>, k: String, n: u32| {
                let v = m.entry(k).or_default();
                *v = v.saturating_add(n);
            };
            for (k, n) in l.node_tasks {
                add(&mut sum.node_tasks, k, n);
            }
            for (k, n) in l.node_reducers {
                add(&mut sum.node_reducers, k, n);
            }
            for (k, n) in l.tenant_tasks {
                add(&mut sum.tenant_tasks, k, n);
            }
            for (k, n) in l.tenant_jobs {
                add(&mut sum.tenant_jobs, k, n);
            }
            sum.tenants_waiting
                .extend(l.tenants_waiting.into_iter().take(10_000));
            sum.jobs = sum.jobs.saturating_add(l.jobs);
        }
        if let Ok(mut r) = self.remote.write() {
            *r = sum;
        }
    }

    /// Whether the job runs on this gateway.
    pub fn drives(&self, id: &str) -> bool {
        self.active(id).is_some()
    }

    /// The jobs this gateway drives.
    pub(crate) fn active_jobs(&self) -> Vec<Arc<ActiveJob>> {
        self.active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn take_slot(&self, node: &str, tenant: &str) {
        if let Ok(mut m) = self.node_tasks.lock() {
            *m.entry(node.to_string()).or_default() += 1;
        }
        if let Ok(mut t) = self.tenants.lock() {
            t.entry(tenant.to_string()).or_default().running += 1;
        }
    }

    /// A tenant has tasks that could not start for want of a slot.
    pub(crate) fn note_waiting(&self, tenant: &str) {
        if let Ok(mut t) = self.tenants.lock() {
            t.entry(tenant.to_string()).or_default().waiting_at = Some(Instant::now());
        }
    }

    /// Whether `tenant` may start one more task: under its cap (0: none),
    /// and, while another tenant waits for a slot, under its fair share of
    /// the `total` slots, split evenly between the tenants that run or wait.
    ///
    /// Counts cover every gateway: this one's now, the others' as of their
    /// last beats.
    pub(crate) fn may_start(&self, tenant: &str, total: u32, cap: u32) -> bool {
        let Ok(t) = self.tenants.lock() else {
            return true;
        };
        let remote = self.remote.read().map(|r| r.clone()).unwrap_or_default();
        let now = Instant::now();
        let mut running: HashMap<&str, u32> = HashMap::new();
        let mut waiting: std::collections::HashSet<&str> = Default::default();
        for (name, l) in t.iter() {
            let v = running.entry(name).or_default();
            *v = v.saturating_add(l.running);
            if l.waiting_at.is_some_and(|w| now - w < WAITING_FOR) {
                waiting.insert(name);
            }
        }
        for (name, n) in &remote.tenant_tasks {
            let v = running.entry(name).or_default();
            *v = v.saturating_add(*n);
        }
        waiting.extend(remote.tenants_waiting.iter().map(String::as_str));
        let mine = running.get(tenant).copied().unwrap_or(0);
        if cap > 0 && mine >= cap {
            return false;
        }
        if !waiting.iter().any(|name| *name != tenant) {
            return true;
        }
        let mut sharing: std::collections::HashSet<&str> = waiting;
        sharing.extend(running.iter().filter(|(_, n)| **n > 0).map(|(k, _)| *k));
        sharing.insert(tenant);
        mine < total.div_ceil(sharing.len().max(1) as u32).max(1)
    }

    pub(crate) fn reducers_on(&self, node: &str) -> i64 {
        let remote = self
            .remote
            .read()
            .map(|r| r.node_reducers.get(node).copied().unwrap_or(0))
            .unwrap_or(0);
        self.node_reducers
            .lock()
            .map(|m| m.get(node).copied().unwrap_or(0))
            .unwrap_or(0)
            + i64::from(remote)
    }

    pub(crate) fn add_reducer(&self, node: &str, delta: i64) {
        if let Ok(mut m) = self.node_reducers.lock() {
            *m.entry(node.to_string()).or_default() += delta;
        }
    }

    pub(crate) fn release_slot(&self, node: &str, tenant: &str) {
        if let Ok(mut m) = self.node_tasks.lock() {
            if let Some(n) = m.get_mut(node) {
                *n = n.saturating_sub(1);
            }
        }
        if let Ok(mut t) = self.tenants.lock() {
            if let Some(l) = t.get_mut(tenant) {
                l.running = l.running.saturating_sub(1);
            }
        }
    }

    /// Jobs of a tenant that have not ended, on every gateway.
    fn running_jobs(&self, tenant: &str) -> usize {
        let remote = self
            .remote
            .read()
            .map(|r| r.tenant_jobs.get(tenant).copied().unwrap_or(0))
            .unwrap_or(0);
        let Ok(active) = self.active.lock() else {
            return 0;
        };
        active.values().filter(|j| j.tenant == tenant).count() + remote as usize
    }
}

/// Splits `bucket/key`.
fn split(loc: &str) -> (String, String) {
    match loc.split_once('/') {
        Some((b, k)) => (b.to_string(), k.to_string()),
        None => (loc.to_string(), String::new()),
    }
}

/// The output bucket, which the tenant must own.
async fn output_bucket(
    catalog: &dyn Catalog,
    tenant: &str,
    spec: &JobSpec,
) -> Result<BucketRecord, JobError> {
    let out = OutputPlace::of(spec);
    let bucket = catalog.get_bucket(&out.bucket).await?.ok_or_else(|| {
        JobError::Invalid(format!("output: bucket {} does not exist", out.bucket))
    })?;
    if bucket.owner != tenant {
        return Err(JobError::AccessDenied(format!(
            "output: bucket {} belongs to another tenant",
            out.bucket
        )));
    }
    Ok(bucket)
}

/// Adds inputs to a job record being built into `step`: a map task each
/// when the first phase is a map, or a reducer piece each when it is a
/// reduce (routed by the input's name; checked here, since no map task
/// checks it). An input already in the job is not added again: its output
/// would have the same name.
async fn add_inputs(
    catalog: &dyn Catalog,
    step: &mut JobChange,
    rec: &mut JobRecord,
    inputs: &[(String, String, u64)],
) -> Result<(), CatalogError> {
    let first = rec.spec.phases[0].clone();
    let mut batch = std::collections::HashSet::new();
    for (bucket, key, size) in inputs {
        let loc = format!("{bucket}/{key}");
        let known = !batch.insert(loc.clone()) || catalog.job_has_input(&rec.id, &loc).await?;
        if known {
            continue;
        }
        step.add_input(&rec.id, rec.seq.input, InputRecord { input: loc.clone() });
        rec.seq.input += 1;
        rec.counters.inputs += 1;
        match first.kind {
            PhaseKind::Map => add_map_task(step, rec, 0, loc),
            PhaseKind::Reduce => {
                let refused = match check_input(catalog, &rec.tenant, bucket, key).await {
                    Ok(checked) => {
                        let r = plan::reducer_for_name(&loc, first.reducers());
                        step.add_piece(
                            &rec.id,
                            0,
                            r,
                            rec.seq.piece,
                            PieceRecord {
                                bucket: bucket.clone(),
                                key: key.clone(),
                                size: checked.size,
                            },
                        );
                        rec.seq.piece += 1;
                        None
                    }
                    Err(refusal) => Some(refusal),
                };
                if let Some((code, message)) = refused {
                    add_error(
                        step,
                        rec,
                        records::ErrorRecord {
                            phase: 0,
                            task: String::new(),
                            input: loc,
                            code,
                            message,
                            stderr: None,
                            node: None,
                        },
                    );
                }
                let _ = size;
            }
        }
    }
    Ok(())
}

/// Queues a map task of `phase` over `input` (`bucket/key`) in a step.
pub(crate) fn add_map_task(step: &mut JobChange, rec: &mut JobRecord, phase: u32, input: String) {
    let task = TaskRecord {
        id: plan::map_task_id(rec.seq.task),
        phase,
        input: Some(input),
        reducer: None,
        state: TaskState::Queued,
        node: None,
        attempts: 0,
    };
    step.put_task(&rec.id, rec.seq.task, task);
    rec.seq.task += 1;
    rec.phases[phase as usize].tasks += 1;
}

/// Whether the tenant may read `bucket/key` as a job input: the object
/// record that was checked (read that version, and no other: the key may
/// be overwritten with other permissions meanwhile), or the error the
/// input gets (answered as S3 would: a missing key is only reported as
/// missing to someone who may list the bucket).
pub(crate) async fn check_input(
    catalog: &dyn Catalog,
    tenant: &str,
    bucket: &str,
    key: &str,
) -> Result<insitu_catalog::ObjectRecord, (insitu_jobs::JobErrorCode, String)> {
    use insitu_jobs::JobErrorCode;
    let loc = format!("{bucket}/{key}");
    let internal = |e: CatalogError| (JobErrorCode::InternalError, e.to_string());
    let Some(b) = catalog.get_bucket(bucket).await.map_err(internal)? else {
        return Err((
            JobErrorCode::ResourceNotFoundError,
            format!("bucket {bucket} does not exist"),
        ));
    };
    let p = Principal::User {
        tenant: tenant.to_string(),
        access_key_id: String::new(),
        is_root: false,
    };
    let owner = crate::s3::access::is_owner(&p, &b);
    match catalog.get_object(bucket, key).await.map_err(internal)? {
        Some(o) if may_read(tenant, &b, &o) => Ok(o),
        None if owner || crate::s3::access::acl_allows_read(&p, b.acl) => Err((
            JobErrorCode::ResourceNotFoundError,
            format!("object {loc} does not exist"),
        )),
        _ => Err((
            JobErrorCode::AccessDeniedError,
            format!("tenant {tenant} may not read {loc}"),
        )),
    }
}

/// Records an error (and, for a job input, a failed input) in a step.
pub(crate) fn add_error(step: &mut JobChange, rec: &mut JobRecord, err: records::ErrorRecord) {
    if err.phase == 0 && !err.input.is_empty() {
        step.add_failed_input(
            &rec.id,
            rec.seq.failed_input,
            InputRecord {
                input: err.input.clone(),
            },
        );
        rec.seq.failed_input += 1;
    }
    step.add_error(&rec.id, rec.seq.error, err);
    rec.seq.error += 1;
    rec.counters.errors += 1;
}

/// Parses `bucket/key` inputs given to the API.
fn parse_inputs(inputs: &[String]) -> Result<Vec<(String, String, u64)>, JobError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            insitu_jobs::spec::split_location(&format!("inputs[{i}]"), s, false)
                .map(|(b, k)| (b, k, 0))
                .map_err(|e| JobError::Invalid(e.to_string()))
        })
        .collect()
}

/// Creates a job, durably, and starts driving it.
/// Checks a tenant policy an operator sets.
pub fn check_policy(p: &insitu_catalog::TenantPolicy) -> Result<(), String> {
    if let Some(r) = &p.runtime {
        if r != "runc" && r != "runsc" {
            return Err("runtime must be runc or runsc".into());
        }
    }
    let positive = [
        ("max_memory_mb", p.max_memory_mb),
        ("max_disk_mb", p.max_disk_mb),
        ("max_timeout_s", p.max_timeout_s),
        ("max_output_mb", p.max_output_mb),
        ("default_memory_mb", p.default_memory_mb),
        ("default_disk_mb", p.default_disk_mb),
        ("default_timeout_s", p.default_timeout_s),
        ("default_output_mb", p.default_output_mb),
    ];
    for (name, v) in positive {
        if v == Some(0) {
            return Err(format!("{name} must be at least 1"));
        }
    }
    for (name, v) in [("max_cpus", p.max_cpus), ("default_cpus", p.default_cpus)] {
        if v.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return Err(format!("{name} must be positive"));
        }
    }
    // A default must itself be valid as a phase's value, and within the
    // tenant's maximum.
    let probe = insitu_jobs::PhaseSpec {
        kind: insitu_jobs::PhaseKind::Map,
        image: insitu_jobs::ImageRef::Name("probe".into()),
        exec: "true".into(),
        init: None,
        memory_mb: p.default_memory_mb,
        cpus: p.default_cpus,
        disk_mb: p.default_disk_mb,
        output_mb: p.default_output_mb,
        timeout_s: p.default_timeout_s,
        count: None,
        partition: None,
        env: Default::default(),
        runtime: None,
    };
    let mut spec = JobSpec {
        name: None,
        phases: vec![probe],
        inputs: vec!["probe/probe".into()],
        input_prefix: None,
        input_open: false,
        output: "probe/out/".into(),
    };
    spec.validate()
        .map_err(|e| format!("defaults: {}", e.message))?;
    apply_policy(&mut spec, p).map_err(|e| format!("defaults: {e}"))?;
    Ok(())
}

/// Applies the tenant's policy to a spec: a value beyond a maximum is
/// refused, an omitted one is held to it, and a `runsc` policy puts every
/// phase under gVisor.
fn apply_policy(spec: &mut JobSpec, p: &insitu_catalog::TenantPolicy) -> Result<(), JobError> {
    fn cap<T: PartialOrd + Copy + std::fmt::Display>(
        field: String,
        given: &mut Option<T>,
        default: T,
        max: Option<T>,
    ) -> Result<(), JobError> {
        let Some(max) = max else { return Ok(()) };
        match *given {
            Some(v) if v > max => Err(JobError::Invalid(format!(
                "{field}: at most {max} for this tenant"
            ))),
            Some(_) => Ok(()),
            None if default > max => {
                *given = Some(max);
                Ok(())
            }
            None => Ok(()),
        }
    }
    use insitu_jobs::limits::*;
    for (i, phase) in spec.phases.iter_mut().enumerate() {
        let f = |n: &str| format!("phases[{i}].{n}");
        phase.memory_mb = phase.memory_mb.or(p.default_memory_mb);
        phase.cpus = phase.cpus.or(p.default_cpus);
        phase.disk_mb = phase.disk_mb.or(p.default_disk_mb);
        phase.timeout_s = phase.timeout_s.or(p.default_timeout_s);
        phase.output_mb = phase.output_mb.or(p.default_output_mb);
        cap(
            f("memory_mb"),
            &mut phase.memory_mb,
            DEFAULT_MEMORY_MB,
            p.max_memory_mb,
        )?;
        cap(f("cpus"), &mut phase.cpus, DEFAULT_CPUS, p.max_cpus)?;
        cap(
            f("disk_mb"),
            &mut phase.disk_mb,
            DEFAULT_DISK_MB,
            p.max_disk_mb,
        )?;
        cap(
            f("timeout_s"),
            &mut phase.timeout_s,
            DEFAULT_TIMEOUT_S,
            p.max_timeout_s,
        )?;
        cap(
            f("output_mb"),
            &mut phase.output_mb,
            DEFAULT_OUTPUT_MB,
            p.max_output_mb,
        )?;
        if p.runtime.as_deref() == Some("runsc") {
            if phase.runtime.as_deref() == Some("runc") {
                return Err(JobError::Invalid(format!(
                    "{}: this tenant's tasks run under runsc",
                    f("runtime")
                )));
            }
            phase.runtime = Some("runsc".into());
        }
    }
    Ok(())
}

pub async fn create(gw: &Arc<Gateway>, tenant: &str, spec: JobSpec) -> Result<JobRecord, JobError> {
    let mut spec = spec;
    if let Some(t) = gw.catalog.get_tenant(tenant).await? {
        apply_policy(&mut spec, &t.policy)?;
    }
    output_bucket(gw.catalog.as_ref(), tenant, &spec).await?;
    let cap = gw.config.tenant_max_jobs;
    if cap > 0 && gw.jobs.running_jobs(tenant) >= cap as usize {
        return Err(JobError::TooManyJobs(cap));
    }
    let id = plan::new_job_id(now_ms(), rand::random());
    let mut phases = vec![PhaseCounters::default(); spec.phases.len()];
    for (i, p) in spec.phases.iter().enumerate() {
        if p.kind == PhaseKind::Reduce {
            phases[i].tasks = u64::from(p.reducers());
        }
    }
    let inputs = parse_inputs(&spec.inputs)?;
    let mut rec = JobRecord {
        id: id.clone(),
        tenant: tenant.to_string(),
        input_closed: !spec.input_open,
        prefix_cursor: spec.input_prefix.as_ref().map(|_| String::new()),
        spec,
        state: JobState::Queued,
        created_ms: now_ms(),
        done_ms: None,
        seq: Seqs::default(),
        phases,
        counters: JobCounters::default(),
    };
    let mut step = JobChange::default();
    add_inputs(gw.catalog.as_ref(), &mut step, &mut rec, &inputs).await?;
    // They are in the job's input list now; the record stays small.
    rec.spec.inputs.clear();
    for (i, p) in rec.spec.phases.iter().enumerate() {
        if p.kind == PhaseKind::Reduce {
            for r in 0..p.reducers() {
                let task = TaskRecord {
                    id: plan::reducer_task_id(i as u32, r),
                    phase: i as u32,
                    input: None,
                    reducer: Some(r),
                    state: TaskState::Queued,
                    node: None,
                    attempts: 0,
                };
                step.put_reducer(&id, task);
            }
        }
    }
    step.put_job(&rec);
    // The job goes to the live gateway that drives the fewest jobs (this
    // one on a tie); that gateway finds it when it next renews its leases.
    let owner = gw.control.least_loaded(gw.jobs.local_load().jobs);
    step.lease_new_job(tenant, &id, &owner, gw.control.lease_ms());
    gw.catalog.job_commit(step).await?;
    tracing::info!(tenant = %tenant, job = %id, inputs = rec.counters.inputs, owner = %owner, "job created");
    if owner == gw.control.id {
        start(gw, rec.clone(), 1);
    }
    Ok(rec)
}

fn start(gw: &Arc<Gateway>, rec: JobRecord, epoch: u64) {
    let id = rec.id.clone();
    let job = Arc::new(ActiveJob {
        id: id.clone(),
        tenant: rec.tenant.clone(),
        epoch,
        lost: Default::default(),
        running: std::sync::Mutex::new(vec![0; rec.phases.len()]),
        preparing: std::sync::Mutex::new(vec![0; rec.phases.len()]),
        prepared: Default::default(),
        waiting: Default::default(),
        record: Mutex::new(rec),
        wake: Notify::new(),
        image_leases: Default::default(),
    });
    {
        let Ok(mut active) = gw.jobs.active.lock() else {
            return;
        };
        if let Some(old) = active.get(&id) {
            if old.epoch >= epoch && !old.is_lost() {
                // Already driven here under this lease (the creator and
                // the lease renewal can both get here).
                return;
            }
            // A driver under an older epoch of ours: it stops.
            old.lose();
        }
        active.insert(id.clone(), job.clone());
    }
    tokio::spawn(run::drive(gw.clone(), job));
}

/// Drives a job whose lease this gateway holds (just claimed, or leased
/// to it by the gateway that created it), from what the catalog has: a
/// job that had not ended resumes, with finished tasks kept and the rest
/// run again; one that had ended only gives its lease back.
pub(crate) async fn take(gw: &Arc<Gateway>, lease: JobLease) {
    if gw
        .jobs
        .active(&lease.job)
        .is_some_and(|j| j.epoch >= lease.epoch && !j.is_lost())
    {
        return;
    }
    let rec = match gw.catalog.job(&lease.tenant, &lease.job).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(tenant = %lease.tenant, job = %lease.job, error = %e, "cannot read a job to resume; will retry");
            return;
        }
    };
    match rec {
        Some(rec) if rec.state != JobState::Done => {
            tracing::info!(tenant = %rec.tenant, job = %rec.id, epoch = lease.epoch, "resuming job");
            start(gw, rec, lease.epoch);
        }
        _ => {
            let mut step = JobChange::default();
            step.fence(&lease.job, &gw.control.id, lease.epoch);
            step.release_lease(&lease.job);
            if let Err(e) = gw.catalog.job_commit(step).await {
                tracing::debug!(job = %lease.job, error = %e, "releasing an ended job's lease");
            }
        }
    }
}

/// The job as stored (or, while it runs, as its driver has it).
pub async fn get(gw: &Gateway, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
    if let Some(job) = gw.jobs.active(id) {
        let rec = job.record.lock().await.clone();
        if rec.tenant == tenant {
            return Ok(rec);
        }
    }
    gw.catalog
        .job(tenant, id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_string()))
}

/// Why the job's queued tasks wait, by reason, among those the dispatcher
/// last looked at.
pub fn waiting(gw: &Gateway, id: &str) -> HashMap<&'static str, u64> {
    gw.jobs
        .active(id)
        .and_then(|j| {
            j.waiting
                .lock()
                .ok()
                .map(|w| w.iter().map(|(k, v)| (k.name(), *v)).collect())
        })
        .unwrap_or_default()
}

/// Tasks in flight per phase for a job, and of those, tasks waiting for
/// their image (empty when the job is not running here).
pub fn running(gw: &Gateway, id: &str) -> (Vec<u64>, Vec<u64>) {
    gw.jobs
        .active(id)
        .map(|j| run::running_counts(&j))
        .unwrap_or_default()
}

/// Where a job that has not ended is driven.
pub enum Driver {
    Here(Arc<ActiveJob>),
    /// By another gateway, reached at this address.
    Peer(String),
}

async fn running_job(gw: &Arc<Gateway>, tenant: &str, id: &str) -> Result<Driver, JobError> {
    let rec = get(gw, tenant, id).await?;
    if rec.state.is_final() {
        return Err(JobError::Conflict(format!("job {id} has already ended")));
    }
    if let Some(job) = gw.jobs.active(id) {
        return Ok(Driver::Here(job));
    }
    let lease = gw.catalog.job_lease(id).await?;
    match lease {
        // Leased to this gateway, which has not started it yet: now.
        Some((l, false)) if l.owner == gw.control.id => {
            take(gw, l).await;
            gw.jobs
                .active(id)
                .map(Driver::Here)
                .ok_or_else(|| JobError::Unavailable(format!("job {id} is being resumed; retry")))
        }
        Some((l, false)) => match gw.control.peer_addr(&l.owner) {
            Some(addr) => Ok(Driver::Peer(addr)),
            None => Err(JobError::Unavailable(format!(
                "job {id} is being taken over by another gateway; retry"
            ))),
        },
        _ => Err(JobError::Unavailable(format!(
            "job {id} is being resumed; retry"
        ))),
    }
}

/// The job's driver here, or the error to give: a peer drives it.
fn here(d: Driver) -> Result<Arc<ActiveJob>, Driver> {
    match d {
        Driver::Here(j) => Ok(j),
        peer => Err(peer),
    }
}

/// Adds inputs while the job's input is open.
pub async fn add(
    gw: &Arc<Gateway>,
    tenant: &str,
    id: &str,
    inputs: &[String],
) -> Result<u64, JobError> {
    let parsed = parse_inputs(inputs)?;
    let job = here(running_job(gw, tenant, id).await?).map_err(elsewhere)?;
    let mut rec = job.record.lock().await;
    if rec.state.is_final() {
        return Err(JobError::Conflict(format!("job {id} has already ended")));
    }
    if rec.input_closed {
        return Err(JobError::Conflict(format!(
            "the input of job {id} is closed"
        )));
    }
    let mut new = rec.clone();
    let mut step = JobChange::default();
    add_inputs(gw.catalog.as_ref(), &mut step, &mut new, &parsed).await?;
    step.put_job(&new);
    job.commit(gw, step).await.map_err(lost)?;
    *rec = new;
    drop(rec);
    job.wake.notify_one();
    Ok(parsed.len() as u64)
}

/// Closes the job's input: its reducers can then see EOF.
pub async fn end_input(gw: &Arc<Gateway>, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
    let job = here(running_job(gw, tenant, id).await?).map_err(elsewhere)?;
    let mut rec = job.record.lock().await;
    if !rec.input_closed {
        let mut new = rec.clone();
        new.input_closed = true;
        let mut step = JobChange::default();
        step.put_job(&new);
        job.commit(gw, step).await.map_err(lost)?;
        *rec = new;
    }
    let out = rec.clone();
    drop(rec);
    job.wake.notify_one();
    Ok(out)
}

pub async fn cancel(gw: &Arc<Gateway>, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
    let job = here(running_job(gw, tenant, id).await?).map_err(elsewhere)?;
    let mut rec = job.record.lock().await;
    if rec.state.is_final() {
        return Err(JobError::Conflict(format!("job {id} has already ended")));
    }
    let mut new = rec.clone();
    new.state = JobState::Cancelled;
    new.done_ms = Some(now_ms());
    let mut step = JobChange::default();
    step.put_job(&new);
    job.commit(gw, step).await.map_err(lost)?;
    *rec = new;
    let out = rec.clone();
    drop(rec);
    tracing::info!(tenant = %tenant, job = %id, "job cancelled");
    job.wake.notify_one();
    Ok(out)
}

fn elsewhere(d: Driver) -> JobError {
    match d {
        Driver::Peer(addr) => JobError::Elsewhere(addr),
        Driver::Here(j) => JobError::Unavailable(format!("job {} moved; retry", j.id)),
    }
}

/// A commit refused because another gateway took the job meanwhile.
fn lost(e: CatalogError) -> JobError {
    match e {
        CatalogError::Fenced(id) => {
            JobError::Unavailable(format!("job {id} moved to another gateway; retry"))
        }
        e => JobError::Catalog(e),
    }
}

/// Whether the tenant may read an input object: it owns the bucket, or
/// the object's or bucket's ACL lets authenticated users read it.
pub(crate) fn may_read(
    tenant: &str,
    bucket: &BucketRecord,
    obj: &insitu_catalog::ObjectRecord,
) -> bool {
    let p = Principal::User {
        tenant: tenant.to_string(),
        access_key_id: String::new(),
        is_root: false,
    };
    // As S3's GET: the bucket's owner, or the object's own ACL.
    crate::s3::access::is_owner(&p, bucket) || crate::s3::access::acl_allows_read(&p, obj.acl)
}

/// One of a job's lists that the API pages through.
#[derive(Debug, Clone, Copy)]
pub enum JobList {
    Inputs,
    FailedInputs,
    Outputs,
    Errors,
}

/// One page of one of a job's lists after `after` (a sequence number), as
/// JSON values, and whether more follow.
pub async fn list_items(
    gw: &Gateway,
    job: &str,
    list: JobList,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<(u64, serde_json::Value)>, bool), JobError> {
    fn json<T: serde::Serialize>(page: Vec<(u64, T)>) -> Vec<(u64, serde_json::Value)> {
        page.into_iter()
            .map(|(seq, v)| (seq, serde_json::to_value(v).unwrap_or_default()))
            .collect()
    }
    let c = &gw.catalog;
    let n = limit + 1;
    let mut page = match list {
        JobList::Inputs => json(c.job_inputs(job, InputList::All, after, n).await?),
        JobList::FailedInputs => json(c.job_inputs(job, InputList::Failed, after, n).await?),
        JobList::Outputs => json(c.job_outputs(job, after, n).await?),
        JobList::Errors => json(c.job_errors(job, after, n).await?),
    };
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}

/// One page of a tenant's jobs, oldest first, after job id `after`.
pub async fn list_jobs(
    gw: &Gateway,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<JobRecord>, bool), JobError> {
    let mut page = gw.catalog.jobs(tenant, after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}
