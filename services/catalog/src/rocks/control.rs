//! Coordination for the embedded backend. A rocksdb catalog is opened by
//! one process only (rocksdb locks its directory), so there is nobody to
//! contend with: leases, gateways and node reports live in memory, and
//! intents are not needed. Job leases still carry epochs, so the gateway's
//! supervisor runs the same code on both backends; at start every job that
//! has not ended is up for claiming, which is how it is resumed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use insitu_job_model::records::JobRecord;

use super::RocksCatalog;
use crate::api::{JobChange, JobStore};
use crate::control::*;
use crate::{CatalogError, Result};

struct Held {
    holder: String,
    epoch: u64,
    expires: Instant,
}

struct Beat {
    addr: String,
    at: Instant,
    load: GatewayLoad,
}

#[derive(Default)]
pub(super) struct Control {
    leases: Mutex<HashMap<String, Held>>,
    /// Job id -> (tenant, lease).
    jobs: Mutex<HashMap<String, (String, Held)>>,
    /// Whether the jobs stored before this start were put up for claiming.
    loaded: tokio::sync::Mutex<bool>,
    gateways: Mutex<HashMap<String, Beat>>,
    nodes: Mutex<HashMap<String, (Instant, String)>>,
}

fn poisoned<T>(_: T) -> CatalogError {
    CatalogError::Db("catalog control state poisoned".into())
}

fn ttl(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

fn age_ms(at: Instant) -> i64 {
    at.elapsed().as_millis() as i64
}

impl Control {
    /// Checks a job change's fence, before its writes. Only this process
    /// takes leases, so nothing can come between the check and the write.
    pub(super) fn check(&self, change: &JobChange) -> Result<()> {
        let jobs = self.jobs.lock().map_err(poisoned)?;
        if let Some((job, owner, epoch)) = &change.fence {
            let holds = jobs
                .get(job)
                .is_some_and(|(_, h)| h.holder == *owner && h.epoch == *epoch);
            if !holds {
                return Err(CatalogError::Fenced(job.clone()));
            }
        }
        Ok(())
    }

    /// Applies a job change's lease changes, once its writes are durable.
    pub(super) fn applied(&self, change: &JobChange) -> Result<()> {
        let mut jobs = self.jobs.lock().map_err(poisoned)?;
        if let Some((tenant, job, owner, ms)) = &change.new_lease {
            let held = Held {
                holder: owner.clone(),
                epoch: 1,
                expires: Instant::now() + ttl(*ms),
            };
            jobs.insert(job.clone(), (tenant.clone(), held));
        }
        if let Some(job) = &change.release {
            jobs.remove(job);
        }
        Ok(())
    }
}

fn lease(job: &str, tenant: &str, h: &Held) -> JobLease {
    JobLease {
        tenant: tenant.to_string(),
        job: job.to_string(),
        owner: h.holder.clone(),
        epoch: h.epoch,
    }
}

impl RocksCatalog {
    /// Puts every stored job that has not ended up for claiming, once.
    async fn load_jobs(&self) -> Result<()> {
        let mut loaded = self.control.loaded.lock().await;
        if *loaded {
            return Ok(());
        }
        let mut after: Option<(String, String)> = None;
        // Ended jobs whose lease release never happened (a crash during a
        // cancel's cleanup): their pins go now.
        let mut ended = Vec::new();
        loop {
            let cursor = after.as_ref().map(|(t, j)| (t.as_str(), j.as_str()));
            let page: Vec<JobRecord> = self.all_jobs(cursor, 256).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.tenant.clone(), last.id.clone()));
            ended.extend(
                page.iter()
                    .filter(|r| r.state.is_final())
                    .map(|r| r.id.clone()),
            );
            let mut jobs = self.control.jobs.lock().map_err(poisoned)?;
            // Not cancelled ones: their cleanup would run again at every
            // start (an interrupted one is not finished; see ARCHITECTURE).
            for rec in page.into_iter().filter(|r| !r.state.is_final()) {
                jobs.entry(rec.id.clone()).or_insert_with(|| {
                    let held = Held {
                        holder: String::new(),
                        epoch: 0,
                        expires: Instant::now(),
                    };
                    (rec.tenant.clone(), held)
                });
            }
        }
        for job in ended {
            let id = job.clone();
            if self.run(move |c| c.job_has_pins(&id)).await? {
                let mut change = JobChange::default();
                change.release_lease(&job);
                self.run(move |c| c.job_commit(change)).await?;
            }
        }
        *loaded = true;
        Ok(())
    }
}

#[async_trait]
impl ControlStore for RocksCatalog {
    fn is_shared(&self) -> bool {
        false
    }

    async fn now_ms(&self) -> Result<i64> {
        Ok(crate::now_ms())
    }

    async fn gateway_beat(&self, beat: &GatewayBeat) -> Result<()> {
        let b = Beat {
            addr: beat.addr.clone(),
            at: Instant::now(),
            load: beat.load.clone(),
        };
        self.control
            .gateways
            .lock()
            .map_err(poisoned)?
            .insert(beat.id.clone(), b);
        Ok(())
    }

    async fn gateways(&self, within_ms: i64) -> Result<Vec<GatewayInfo>> {
        let g = self.control.gateways.lock().map_err(poisoned)?;
        let mut out: Vec<GatewayInfo> = g
            .iter()
            .filter(|(_, b)| age_ms(b.at) <= within_ms)
            .map(|(id, b)| GatewayInfo {
                id: id.clone(),
                addr: b.addr.clone(),
                age_ms: age_ms(b.at),
                load: b.load.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn gateway_gone(&self, id: &str) -> Result<()> {
        self.control.gateways.lock().map_err(poisoned)?.remove(id);
        Ok(())
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<u64>> {
        let mut leases = self.control.leases.lock().map_err(poisoned)?;
        let now = Instant::now();
        let held = leases.entry(name.to_string()).or_insert_with(|| Held {
            holder: holder.to_string(),
            epoch: 0,
            expires: now,
        });
        if held.holder != holder && held.expires > now {
            return Ok(None);
        }
        if held.holder != holder || held.epoch == 0 {
            held.epoch += 1;
            held.holder = holder.to_string();
        }
        held.expires = now + ttl(ttl_ms);
        Ok(Some(held.epoch))
    }

    async fn renew_job_leases(&self, owner: &str, ttl_ms: i64) -> Result<Vec<JobLease>> {
        let mut jobs = self.control.jobs.lock().map_err(poisoned)?;
        let until = Instant::now() + ttl(ttl_ms);
        Ok(jobs
            .iter_mut()
            .filter(|(_, (_, h))| h.holder == owner)
            .map(|(job, (tenant, h))| {
                h.expires = until;
                lease(job, tenant, h)
            })
            .collect())
    }

    async fn claim_jobs(&self, owner: &str, ttl_ms: i64, limit: usize) -> Result<Vec<JobLease>> {
        self.load_jobs().await?;
        let mut jobs = self.control.jobs.lock().map_err(poisoned)?;
        let now = Instant::now();
        Ok(jobs
            .iter_mut()
            // This process is the only gateway: a lease it holds stays its
            // own however late it renews (no restart of its own jobs).
            .filter(|(_, (_, h))| h.expires < now && h.holder != owner)
            .take(limit)
            .map(|(job, (tenant, h))| {
                h.holder = owner.to_string();
                h.epoch += 1;
                h.expires = now + ttl(ttl_ms);
                lease(job, tenant, h)
            })
            .collect())
    }

    async fn job_lease(&self, job: &str) -> Result<Option<(JobLease, bool)>> {
        let jobs = self.control.jobs.lock().map_err(poisoned)?;
        Ok(jobs
            .get(job)
            .map(|(tenant, h)| (lease(job, tenant, h), h.expires < Instant::now())))
    }

    async fn hold_intents(&self, _holder: &str, _ids: &[String], _ttl_ms: i64) -> Result<()> {
        Ok(())
    }

    async fn release_intents(&self, _holder: &str, _ids: &[String]) -> Result<()> {
        Ok(())
    }

    async fn has_intent(&self, _blob_id: &str) -> Result<bool> {
        Ok(false)
    }

    async fn node_seen(&self, id: &str, report: &str) -> Result<()> {
        self.control
            .nodes
            .lock()
            .map_err(poisoned)?
            .insert(id.to_string(), (Instant::now(), report.to_string()));
        Ok(())
    }

    async fn node_reports(&self) -> Result<Vec<NodeReport>> {
        let nodes = self.control.nodes.lock().map_err(poisoned)?;
        let mut out: Vec<NodeReport> = nodes
            .iter()
            .map(|(id, (at, report))| NodeReport {
                id: id.clone(),
                age_ms: age_ms(*at),
                report: report.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
