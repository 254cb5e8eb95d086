//! Where a task runs: the up holders of its input with a free slot, within
//! its tenant's share, or, once its job has waited long enough for one,
//! another node (delay scheduling); and why a task waits when none will do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use insitu_catalog::BlobRef;
use insitu_job_model::plan;
use insitu_job_model::records::{JobRecord, TaskRecord};
use insitu_job_model::JobErrorCode;

use crate::host::*;
use crate::inputs::*;
use crate::Supervisor;

/// A task slot on a node, released when dropped.
pub(crate) struct Slot {
    pub(crate) sv: Arc<Supervisor>,
    pub(crate) node: String,
    pub(crate) tenant: String,
}

impl Slot {
    pub(crate) fn take(sv: &Arc<Supervisor>, node: &str, tenant: &str) -> Self {
        sv.load.take_slot(node, tenant);
        Self {
            sv: sv.clone(),
            node: node.to_string(),
            tenant: tenant.to_string(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sv.load.release_slot(&self.node, &self.tenant);
    }
}

pub(crate) enum Place {
    Run(MapRun),
    Wait(Waiting),
    Fail(JobErrorCode, String),
}

/// Delay scheduling's clock (Zaharia et al., EuroSys 2010): since when a
/// job has had map tasks waiting only for a slot on a node holding their
/// input, starting none next to its input. Past
/// [`SupervisorConfig::locality_wait`], such a task may run on another
/// node, its input copied there. It stops when the job starts a task next
/// to its input, or has no task waiting so.
#[derive(Default)]
pub(crate) struct LocalityClock(std::sync::Mutex<Option<Instant>>);

impl LocalityClock {
    /// Starts the clock if it is not running; whether `wait` is over.
    pub(crate) fn waited(&self, wait: Duration) -> bool {
        match self.0.lock() {
            Ok(mut since) => since.get_or_insert_with(Instant::now).elapsed() >= wait,
            Err(_) => false,
        }
    }

    pub(crate) fn stop(&self) {
        if let Ok(mut since) = self.0.lock() {
            *since = None;
        }
    }

    /// Starts the wait again from now.
    pub(crate) fn restart(&self) {
        if let Ok(mut since) = self.0.lock() {
            *since = Some(Instant::now());
        }
    }

    /// What is left of `wait`, while the clock runs.
    pub(crate) fn left(&self, wait: Duration) -> Option<Duration> {
        let since = (*self.0.lock().ok()?)?;
        Some(wait.saturating_sub(since.elapsed()))
    }
}

/// Where a map task runs and what it reads.
pub(crate) struct MapRun {
    /// The slot taken on the chosen node, at placement, so that one
    /// dispatch pass cannot overfill a node.
    pub(crate) slot: Slot,
    pub(crate) holders: Vec<String>,
    pub(crate) input: BlobRef,
    /// The version checked is the version read: GC keeps its blob while
    /// the task waits for its image and runs, even if the key is
    /// overwritten meanwhile.
    pub(crate) input_lease: BlobHold,
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

/// Why no map task of `tenant` could start now, whatever its input:
/// every up node's slots are taken, or the tenant is at its share. The
/// driver asks this before looking any task's input up, so that a busy
/// cluster costs no catalog reads per queued task.
pub(crate) fn blocked(sv: &Supervisor, tenant: &str) -> Option<Waiting> {
    let slots = sv.config.task_slots;
    let up: Vec<String> = sv
        .nodes
        .node_ids()
        .into_iter()
        .filter(|n| sv.nodes.is_up(n))
        .collect();
    if up.is_empty() {
        // Each task says why: no live replica.
        return None;
    }
    let total = up.len() as u32 * slots;
    let why = if !sv.load.may_start(tenant, total, sv.config.tenant_max_tasks) {
        Waiting::TenantShare
    } else if up.iter().all(|n| sv.load.tasks_on(n) >= slots) {
        Waiting::NodeBusy
    } else {
        return None;
    };
    sv.load.note_waiting(tenant);
    Some(why)
}

/// Places a map task on a holder of its input with a free slot, or, with
/// `away` (its job's locality wait is over), on another up node with a
/// free slot and room for a copy of the input.
pub(crate) async fn place_map(
    sv: &Arc<Supervisor>,
    rec: &JobRecord,
    task: &TaskRecord,
    away: bool,
) -> Place {
    let loc = task.input.clone().unwrap_or_default();
    let (bucket, key) = split(&loc);
    let blob = match &task.pin {
        // The version pinned when the input was added, checked then: read
        // whatever happened to the key since.
        Some(pin) => match pinned_blob(sv.catalog.as_ref(), &bucket, &key, pin).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Place::Fail(
                    JobErrorCode::ResourceNotFoundError,
                    format!(
                        "the version of {loc} the job pinned (ETag {}) is gone",
                        pin.etag
                    ),
                )
            }
            Err(_) => return Place::Wait(Waiting::Catalog),
        },
        // Unpinned (a task recorded before inputs were pinned): the
        // version checked is the version read, since the key may be
        // overwritten with other permissions at any moment.
        None => match check_input(sv.catalog.as_ref(), &rec.tenant, &bucket, &key).await {
            Ok(o) => o.blob,
            Err((JobErrorCode::InternalError, _)) => return Place::Wait(Waiting::Catalog),
            Err((code, message)) => return Place::Fail(code, message),
        },
    };
    let slots = sv.config.task_slots;
    let up = |n: &String| sv.nodes.is_up(n);
    // With no bytes there is nothing to be local to: any up node will do.
    let holders: Vec<String> = if blob.size == 0 {
        sv.nodes.node_ids().into_iter().filter(up).collect()
    } else {
        blob.replicas.iter().filter(|n| up(n)).cloned().collect()
    };
    if holders.is_empty() {
        // Repair or a returning node will make a replica available.
        return Place::Wait(Waiting::NoLiveReplica);
    }
    // The share first: a tenant over its share waits for that reason,
    // whether or not a slot happens to be free at this moment.
    let total = (sv.nodes.node_ids().into_iter().filter(up).count() as u32) * slots;
    if !sv
        .load
        .may_start(&rec.tenant, total, sv.config.tenant_max_tasks)
    {
        sv.load.note_waiting(&rec.tenant);
        return Place::Wait(Waiting::TenantShare);
    }
    let load = |n: &str| sv.load.tasks_on(n);
    let node = plan::choose_node(&holders, &[], load, slots).or_else(|| {
        let others: Vec<String> = match away {
            true => sv
                .nodes
                .node_ids()
                .into_iter()
                .filter(|n| up(n) && !holders.contains(n) && sv.nodes.has_room(n, blob.size))
                .collect(),
            false => Vec::new(),
        };
        plan::choose_node(&others, &[], load, slots)
    });
    let Some(node) = node else {
        sv.load.note_waiting(&rec.tenant);
        return Place::Wait(Waiting::NodeBusy);
    };
    Place::Run(MapRun {
        slot: Slot::take(sv, &node, &rec.tenant),
        holders,
        input_lease: sv.holds.hold(&blob.id),
        input: blob,
    })
}

/// A reducer placed on a node, counted until dropped (reducers wait for
/// input, so they do not take task slots, or maps could never run).
pub(crate) struct ReducerPlace {
    pub(crate) sv: Arc<Supervisor>,
    pub(crate) node: String,
}

impl ReducerPlace {
    pub(crate) fn take(sv: &Arc<Supervisor>, node: &str) -> Self {
        sv.load.add_reducer(node, 1);
        Self {
            sv: sv.clone(),
            node: node.to_string(),
        }
    }
}

impl Drop for ReducerPlace {
    fn drop(&mut self) {
        self.sv.load.add_reducer(&self.node, -1);
    }
}

/// A failed call to a node now marked unreachable never started the task
/// (a stale address after a restart, a node that just died): it does not
/// count against the task's attempts.
pub(crate) fn never_started(sv: &Supervisor, node: &str) -> bool {
    !sv.nodes.is_up(node)
}
