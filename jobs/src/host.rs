//! What the supervisor needs from the gateway it runs in, besides nodes
//! and the catalog: its peers on the catalog, holds on blobs in use, and
//! its limits.

use std::sync::Arc;

/// This gateway among the others on one catalog.
pub trait Peers: Send + Sync {
    /// This gateway's id: the owner of the job leases it holds.
    fn id(&self) -> &str;
    /// A job lease's time to live, in milliseconds.
    fn lease_ms(&self) -> i64;
    /// The live gateway that drives the fewest jobs (this one, driving
    /// `mine`, on a tie): where a new job goes.
    fn least_loaded(&self, mine: u32) -> String;
    /// Where a live peer is reached.
    fn peer_addr(&self, id: &str) -> Option<String>;
    /// Whether no live peer shares the catalog.
    fn alone(&self) -> bool;
}

/// Keeps blobs a job uses (inputs being read, outputs being written,
/// image copies) from GC and the orphan sweep while held.
pub trait BlobHolds: Send + Sync {
    fn hold(&self, blob: &str) -> BlobHold;
}

/// A hold on one blob, released when dropped.
pub struct BlobHold(#[allow(dead_code)] Box<dyn Send + Sync>);

impl BlobHold {
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Box::new(guard))
    }
}

/// The supervisor's limits, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Replicas of every task output.
    pub replicas: usize,
    /// Task slots per node.
    pub task_slots: u32,
    /// How long a job that can start no map task on a node holding its
    /// input waits before it starts one on another node, its input copied
    /// there (delay scheduling). `Duration::MAX`: never.
    pub locality_wait: std::time::Duration,
    /// Tasks one tenant may run at once across the cluster (0: no cap).
    pub tenant_max_tasks: u32,
    /// Jobs one tenant may have that have not ended (0: no cap).
    pub tenant_max_jobs: u32,
    /// What one task may ask for where its tenant's policy sets no maximum.
    pub task_maxima: crate::TaskMaxima,
}

/// Everything the supervisor is built from.
pub struct SupervisorParts {
    pub catalog: Arc<dyn insitu_catalog::Catalog>,
    pub nodes: Arc<dyn crate::NodeClient>,
    pub holds: Arc<dyn BlobHolds>,
    pub peers: Arc<dyn Peers>,
    pub config: SupervisorConfig,
}
