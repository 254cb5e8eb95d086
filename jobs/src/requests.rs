//! What the jobs API asks of the supervisor: create a job, read its status,
//! add inputs, end its input, cancel it, and page through its lists. Calls
//! for a job driven by a peer answer `JobError::Elsewhere`, and the API
//! forwards them.

use std::collections::HashMap;
use std::sync::Arc;

use insitu_catalog::{now_ms, InputList, JobChange};
use insitu_job_model::plan;
use insitu_job_model::records::{
    JobCounters, JobRecord, JobState, PhaseCounters, Seqs, TaskRecord, TaskState,
};
use insitu_job_model::{JobSpec, PhaseKind};

use crate::active::*;
use crate::error::*;
use crate::inputs::*;
use crate::ownership::*;
use crate::policy::*;
use crate::Supervisor;

impl Supervisor {
    pub async fn create(
        self: &Arc<Self>,
        tenant: &str,
        spec: JobSpec,
    ) -> Result<JobRecord, JobError> {
        let mut spec = spec;
        let policy = self
            .catalog
            .get_tenant(tenant)
            .await?
            .map(|t| t.policy)
            .unwrap_or_default();
        apply_policy(&mut spec, &self.config.task_maxima.under(&policy))?;
        output_bucket(self.catalog.as_ref(), tenant, &spec).await?;
        check_assets(self.catalog.as_ref(), tenant, &spec).await?;
        let cap = self.config.tenant_max_jobs;
        if cap > 0 && self.running_jobs(tenant) >= cap as usize {
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
        let _held = add_inputs(
            self.catalog.as_ref(),
            self.holds.as_ref(),
            &mut step,
            &mut rec,
            &inputs,
        )
        .await?;
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
                        pin: None,
                    };
                    step.put_reducer(&id, task);
                }
            }
        }
        step.put_job(&rec);
        // The job goes to the live gateway that drives the fewest jobs (this
        // one on a tie); that gateway finds it when it next renews its leases.
        let owner = self.peers.least_loaded(self.local_load().jobs);
        step.lease_new_job(tenant, &id, &owner, self.peers.lease_ms());
        self.catalog.job_commit(step).await?;
        tracing::info!(tenant = %tenant, job = %id, inputs = rec.counters.inputs, owner = %owner, "job created");
        if owner == self.peers.id() {
            start(self, rec.clone(), 1);
        }
        Ok(rec)
    }

    /// The job as stored (or, while it runs, as its driver has it).
    pub async fn get(&self, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
        // Not behind a commit in progress (which waits while the catalog
        // is away): then the catalog has what is committed.
        if let Some(rec) = self
            .active(id)
            .and_then(|j| j.record.try_lock().ok().map(|r| r.clone()))
        {
            if rec.tenant == tenant {
                return Ok(rec);
            }
        }
        self.catalog
            .job(tenant, id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Why the job's queued tasks wait, by reason, among those the dispatcher
    /// last looked at.
    pub fn waiting(&self, id: &str) -> HashMap<&'static str, u64> {
        self.active(id)
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
    pub fn running(&self, id: &str) -> (Vec<u64>, Vec<u64>) {
        self.active(id)
            .map(|j| running_counts(&j))
            .unwrap_or_default()
    }

    /// Adds inputs while the job's input is open.
    pub async fn add(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        inputs: &[String],
    ) -> Result<u64, JobError> {
        let parsed = parse_inputs(inputs)?;
        let job = here(running_job(self, tenant, id).await?).map_err(elsewhere)?;
        let mut rec = job.lock_settled(self).await.map_err(lost)?;
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
        let _held = add_inputs(
            self.catalog.as_ref(),
            self.holds.as_ref(),
            &mut step,
            &mut new,
            &parsed,
        )
        .await?;
        step.put_job(&new);
        job.commit(self, step).await.map_err(lost)?;
        *rec = new;
        drop(rec);
        job.wake.notify_one();
        Ok(parsed.len() as u64)
    }

    /// Closes the job's input: its reducers can then see EOF.
    pub async fn end_input(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
    ) -> Result<JobRecord, JobError> {
        let job = here(running_job(self, tenant, id).await?).map_err(elsewhere)?;
        let mut rec = job.lock_settled(self).await.map_err(lost)?;
        if !rec.input_closed {
            let mut new = rec.clone();
            new.input_closed = true;
            let mut step = JobChange::default();
            step.put_job(&new);
            job.commit(self, step).await.map_err(lost)?;
            *rec = new;
        }
        let out = rec.clone();
        drop(rec);
        job.wake.notify_one();
        Ok(out)
    }

    pub async fn cancel(self: &Arc<Self>, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
        let job = here(running_job(self, tenant, id).await?).map_err(elsewhere)?;
        let mut rec = job.lock_settled(self).await.map_err(lost)?;
        if rec.state.is_final() {
            return Err(JobError::Conflict(format!("job {id} has already ended")));
        }
        let mut new = rec.clone();
        new.state = JobState::Cancelled;
        new.done_ms = Some(now_ms());
        let mut step = JobChange::default();
        step.put_job(&new);
        job.commit(self, step).await.map_err(lost)?;
        *rec = new;
        let out = rec.clone();
        drop(rec);
        tracing::info!(tenant = %tenant, job = %id, "job cancelled");
        job.wake.notify_one();
        Ok(out)
    }

    /// One page of one of a job's lists after `after` (a sequence number), as
    /// JSON values, and whether more follow.
    pub async fn list_items(
        &self,
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
        let c = &self.catalog;
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
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<JobRecord>, bool), JobError> {
        let mut page = self.catalog.jobs(tenant, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
}

/// Where a job that has not ended is driven.
pub enum Driver {
    Here(Arc<ActiveJob>),
    /// By another gateway, reached at this address.
    Peer(String),
}

pub(crate) async fn running_job(
    sv: &Arc<Supervisor>,
    tenant: &str,
    id: &str,
) -> Result<Driver, JobError> {
    let rec = sv.get(tenant, id).await?;
    if rec.state.is_final() {
        return Err(JobError::Conflict(format!("job {id} has already ended")));
    }
    if let Some(job) = sv.active(id) {
        return Ok(Driver::Here(job));
    }
    let lease = sv.catalog.job_lease(id).await?;
    match lease {
        // Leased to this gateway, which has not started it yet: now.
        Some((l, false)) if l.owner == sv.peers.id() => {
            sv.take(l).await;
            sv.active(id)
                .map(Driver::Here)
                .ok_or_else(|| JobError::Unavailable(format!("job {id} is being resumed; retry")))
        }
        Some((l, false)) => match sv.peers.peer_addr(&l.owner) {
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
pub(crate) fn here(d: Driver) -> Result<Arc<ActiveJob>, Driver> {
    match d {
        Driver::Here(j) => Ok(j),
        peer => Err(peer),
    }
}

pub(crate) fn elsewhere(d: Driver) -> JobError {
    match d {
        Driver::Peer(addr) => JobError::Elsewhere(addr),
        Driver::Here(j) => JobError::Unavailable(format!("job {} moved; retry", j.id)),
    }
}

/// One of a job's lists that the API pages through.
#[derive(Debug, Clone, Copy)]
pub enum JobList {
    Inputs,
    FailedInputs,
    Outputs,
    Errors,
}
