//! The job supervisor: it drives every running job, placing each map task
//! on a node that holds its input, feeding reducers, and committing outputs
//! together with the job's durable state. The job model it works from
//! (spec, records, plan) is `insitu-job-model`, re-exported here.
//!
//! One driver task per running job owns the job's progress. The job's
//! record lives in memory behind a mutex and is written to the catalog in
//! the same atomic change as everything it describes, so a gateway that
//! takes the job over (a restart, or a peer once the lease expired) resumes
//! it from exactly what was committed: finished tasks are never run again,
//! and tasks that were in flight run again, with only one attempt's output
//! ever committed.
//!
//! The supervisor reaches nodes through [`NodeClient`] and its gateway
//! through [`Peers`] and [`BlobHolds`], so its state machine is tested
//! without HTTP (see `tests/supervisor.rs`).
//!
//! | file | what it owns |
//! |------|--------------|
//! | `requests.rs` | what the jobs API asks: create, status, add inputs, end input, cancel, lists |
//! | `ownership.rs` | job leases: start, take over, renew, stop a driver whose lease moved |
//! | `driver.rs` | one job's loop: expand inputs, dispatch, start reducers, finish |
//! | `placement.rs` | where a task runs: holders, slots, fair share, why it waits |
//! | `attempt.rs` | one attempt on one node: image, run, replicate the outputs |
//! | `reducer.rs` | a reducer and the feed of its input pieces |
//! | `commit.rs` | outcomes committed with the job's state; finishing, cancelling, cleanup |
//! | `inputs.rs` | adding inputs, and the read check on the version read |
//! | `load.rs` | tasks in flight per node and tenant, across gateways |

mod active;
mod attempt;
mod commit;
mod driver;
mod error;
mod host;
mod inputs;
mod load;
mod logs;
mod memo;
mod node_client;
mod ownership;
mod placement;
mod policy;
mod reducer;
mod requests;

use std::collections::HashMap;
use std::sync::Arc;

pub use insitu_job_model::*;

pub use active::ActiveJob;
pub use error::JobError;
pub use host::{BlobHold, BlobHolds, Peers, SupervisorConfig, SupervisorParts};
pub use logs::LogFilter;
pub use node_client::{NodeCallError, NodeClient, NodeResult};
pub use policy::{check_policy, TaskMaxima};
pub use requests::JobList;

use insitu_catalog::{Catalog, GatewayLoad};

/// The job supervisor of one gateway.
pub struct Supervisor {
    catalog: Arc<dyn Catalog>,
    nodes: Arc<dyn NodeClient>,
    holds: Arc<dyn BlobHolds>,
    peers: Arc<dyn Peers>,
    config: SupervisorConfig,
    /// The jobs this gateway drives, by id.
    active: std::sync::Mutex<HashMap<String, Arc<ActiveJob>>>,
    load: load::Load,
    images: attempt::ImageCopies,
    /// Log streams open on this gateway, per tenant.
    followers: std::sync::Mutex<HashMap<String, usize>>,
}

impl Supervisor {
    pub fn new(parts: SupervisorParts) -> Arc<Self> {
        Arc::new(Self {
            catalog: parts.catalog,
            nodes: parts.nodes,
            holds: parts.holds,
            peers: parts.peers,
            config: parts.config,
            active: Default::default(),
            load: Default::default(),
            images: Default::default(),
            followers: Default::default(),
        })
    }

    fn active(&self, id: &str) -> Option<Arc<ActiveJob>> {
        self.active.lock().ok()?.get(id).cloned()
    }

    /// Whether the job runs on this gateway.
    pub fn drives(&self, id: &str) -> bool {
        self.active(id).is_some()
    }

    /// The jobs this gateway drives.
    fn active_jobs(&self) -> Vec<Arc<ActiveJob>> {
        self.active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// What this gateway runs, for its beat.
    pub fn local_load(&self) -> GatewayLoad {
        let mut load = self.load.local();
        if let Ok(active) = self.active.lock() {
            load.jobs = active.len() as u32;
            for j in active.values() {
                *load.tenant_jobs.entry(j.tenant.clone()).or_default() += 1;
            }
        }
        load
    }

    /// Records what the other gateways run (their last beats).
    pub fn set_remote(&self, loads: impl Iterator<Item = GatewayLoad>) {
        self.load.set_remote(loads);
    }

    /// Jobs of a tenant that have not ended, on every gateway.
    fn running_jobs(&self, tenant: &str) -> usize {
        let here = self
            .active
            .lock()
            .map(|a| a.values().filter(|j| j.tenant == tenant).count())
            .unwrap_or(0);
        here + self.load.remote_jobs(tenant)
    }
}
