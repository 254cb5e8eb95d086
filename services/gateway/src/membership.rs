//! Node membership shared through the catalog: every gateway learns the
//! nodes another gateway registered, drained or removed, and counts a
//! heartbeat that reached any gateway as contact.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Gateway;

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
