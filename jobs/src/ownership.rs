//! Job ownership through leases: starting a driver, resuming a job whose
//! lease this gateway took, renewing leases and claiming expired ones.

use std::sync::Arc;

use insitu_catalog::{JobChange, JobLease};
use insitu_job_model::records::{JobRecord, JobState};
use tokio::sync::{Mutex, Notify};

use crate::active::*;
use crate::driver::*;
use crate::Supervisor;

impl Supervisor {
    /// Drives a job whose lease this gateway holds (just claimed, or leased
    /// to it by the gateway that created it), from what the catalog has: a
    /// job that had not ended resumes, with finished tasks kept and the rest
    /// run again; one that had ended only gives its lease back.
    pub async fn take(self: &Arc<Self>, lease: JobLease) {
        if self
            .active(&lease.job)
            .is_some_and(|j| j.epoch >= lease.epoch && !j.is_lost())
        {
            return;
        }
        let rec = match self.catalog.job(&lease.tenant, &lease.job).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant = %lease.tenant, job = %lease.job, error = %e, "cannot read a job to resume; will retry");
                return;
            }
        };
        match rec {
            Some(rec) if rec.state != JobState::Done => {
                tracing::info!(tenant = %rec.tenant, job = %rec.id, epoch = lease.epoch, "resuming job");
                start(self, rec, lease.epoch);
            }
            _ => {
                let mut step = JobChange::default();
                step.fence(&lease.job, self.peers.id(), lease.epoch);
                step.release_lease(&lease.job);
                if let Err(e) = self.catalog.job_commit(step).await {
                    tracing::debug!(job = %lease.job, error = %e, "releasing an ended job's lease");
                }
            }
        }
    }
}

pub(crate) fn start(sv: &Arc<Supervisor>, rec: JobRecord, epoch: u64) {
    let id = rec.id.clone();
    let job = Arc::new(ActiveJob {
        id: id.clone(),
        tenant: rec.tenant.clone(),
        epoch,
        lost: Default::default(),
        unsettled: Default::default(),
        running: std::sync::Mutex::new(vec![0; rec.phases.len()]),
        preparing: std::sync::Mutex::new(vec![0; rec.phases.len()]),
        prepared: Default::default(),
        assets_counted: Default::default(),
        waiting: Default::default(),
        locality: Default::default(),
        memo_writes: Default::default(),
        record: Mutex::new(rec),
        wake: Notify::new(),
        image_leases: Default::default(),
    });
    {
        let Ok(mut active) = sv.active.lock() else {
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
    tokio::spawn(drive(sv.clone(), job));
}

/// Job leases claimed in one turn while peers share the work: few, so the
/// jobs of a dead gateway spread over the live ones.
const CLAIMS_PER_TURN: usize = 8;
/// Claimed in one turn by a gateway alone: more, but never so many that
/// the turn outlasts the lease.
const CLAIMS_ALONE: usize = 256;

impl Supervisor {
    /// One turn of job ownership: renews this gateway's job leases, starts
    /// the jobs leased to it that it does not drive yet, stops drivers
    /// whose lease another gateway took, and takes over jobs whose owner
    /// let the lease expire. The gateway's control loop calls it well
    /// inside every lease.
    pub async fn own_jobs(self: &Arc<Self>) {
        let me = self.peers.id().to_string();
        let lease_ms = self.peers.lease_ms();
        let owned = match self.catalog.renew_job_leases(&me, lease_ms).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew job leases");
                return;
            }
        };
        for job in self.active_jobs() {
            if owned
                .iter()
                .any(|l| l.job == job.id && l.epoch == job.epoch)
            {
                continue;
            }
            // Not renewed: ended meanwhile, created since the renewal, or
            // taken by another gateway. Only the last stops the driver.
            // No lease at all: another gateway took the job and ended it.
            if let Ok(lease) = self.catalog.job_lease(&job.id).await {
                if lease.is_none_or(|(l, _)| l.owner != me || l.epoch != job.epoch) {
                    job.lose();
                }
            }
        }
        for lease in owned {
            self.take(lease).await;
        }
        let limit = if self.peers.alone() {
            CLAIMS_ALONE
        } else {
            CLAIMS_PER_TURN
        };
        match self.catalog.claim_jobs(&me, lease_ms, limit).await {
            Ok(claimed) => {
                for lease in claimed {
                    tracing::info!(tenant = %lease.tenant, job = %lease.job, epoch = lease.epoch, "job lease taken over");
                    self.take(lease).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot claim expired job leases"),
        }
    }
}
