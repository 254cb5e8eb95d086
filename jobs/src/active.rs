//! A job being driven here: its record, its lease epoch, and what runs
//! and waits, shared by its driver and the API.

use std::collections::HashMap;

use insitu_catalog::{CatalogError, JobChange};
use insitu_job_model::records::JobRecord;
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::host::*;
use crate::placement::*;
use crate::Supervisor;

/// A running job, shared by its driver and the API.
pub struct ActiveJob {
    pub id: String,
    pub tenant: String,
    /// The epoch of this gateway's lease on the job: every commit carries
    /// it, and the catalog refuses it once another gateway took the job.
    pub epoch: u64,
    /// Set when a commit was refused for a stale epoch: the driver stops,
    /// leaving the job to its new owner.
    pub(crate) lost: std::sync::atomic::AtomicBool,
    /// Set when a commit's outcome is unknown (the catalog went away
    /// during it): it may have landed, so `record` may be behind the
    /// catalog's until [`ActiveJob::lock_settled`] reads it again.
    pub(crate) unsettled: std::sync::atomic::AtomicBool,
    pub record: Mutex<JobRecord>,
    /// Wakes the driver: inputs added or ended, job cancelled.
    pub wake: Notify,
    /// Image copies made for this job, kept from the orphan sweep.
    pub(crate) image_leases: std::sync::Mutex<Vec<BlobHold>>,
    /// Tasks in flight, per phase.
    pub(crate) running: std::sync::Mutex<Vec<u64>>,
    /// Of those, tasks waiting for their image to be pulled or loaded.
    pub(crate) preparing: std::sync::Mutex<Vec<u64>>,
    /// (phase, node) pairs whose image is ready, with its content id
    /// there when the node said it.
    pub(crate) prepared: std::sync::Mutex<std::collections::HashMap<(u32, String), Option<String>>>,
    /// (phase, node) pairs whose assets are counted in the job's bytes.
    pub(crate) assets_counted: std::sync::Mutex<std::collections::HashSet<(u32, String)>>,
    /// How long its map tasks have waited for their holders' slots.
    pub(crate) locality: LocalityClock,
    /// Why the queued tasks the dispatcher last looked at are waiting.
    pub(crate) waiting: std::sync::Mutex<HashMap<Waiting, u64>>,
    /// Memo entries being written for committed tasks: the job is done
    /// only once they are (finished ones are dropped as more come).
    pub(crate) memo_writes: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ActiveJob {
    /// Commits a change to the job under this gateway's lease.
    pub(crate) async fn commit(
        &self,
        sv: &Supervisor,
        mut step: JobChange,
    ) -> Result<(), CatalogError> {
        step.fence(&self.id, sv.peers.id(), self.epoch);
        let result = sv.catalog.job_commit(step).await;
        match &result {
            Err(CatalogError::Fenced(_)) => self.lose(),
            Err(e) if e.is_retryable() => {
                self.unsettled
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            _ => {}
        }
        result
    }

    /// Locks the job's record for a change, first reading it again from
    /// the catalog if an earlier commit's outcome is unknown: every commit
    /// writes the record, so the catalog's copy says what landed. Fails
    /// (retryable) while the catalog is away.
    pub(crate) async fn lock_settled(
        &self,
        sv: &Supervisor,
    ) -> Result<MutexGuard<'_, JobRecord>, CatalogError> {
        let mut rec = self.record.lock().await;
        if self.unsettled.load(std::sync::atomic::Ordering::SeqCst) {
            match sv.catalog.job(&self.tenant, &self.id).await? {
                Some(stored) => *rec = stored,
                None => {
                    return Err(CatalogError::Corrupt(format!(
                        "job {} is no longer in the catalog",
                        self.id
                    )))
                }
            }
            self.unsettled
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(rec)
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

pub(crate) fn running_counts(job: &ActiveJob) -> (Vec<u64>, Vec<u64>) {
    (
        job.running.lock().map(|r| r.clone()).unwrap_or_default(),
        job.preparing.lock().map(|r| r.clone()).unwrap_or_default(),
    )
}

pub(crate) fn adjust(counts: &std::sync::Mutex<Vec<u64>>, phase: u32, delta: i64) {
    if let Ok(mut r) = counts.lock() {
        if let Some(n) = r.get_mut(phase as usize) {
            *n = n.saturating_add_signed(delta);
        }
    }
}

pub(crate) fn adjust_running(job: &ActiveJob, phase: u32, delta: i64) {
    adjust(&job.running, phase, delta);
}
