//! Tasks in flight per node and per tenant across gateways: the task
//! slots, fair share and tenant caps are decided on these counts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use insitu_catalog::GatewayLoad;

/// A tenant's running tasks, and when it last had a task wait for a slot.
#[derive(Default)]
pub(crate) struct TenantLoad {
    pub(crate) running: u32,
    pub(crate) waiting_at: Option<Instant>,
}

/// How long a tenant whose task could not get a slot counts as waiting.
pub(crate) const WAITING_FOR: Duration = Duration::from_secs(2);

/// Tasks in flight per node and per tenant, and reducers per node, from
/// this gateway and (as of their last beats) the others: what task slots,
/// fair share and tenant caps are decided on.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) node_tasks: std::sync::Mutex<HashMap<String, u32>>,
    pub(crate) node_reducers: std::sync::Mutex<HashMap<String, i64>>,
    pub(crate) tenants: std::sync::Mutex<HashMap<String, TenantLoad>>,
    /// What the other gateways on the catalog run, summed, as of their
    /// last beats: slots and fair share count it too.
    pub(crate) remote: std::sync::RwLock<GatewayLoad>,
}

impl Load {
    /// Tasks running on a node, from every gateway.
    pub(crate) fn tasks_on(&self, node: &str) -> u32 {
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

    /// What this gateway runs, for its beat (but its job counts, which
    /// the supervisor adds).
    pub(crate) fn local(&self) -> GatewayLoad {
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
        let others_waiting = waiting.iter().any(|name| *name != tenant);
        let mut sharing: std::collections::HashSet<&str> = waiting;
        sharing.extend(running.iter().filter(|(_, n)| **n > 0).map(|(k, _)| *k));
        sharing.insert(tenant);
        insitu_job_model::plan::fair_share_allows(mine, cap, total, others_waiting, sharing.len())
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

    /// Jobs of a tenant that have not ended, on the other gateways.
    pub(crate) fn remote_jobs(&self, tenant: &str) -> usize {
        self.remote
            .read()
            .map(|r| r.tenant_jobs.get(tenant).copied().unwrap_or(0))
            .unwrap_or(0) as usize
    }
}
