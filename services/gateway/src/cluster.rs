//! Background work that keeps the cluster whole: health polling, garbage
//! collection, re-replication (repair) and the orphan sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use insitu_catalog::BlobRef;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::nodes::{ByteStream, NodeState};
use crate::Gateway;

/// Blob ids being written right now (stored on nodes, not yet committed to
/// the catalog). The orphan sweep must not take them for orphans, however
/// long a slow replica keeps the commit waiting.
#[derive(Default)]
pub struct InflightBlobs {
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl InflightBlobs {
    pub fn hold(self: &Arc<Self>, id: &str) -> InflightGuard {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_string());
        }
        InflightGuard {
            set: self.clone(),
            id: id.to_string(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.lock().map(|ids| ids.contains(id)).unwrap_or(true)
    }
}

/// Keeps a blob id in flight until dropped (after its commit or cleanup).
pub struct InflightGuard {
    set: Arc<InflightBlobs>,
    id: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.set.ids.lock() {
            ids.remove(&self.id);
        }
    }
}

/// Repair progress, shown by `insitu admin nodes` and in metrics.
#[derive(Default)]
pub struct RepairStats {
    pub passes: AtomicU64,
    pub blobs_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub corrupt_replicas_repaired: AtomicU64,
    /// Blobs found below the replication factor by the last pass.
    pub under_replicated: AtomicU64,
    pub orphans_removed: AtomicU64,
    pub gc_blobs_removed: AtomicU64,
}

#[derive(Serialize)]
pub struct RepairSnapshot {
    pub passes: u64,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub corrupt_replicas_repaired: u64,
    pub under_replicated: u64,
    pub orphans_removed: u64,
    pub gc_blobs_removed: u64,
}

impl RepairStats {
    pub fn snapshot(&self) -> RepairSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RepairSnapshot {
            passes: g(&self.passes),
            blobs_copied: g(&self.blobs_copied),
            bytes_copied: g(&self.bytes_copied),
            corrupt_replicas_repaired: g(&self.corrupt_replicas_repaired),
            under_replicated: g(&self.under_replicated),
            orphans_removed: g(&self.orphans_removed),
            gc_blobs_removed: g(&self.gc_blobs_removed),
        }
    }
}

pub fn spawn_background(gw: Arc<Gateway>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(health_loop(gw.clone())),
        tokio::spawn(gc_loop(gw.clone())),
        tokio::spawn(repair_loop(gw.clone())),
        tokio::spawn(orphan_loop(gw)),
    ]
}

/// Polls every node's health; an answer counts as contact. Nodes that run
/// with `--gateway` also push heartbeats, which is how new nodes join.
async fn health_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gw.config.health_interval);
    loop {
        tick.tick().await;
        let polls = gw.nodes.snapshot().into_iter().map(|(id, status, _)| {
            let gw = gw.clone();
            async move {
                match gw.nodes.health(&id).await {
                    Ok(h) => {
                        gw.nodes
                            .record_contact(&id, &status.addr, h.usage, h.corrupt);
                    }
                    Err(e) => tracing::debug!(node = %id, error = %e, "health poll failed"),
                }
            }
        });
        futures::future::join_all(polls).await;
    }
}

/// Deletes blobs that no record references any more, once their grace
/// period has passed. An entry stays queued until every replica is gone.
async fn gc_loop(gw: Arc<Gateway>) {
    let every = Duration::from_secs(1).min(gw.config.gc_grace.max(Duration::from_millis(200)));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let entries = match gw.catalog.list_gc(256) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the GC queue");
                continue;
            }
        };
        let cutoff = insitu_catalog::now_ms() - gw.config.gc_grace.as_millis() as i64;
        for entry in entries.into_iter().filter(|e| e.queued_ms <= cutoff) {
            let mut all_gone = true;
            for node in &entry.blob.replicas {
                // A node removed from the cluster will never answer; its
                // files are its operator's to wipe.
                if gw.nodes.state(node).is_none() {
                    continue;
                }
                if let Err(e) = gw.nodes.delete(node, &entry.blob.id).await {
                    tracing::debug!(node = %node, blob = %entry.blob.id, error = %e, "GC delete failed; will retry");
                    all_gone = false;
                }
            }
            if all_gone {
                gw.repair.gc_blobs_removed.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = gw.catalog.remove_gc(&entry.blob.id) {
                    tracing::error!(error = %e, "cannot update the GC queue");
                }
            }
        }
    }
}

/// A node whose replicas no longer count: down past the grace period,
/// draining, or removed from the cluster.
fn replica_lost(state: Option<NodeState>) -> bool {
    matches!(
        state,
        None | Some(NodeState::Down) | Some(NodeState::Draining)
    )
}

/// Slows a copy stream to at most `bytes_per_sec`.
fn throttled(stream: ByteStream, bytes_per_sec: u64) -> ByteStream {
    let start = Instant::now();
    let mut sent = 0u64;
    stream
        .then(move |item| {
            if let Ok(b) = &item {
                sent += b.len() as u64;
            }
            let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec.max(1) as f64);
            let wait = due.saturating_sub(start.elapsed());
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                item
            }
        })
        .boxed()
}

/// Copies a blob from its healthy replicas to `target`, throttled.
async fn copy_replica(
    gw: &Gateway,
    blob: &BlobRef,
    sources: &[String],
    target: &str,
) -> Result<(), String> {
    let source = BlobRef {
        id: blob.id.clone(),
        size: blob.size,
        replicas: sources.to_vec(),
    };
    let stream = gw
        .nodes
        .get(&source, None)
        .await
        .map_err(|e| e.to_string())?;
    let stream = throttled(stream, gw.config.repair_bytes_per_sec);
    // A stale copy from an earlier life of the target would block the write.
    let _ = gw.nodes.delete(target, &blob.id).await;
    gw.nodes
        .put_replicated(&[target.to_string()], &blob.id, stream, Some(blob.size))
        .await
        .map_err(|e| e.to_string())?;
    gw.repair.blobs_copied.fetch_add(1, Ordering::Relaxed);
    gw.repair
        .bytes_copied
        .fetch_add(blob.size, Ordering::Relaxed);
    Ok(())
}

/// Replaces replicas reported corrupt: the bad copy is deleted and a good
/// one written in its place.
async fn repair_corrupt(gw: &Gateway) {
    for (node, status, state) in gw.nodes.snapshot() {
        if state == NodeState::Down {
            continue;
        }
        for blob_id in status.corrupt {
            let owned = match gw.catalog.owned_blob(&blob_id) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "catalog read failed during repair");
                    continue;
                }
            };
            // Deleting the bad copy also clears the node's report.
            if let Err(e) = gw.nodes.delete(&node, &blob_id).await {
                tracing::warn!(node = %node, blob = %blob_id, error = %e, "cannot remove corrupt replica");
                continue;
            }
            let Some((_, blob)) = owned else { continue };
            if !blob.replicas.contains(&node) {
                continue;
            }
            let good: Vec<String> = blob
                .replicas
                .iter()
                .filter(|n| **n != node)
                .cloned()
                .collect();
            match copy_replica(gw, &blob, &good, &node).await {
                Ok(_) => {
                    gw.repair
                        .corrupt_replicas_repaired
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %node, blob = %blob_id, "corrupt replica rewritten from a good copy");
                }
                Err(e) => {
                    tracing::warn!(node = %node, blob = %blob_id, error = %e, "corrupt replica not yet repaired")
                }
            }
        }
    }
}

/// One pass over every referenced blob: each with replicas on lost nodes
/// gets new copies on live ones until it has R again. Returns how many
/// blobs still need work.
async fn repair_pass(gw: &Gateway) -> u64 {
    let r = gw.config.replicas;
    let mut after = String::new();
    let mut pending = 0;
    loop {
        let page = match gw.catalog.scan_blobs(&after, 256) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "catalog scan failed during repair");
                return pending + 1;
            }
        };
        let Some((_, last)) = page.last() else { break };
        after = last.id.clone();
        for (_, blob) in page {
            let (lost, kept): (Vec<String>, Vec<String>) = blob
                .replicas
                .iter()
                .cloned()
                .partition(|n| replica_lost(gw.nodes.state(n)));
            if lost.is_empty() && kept.len() >= r {
                continue;
            }
            if kept.is_empty() {
                tracing::error!(blob = %blob.id, "every replica is lost; cannot repair");
                pending += 1;
                continue;
            }
            let mut replicas = kept.clone();
            let mut guards = Vec::new();
            let mut ok = true;
            while replicas.len() < r {
                let exclude: Vec<String> = blob
                    .replicas
                    .iter()
                    .chain(replicas.iter())
                    .cloned()
                    .collect();
                let target = match gw.nodes.place_excluding(&blob.id, 1, blob.size, &exclude) {
                    Ok(t) => t[0].clone(),
                    Err(e) => {
                        tracing::warn!(blob = %blob.id, error = %e, "no node to repair onto");
                        ok = false;
                        break;
                    }
                };
                match copy_replica(gw, &blob, &kept, &target).await {
                    Ok(guard) => {
                        guards.push(guard);
                        replicas.push(target);
                    }
                    Err(e) => {
                        tracing::warn!(blob = %blob.id, target = %target, error = %e, "repair copy failed");
                        ok = false;
                        break;
                    }
                }
            }
            match gw.catalog.set_replicas(&blob.id, &replicas) {
                Ok(true) => {
                    // Copies on reachable (draining) nodes can go now; a down
                    // node's copies are swept when it returns.
                    for n in lost
                        .iter()
                        .filter(|n| gw.nodes.state(n) == Some(NodeState::Draining))
                    {
                        let _ = gw.nodes.delete(n, &blob.id).await;
                    }
                }
                Ok(false) => {
                    // Overwritten or deleted meanwhile: the new copies are orphans.
                    let added: Vec<String> = replicas
                        .iter()
                        .filter(|n| !kept.contains(n))
                        .cloned()
                        .collect();
                    gw.nodes.delete_everywhere(&blob.id, &added).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot record repaired replicas"),
            }
            drop(guards);
            if !ok {
                pending += 1;
            }
        }
    }
    pending
}

async fn repair_loop(gw: Arc<Gateway>) {
    let mut idle_passes = 0u32;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        repair_corrupt(&gw).await;
        let any_lost = gw
            .nodes
            .snapshot()
            .iter()
            .any(|(_, _, st)| replica_lost(Some(*st)));
        // With nothing lost, a full scan is only needed now and then (a node
        // may have been removed while we were idle).
        if !any_lost && idle_passes < 60 {
            idle_passes += 1;
            continue;
        }
        idle_passes = 0;
        let pending = repair_pass(&gw).await;
        gw.repair.passes.fetch_add(1, Ordering::Relaxed);
        gw.repair.under_replicated.store(pending, Ordering::Relaxed);
    }
}

/// Removes blob files that no record places on their node: leftovers of
/// writes that crashed before their commit, and stale copies on a node
/// that returns after repair moved its blobs elsewhere.
async fn sweep_node(gw: &Gateway, node: &str) {
    let cutoff = insitu_catalog::now_ms() - gw.config.gc_grace.as_millis() as i64;
    let mut after = String::new();
    loop {
        let page = match gw.nodes.list_blobs(node, &after, 1000).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(node = %node, error = %e, "orphan sweep listing failed");
                return;
            }
        };
        let Some(last) = page.last() else { return };
        after = last.id.clone();
        for entry in page
            .into_iter()
            .filter(|e| e.modified_ms < cutoff && !gw.inflight.contains(&e.id))
        {
            let keep = match gw.catalog.owned_blob(&entry.id) {
                Ok(Some((_, blob))) => blob.replicas.iter().any(|n| n == node),
                Ok(None) => gw.catalog.is_gc_queued(&entry.id).unwrap_or(true),
                Err(_) => true,
            };
            if !keep && gw.nodes.delete(node, &entry.id).await.is_ok() {
                gw.repair.orphans_removed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %node, blob = %entry.id, "orphan blob removed");
            }
        }
    }
}

async fn orphan_loop(gw: Arc<Gateway>) {
    let mut last_state: HashMap<String, NodeState> = HashMap::new();
    let mut last_full = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let full = last_full.elapsed() >= gw.config.orphan_sweep_interval;
        for (id, _, state) in gw.nodes.snapshot() {
            let previous = last_state.insert(id.clone(), state);
            // A node coming back from down is swept at once.
            let returned = previous
                .is_some_and(|p| p == NodeState::Down || p == NodeState::Suspect)
                && state == NodeState::Up;
            if state == NodeState::Up && (full || returned) {
                sweep_node(&gw, &id).await;
            }
        }
        if full {
            last_full = Instant::now();
        }
    }
}
