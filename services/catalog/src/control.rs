//! Coordination between the gateways that share one catalog: who is alive,
//! which gateway leads each background loop, which gateway owns each job
//! (a lease with an epoch, the fencing token every job commit carries), the
//! blobs a gateway is writing or reading now (intents, so that another
//! gateway's GC or orphan sweep leaves them alone), and what every node
//! last reported.
//!
//! Every expiry is judged by the catalog's clock, never a gateway's, so
//! gateways whose clocks disagree still agree on who holds what. The
//! embedded backend serves one process only: it keeps all of this in
//! memory, where nobody else can contend for it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// What a gateway runs now, as it last reported: the inputs of the
/// cluster-wide task slots and fair share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayLoad {
    /// Tasks this gateway runs on each node.
    #[serde(default)]
    pub node_tasks: BTreeMap<String, u32>,
    /// Reducers this gateway runs on each node.
    #[serde(default)]
    pub node_reducers: BTreeMap<String, u32>,
    /// Tasks this gateway runs for each tenant.
    #[serde(default)]
    pub tenant_tasks: BTreeMap<String, u32>,
    /// Tenants with a task that waited for a slot here lately.
    #[serde(default)]
    pub tenants_waiting: Vec<String>,
    /// Jobs this gateway drives.
    #[serde(default)]
    pub jobs: u32,
    /// Of those, per tenant (the per-tenant job cap holds cluster-wide).
    #[serde(default)]
    pub tenant_jobs: BTreeMap<String, u32>,
}

/// A gateway's beat: it is alive, where its peers reach it, and its load.
#[derive(Debug, Clone)]
pub struct GatewayBeat {
    pub id: String,
    /// The base URL other gateways use for its internal API.
    pub addr: String,
    pub load: GatewayLoad,
}

/// A gateway as its last beat described it.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    pub id: String,
    pub addr: String,
    /// How long ago it beat, by the catalog's clock.
    pub age_ms: i64,
    pub load: GatewayLoad,
}

/// Ownership of one unfinished job. Every commit for the job carries the
/// owner and epoch it was made under; a taker raises the epoch, so an
/// owner that stalled past its lease can change nothing any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    pub tenant: String,
    pub job: String,
    pub owner: String,
    pub epoch: u64,
}

/// A storage node's last heartbeat, as some gateway recorded it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub id: String,
    /// How long ago, by the catalog's clock.
    pub age_ms: i64,
    /// The heartbeat's figures (space, load, corrupt blobs) as JSON.
    pub report: String,
}

#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Whether several processes may share this catalog. When not, the
    /// one gateway holds every lease and needs no intents.
    fn is_shared(&self) -> bool;

    /// The catalog's clock, in milliseconds since the epoch: what queue
    /// times (`GcRecord::queued_ms`) are written in.
    async fn now_ms(&self) -> Result<i64>;

    async fn gateway_beat(&self, beat: &GatewayBeat) -> Result<()>;
    /// Gateways that beat within the last `within_ms`.
    async fn gateways(&self, within_ms: i64) -> Result<Vec<GatewayInfo>>;
    /// Forgets a gateway that stopped cleanly.
    async fn gateway_gone(&self, id: &str) -> Result<()>;

    /// Takes the leader lease `name` for `ttl_ms`, or renews it when
    /// `holder` has it; the lease's epoch if `holder` holds it now.
    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<u64>>;

    /// Extends every job lease `owner` holds; those leases.
    async fn renew_job_leases(&self, owner: &str, ttl_ms: i64) -> Result<Vec<JobLease>>;
    /// Takes up to `limit` job leases whose owner let them expire, each
    /// with its epoch raised.
    async fn claim_jobs(&self, owner: &str, ttl_ms: i64, limit: usize) -> Result<Vec<JobLease>>;
    /// The job's lease, and whether it has expired.
    async fn job_lease(&self, job: &str) -> Result<Option<(JobLease, bool)>>;

    /// Records that `holder` is using these blobs, until `ttl_ms` from now
    /// unless renewed.
    async fn hold_intents(&self, holder: &str, ids: &[String], ttl_ms: i64) -> Result<()>;
    async fn release_intents(&self, holder: &str, ids: &[String]) -> Result<()>;
    /// Whether any gateway holds an unexpired intent on the blob.
    async fn has_intent(&self, blob_id: &str) -> Result<bool>;

    async fn node_seen(&self, id: &str, report: &str) -> Result<()>;
    async fn node_reports(&self) -> Result<Vec<NodeReport>>;
}
