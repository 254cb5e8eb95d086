//! Which nodes exist and how alive each is: registration, heartbeats and
//! health answers, liveness states; and membership shared through the
//! catalog, so every gateway learns the nodes another registered, drained
//! or removed, and counts a heartbeat that reached any gateway as contact.

use std::time::{Duration, Instant};

use insitu_node_api::Usage;
use serde::{Deserialize, Serialize};

use super::{NodeError, NodeSet, NodeState, NodeStatus};
use crate::Gateway;

impl NodeSet {
    /// Adds a node, or updates its address; counts as a contact.
    pub fn set_node(&self, id: &str, base_url: &str) {
        if let Ok(mut n) = self.nodes.write() {
            let addr = base_url.trim_end_matches('/').to_string();
            n.entry(id.to_string())
                .and_modify(|s| {
                    s.addr.clone_from(&addr);
                    s.last_seen = Instant::now();
                })
                .or_insert(NodeStatus {
                    addr,
                    last_seen: Instant::now(),
                    failed_at: None,
                    usage: Usage::default(),
                    corrupt: vec![],
                    load: 0,
                    draining: false,
                });
        }
    }

    /// Adds a node another gateway registered: known, but not counted as
    /// up until a contact (a health answer or a recorded heartbeat) says
    /// so and reports its space.
    pub fn learn(&self, id: &str, base_url: &str) {
        if let Ok(mut n) = self.nodes.write() {
            let now = Instant::now();
            let addr = base_url.trim_end_matches('/').to_string();
            n.entry(id.to_string()).or_insert(NodeStatus {
                addr,
                last_seen: now.checked_sub(self.liveness.suspect_after).unwrap_or(now),
                failed_at: None,
                usage: Usage::default(),
                corrupt: vec![],
                load: 0,
                draining: false,
            });
        }
    }

    pub fn set_draining(&self, id: &str, draining: bool) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.draining = draining;
            }
        }
    }

    pub fn remove_node(&self, id: &str) {
        if let Ok(mut n) = self.nodes.write() {
            n.remove(id);
        }
    }

    /// Records a heartbeat or health answer; returns whether the address
    /// changed (or the node is new).
    pub fn record_contact(
        &self,
        id: &str,
        addr: &str,
        usage: Usage,
        corrupt: Vec<String>,
        load: u64,
    ) -> bool {
        let Ok(mut n) = self.nodes.write() else {
            return false;
        };
        let addr = addr.trim_end_matches('/').to_string();
        let changed = n.get(id).is_none_or(|s| s.addr != addr);
        let s = n.entry(id.to_string()).or_insert(NodeStatus {
            addr: addr.clone(),
            last_seen: Instant::now(),
            failed_at: None,
            usage: Usage::default(),
            corrupt: vec![],
            load: 0,
            draining: false,
        });
        s.addr = addr;
        s.last_seen = Instant::now();
        s.failed_at = None;
        s.usage = usage;
        s.corrupt = corrupt;
        s.load = load;
        changed
    }

    /// Records a heartbeat another gateway received `age` ago, if it is
    /// newer than this gateway's own last contact with the node.
    pub fn record_report(&self, id: &str, age: Duration, report: Report) {
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id).filter(|s| s.last_seen < at) {
                if s.addr != report.addr.trim_end_matches('/') {
                    // Moved: the heartbeat that moved it re-registers it.
                    return;
                }
                s.last_seen = at;
                s.usage = report.usage;
                s.corrupt = report.corrupt;
                s.load = report.load;
            }
        }
    }

    /// Records a health answer: a contact, without touching the address
    /// (a heartbeat may have moved it meanwhile).
    pub fn record_health(&self, id: &str, usage: Usage, corrupt: Vec<String>, load: u64) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.last_seen = Instant::now();
                s.failed_at = None;
                s.usage = usage;
                s.corrupt = corrupt;
                s.load = load;
            }
        }
    }

    /// A request to the node failed: stop placing blobs there until it
    /// answers again.
    pub fn mark_failed(&self, id: &str) {
        if let Ok(mut n) = self.nodes.write() {
            if let Some(s) = n.get_mut(id) {
                s.failed_at.get_or_insert_with(Instant::now);
            }
        }
    }

    pub fn state_of(&self, s: &NodeStatus) -> NodeState {
        let silent = s.last_seen.elapsed();
        if silent >= self.liveness.down_after {
            NodeState::Down
        } else if s.draining {
            NodeState::Draining
        } else if silent >= self.liveness.suspect_after || s.failed_at.is_some() {
            NodeState::Suspect
        } else {
            NodeState::Up
        }
    }

    pub fn snapshot(&self) -> Vec<(String, NodeStatus, NodeState)> {
        let Ok(n) = self.nodes.read() else {
            return vec![];
        };
        n.iter()
            .map(|(id, s)| (id.clone(), s.clone(), self.state_of(s)))
            .collect()
    }

    pub fn state(&self, id: &str) -> Option<NodeState> {
        self.nodes.read().ok()?.get(id).map(|s| self.state_of(s))
    }

    /// The node's last reported load (requests in progress).
    pub fn load(&self, id: &str) -> u64 {
        self.nodes
            .read()
            .ok()
            .and_then(|n| n.get(id).map(|s| s.load))
            .unwrap_or(u64::MAX)
    }

    /// A node's base URL, if the node is known.
    pub fn addr_of(&self, node: &str) -> Option<String> {
        self.nodes.read().ok()?.get(node).map(|s| s.addr.clone())
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.nodes
            .read()
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub async fn health(&self, node: &str) -> Result<insitu_node_api::Health, NodeError> {
        let url = self.url(node, "/v1/health")?;
        let req = self
            .http
            .get(url)
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(3));
        let resp = Self::check(node, req.send().await).await?;
        resp.json().await.map_err(|e| NodeError::Request {
            node: node.to_string(),
            message: e.to_string(),
        })
    }
}

/// What a heartbeat reported, as kept in the catalog for the other
/// gateways.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub addr: String,
    pub usage: insitu_node_api::Usage,
    pub corrupt: Vec<String>,
    pub load: u64,
}

/// Records a heartbeat for the other gateways.
pub async fn record(gw: &Gateway, id: &str, report: &Report) {
    if !gw.catalog.is_shared() {
        return;
    }
    let Ok(text) = serde_json::to_string(report) else {
        return;
    };
    if let Err(e) = gw.catalog.node_seen(id, &text).await {
        tracing::debug!(node = %id, error = %e, "cannot record a heartbeat");
    }
}

/// Brings this gateway's node set in line with the catalog.
pub async fn refresh(gw: &Gateway) {
    if !gw.catalog.is_shared() {
        return;
    }
    let records = match gw.catalog.list_nodes().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the node list");
            return;
        }
    };
    let known: std::collections::HashMap<String, String> = gw
        .nodes
        .snapshot()
        .into_iter()
        .map(|(id, s, _)| (id, s.addr))
        .collect();
    for rec in &records {
        let here = known.contains_key(&rec.id);
        match (rec.removed, here) {
            (true, true) => {
                tracing::info!(node = %rec.id, "node removed by another gateway");
                gw.nodes.remove_node(&rec.id);
            }
            (true, false) => {}
            (false, false) => {
                tracing::info!(node = %rec.id, addr = %rec.addr, "node learned from the catalog");
                gw.nodes.learn(&rec.id, &rec.addr);
                gw.nodes.set_draining(&rec.id, rec.draining);
            }
            (false, true) => {
                if known.get(&rec.id) != Some(&rec.addr.trim_end_matches('/').to_string()) {
                    gw.nodes.set_node(&rec.id, &rec.addr);
                }
                gw.nodes.set_draining(&rec.id, rec.draining);
            }
        }
    }
    let Ok(reports) = gw.catalog.node_reports().await else {
        return;
    };
    for r in reports {
        let Ok(report) = serde_json::from_str::<Report>(&r.report) else {
            continue;
        };
        let age = Duration::from_millis(r.age_ms.max(0) as u64);
        gw.nodes.record_report(&r.id, age, report);
    }
}
