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

use crate::control::Role;
use crate::nodes::{ByteStream, NodeState};
use crate::Gateway;

/// Blob ids in use by the gateway right now: being written (stored on
/// nodes, not yet committed) or being read. The orphan sweep and GC leave
/// them alone, however long a slow replica or a slow reader takes. On a
/// shared catalog, every hold older than [`PUBLISH_AFTER`] is published as
/// an intent (see [`InflightBlobs::flush`]), so that another gateway's GC
/// and sweep leave it alone too.
#[derive(Default)]
pub struct InflightBlobs {
    ids: std::sync::Mutex<HashMap<String, Hold>>,
    /// Published intents whose holds have ended, to withdraw.
    ended: std::sync::Mutex<Vec<String>>,
}

struct Hold {
    count: usize,
    since: Instant,
    published: bool,
}

/// Holds younger than this stay private: GC and the sweep only touch
/// blobs older than their grace period, which is longer (see
/// `Gateway::with_catalog`).
pub const PUBLISH_AFTER: Duration = Duration::from_millis(500);

/// How often held blobs are published (`intent_loop`).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Publishes long holds as intents, on its own timer so that nothing else
/// the gateway does delays it.
pub async fn intent_loop(gw: Arc<Gateway>) {
    if !gw.catalog.is_shared() {
        return;
    }
    let ttl = gw.control.intent_ms();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gw.inflight
            .flush(gw.catalog.as_ref(), &gw.control.id, ttl)
            .await;
    }
}

impl InflightBlobs {
    pub fn hold(self: &Arc<Self>, id: &str) -> InflightGuard {
        if let Ok(mut ids) = self.ids.lock() {
            ids.entry(id.to_string())
                .or_insert_with(|| Hold {
                    count: 0,
                    since: Instant::now(),
                    published: false,
                })
                .count += 1;
        }
        InflightGuard {
            set: self.clone(),
            id: id.to_string(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids
            .lock()
            .map(|ids| ids.contains_key(id))
            .unwrap_or(true)
    }

    /// Publishes long holds as intents in the catalog (renewing those
    /// already published) and withdraws the intents of ended holds.
    pub async fn flush(&self, catalog: &dyn insitu_catalog::Catalog, holder: &str, ttl_ms: i64) {
        // Withdrawn first, and only those not held again since: the
        // upsert below then stands for every hold that is published.
        let ended: Vec<String> = {
            let held = self.ids.lock().map(|ids| {
                ids.keys()
                    .cloned()
                    .collect::<std::collections::HashSet<_>>()
            });
            let ended = self
                .ended
                .lock()
                .map(|mut e| std::mem::take(&mut *e))
                .unwrap_or_default();
            match held {
                Ok(held) => ended.into_iter().filter(|id| !held.contains(id)).collect(),
                Err(_) => Vec::new(),
            }
        };
        // Never at the cost of publishing: a slow withdrawal is left to
        // the intents' expiry.
        let withdraw = catalog.release_intents(holder, &ended);
        match tokio::time::timeout(Duration::from_secs(1), withdraw).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot withdraw blob intents; they expire"),
            Err(_) => tracing::debug!("withdrawing blob intents timed out; they expire"),
        }
        let publish: Vec<String> = match self.ids.lock() {
            Ok(mut ids) => ids
                .iter_mut()
                .filter(|(_, h)| h.published || h.since.elapsed() >= PUBLISH_AFTER)
                .map(|(id, h)| {
                    h.published = true;
                    id.clone()
                })
                .collect(),
            Err(_) => return,
        };
        if let Err(e) = catalog.hold_intents(holder, &publish, ttl_ms).await {
            tracing::warn!(error = %e, "cannot publish blob intents");
        }
    }

    /// Whether the blob is in use here, or (on a shared catalog) by any
    /// gateway; an unreadable catalog counts as in use.
    pub async fn in_use(&self, catalog: &dyn insitu_catalog::Catalog, id: &str) -> bool {
        match staged_by(id) {
            Some(base) => self.held(catalog, base).await || self.held(catalog, id).await,
            None => self.held(catalog, id).await,
        }
    }

    async fn held(&self, catalog: &dyn insitu_catalog::Catalog, id: &str) -> bool {
        self.contains(id) || (catalog.is_shared() && catalog.has_intent(id).await.unwrap_or(true))
    }
}

/// A task's named output is staged on its node as `<stdout blob>-o<n>`
/// (`storage-node/src/task_endpoint`): it is in use while its task's
/// stdout blob is held.
fn staged_by(id: &str) -> Option<&str> {
    let (base, n) = id.rsplit_once("-o")?;
    (!base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// The supervisor's holds on the blobs its jobs use.
pub struct JobHolds(pub Arc<InflightBlobs>);

impl insitu_jobs::BlobHolds for JobHolds {
    fn hold(&self, blob: &str) -> insitu_jobs::BlobHold {
        insitu_jobs::BlobHold::new(self.0.hold(blob))
    }
}

/// Keeps a blob id in use until dropped.
pub struct InflightGuard {
    set: Arc<InflightBlobs>,
    id: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.set.ids.lock() {
            if let Some(h) = ids.get_mut(&self.id) {
                h.count -= 1;
                if h.count == 0 {
                    if h.published {
                        if let Ok(mut e) = self.set.ended.lock() {
                            e.push(self.id.clone());
                        }
                    }
                    ids.remove(&self.id);
                }
            }
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
    /// Memo entries dropped because a blob they name was collected.
    pub memo_entries_forgotten: AtomicU64,
    /// Set to ask for a repair pass now (a node was removed or drained).
    pub wake: std::sync::atomic::AtomicBool,
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
    pub memo_entries_forgotten: u64,
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
            memo_entries_forgotten: g(&self.memo_entries_forgotten),
        }
    }
}

pub fn spawn_background(gw: Arc<Gateway>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(crate::control::control_loop(gw.clone())),
        tokio::spawn(intent_loop(gw.clone())),
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
        let polls = gw.nodes.snapshot().into_iter().map(|(id, _, _)| {
            let gw = gw.clone();
            async move {
                match gw.nodes.health(&id).await {
                    Ok(h) if h.node_id == id => gw.nodes.record_health(&id, h.usage, h.corrupt, h.load),
                    Ok(h) => tracing::warn!(node = %id, answered_as = %h.node_id, "a different node answers at this address"),
                    Err(e) => tracing::debug!(node = %id, error = %e, "health poll failed"),
                }
            }
        });
        futures::future::join_all(polls).await;
    }
}

/// Deletes blobs that no record references any more, once their grace
/// period has passed and nobody reads them. An entry stays queued until
/// every replica is gone; entries waiting on a down node do not hold up the
/// rest of the queue (it is walked with a cursor).
async fn gc_loop(gw: Arc<Gateway>) {
    let every = Duration::from_secs(1).min(gw.config.gc_grace.max(Duration::from_millis(200)));
    let mut tick = tokio::time::interval(every);
    let mut cursor = String::new();
    loop {
        tick.tick().await;
        if !gw.control.leads(Role::Gc) {
            continue;
        }
        // Queue times are the catalog's clock (see `ControlStore::now_ms`);
        // read first, so that a failure skips no page.
        let now = match gw.catalog.now_ms().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the catalog's clock for GC");
                continue;
            }
        };
        let entries = match gw.catalog.list_gc_after(&cursor, 256).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the GC queue");
                continue;
            }
        };
        cursor = if entries.len() < 256 {
            String::new()
        } else {
            entries
                .last()
                .map(|e| e.blob.id.clone())
                .unwrap_or_default()
        };
        let cutoff = now - gw.config.gc_grace.as_millis() as i64;
        let due = entries.into_iter().filter(|e| e.queued_ms <= cutoff);
        let work = due.map(|entry| {
            let gw = gw.clone();
            async move {
                if gw.inflight.in_use(gw.catalog.as_ref(), &entry.blob.id).await {
                    return;
                }
                // A job that has not ended reads this version (a pinned
                // input or referenced object): kept until its end.
                match gw.catalog.pinned_blob(&entry.blob.id).await {
                    Ok(None) => {}
                    Ok(Some(_)) => return,
                    Err(e) => {
                        tracing::debug!(blob = %entry.blob.id, error = %e, "cannot tell whether a queued blob is pinned; kept for now");
                        return;
                    }
                }
                let mut all_gone = true;
                for node in &entry.blob.replicas {
                    match gw.nodes.state(node) {
                        // A removed node will never answer; its files are its
                        // operator's to wipe.
                        None => continue,
                        // A down node is retried when it returns (and swept).
                        Some(NodeState::Down) => {
                            all_gone = false;
                            continue;
                        }
                        _ => {}
                    }
                    if let Err(e) = gw.nodes.delete(node, &entry.blob.id).await {
                        tracing::debug!(node = %node, blob = %entry.blob.id, error = %e, "GC delete failed; will retry");
                        all_gone = false;
                    }
                }
                if all_gone {
                    // Memo entries follow their outputs: one naming this
                    // blob goes with it (else the entry stays queued, and
                    // this is tried again).
                    match gw.catalog.memo_forget_blob(&entry.blob.id).await {
                        Ok(n) => {
                            gw.repair
                                .memo_entries_forgotten
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(blob = %entry.blob.id, error = %e, "cannot drop the memo entries of a collected blob; will retry");
                            return;
                        }
                    }
                    gw.repair.gc_blobs_removed.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = gw.catalog.remove_gc(&entry.blob.id).await {
                        tracing::error!(error = %e, "cannot update the GC queue");
                    }
                }
            }
        });
        futures::stream::iter(work)
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
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

/// Replaces replicas reported corrupt. The bad copy is deleted only when
/// another replica is up to copy from; if the rewrite then fails it is
/// retried on the next pass. Reports already handled are ignored until the
/// node's next report no longer carries them.
async fn repair_corrupt(
    gw: &Gateway,
    handled: &mut HashMap<(String, String), Instant>,
    pending: &mut Vec<(String, BlobRef)>,
) {
    handled.retain(|_, at| at.elapsed() < Duration::from_secs(10));
    let mut todo: Vec<(String, String)> = Vec::new();
    for (node, status, state) in gw.nodes.snapshot() {
        if state == NodeState::Down {
            continue;
        }
        for blob_id in status.corrupt {
            if !handled.contains_key(&(node.clone(), blob_id.clone())) {
                todo.push((node.clone(), blob_id));
            }
        }
    }
    for (node, blob_id) in todo {
        let owned = match gw.catalog.owned_blob(&blob_id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "catalog read failed during repair");
                continue;
            }
        };
        let Some((_, blob)) = owned.filter(|(_, b)| b.replicas.contains(&node)) else {
            // Not a replica the catalog knows here: just an orphan.
            let _ = gw.nodes.delete(&node, &blob_id).await;
            handled.insert((node, blob_id), Instant::now());
            continue;
        };
        let good: Vec<String> = blob
            .replicas
            .iter()
            .filter(|n| **n != node && gw.nodes.state(n) == Some(NodeState::Up))
            .cloned()
            .collect();
        if good.is_empty() {
            tracing::warn!(node = %node, blob = %blob_id, "corrupt replica has no healthy twin yet; kept for now");
            continue;
        }
        handled.insert((node.clone(), blob_id.clone()), Instant::now());
        if let Err(e) = gw.nodes.delete(&node, &blob_id).await {
            tracing::warn!(node = %node, blob = %blob_id, error = %e, "cannot remove corrupt replica");
            continue;
        }
        pending.push((node, blob));
    }
    let mut retry = Vec::new();
    for (node, blob) in pending.drain(..) {
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
                tracing::info!(node = %node, blob = %blob.id, "corrupt replica rewritten from a good copy");
            }
            Err(e) => {
                tracing::warn!(node = %node, blob = %blob.id, error = %e, "corrupt replica not yet rewritten; will retry");
                // Only while the blob is still referenced there.
                if gw
                    .catalog
                    .owned_blob(&blob.id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(_, b)| b.replicas.contains(&node))
                {
                    retry.push((node, blob));
                }
            }
        }
    }
    *pending = retry;
}

/// One pass over every referenced blob: each with replicas on lost nodes
/// gets new copies on live ones until it has R again. Lost replicas are
/// dropped from a record only once R live copies exist without them, so a
/// node that comes back still counts when no replacement could be made.
/// Parts of one multipart upload move together (placement by upload id),
/// so Complete can still assemble them on one node. Returns how many blobs
/// still need work.
async fn repair_pass(gw: &Gateway) -> u64 {
    let r = gw.config.replicas;
    let mut after = String::new();
    let mut pending = 0;
    loop {
        let page = match gw.catalog.scan_blobs(&after, 256).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "catalog scan failed during repair");
                return pending + 1;
            }
        };
        let Some((_, last)) = page.last() else { break };
        after = last.id.clone();
        if !gw.control.leads(Role::Repair) {
            return pending + 1;
        }
        for (owner, blob) in page {
            let (lost, kept): (Vec<String>, Vec<String>) = blob
                .replicas
                .iter()
                .cloned()
                .partition(|n| replica_lost(gw.nodes.state(n)));
            if lost.is_empty() && kept.len() >= r {
                continue;
            }
            if kept.is_empty() {
                tracing::error!(blob = %blob.id, "no live replica; waiting for a node to return");
                pending += 1;
                continue;
            }
            let placement_key = match &owner {
                insitu_catalog::BlobOwner::Part { upload_id, .. } => upload_id.clone(),
                insitu_catalog::BlobOwner::Object { .. } => blob.id.clone(),
            };
            let mut live = kept.clone();
            let mut guards = Vec::new();
            while live.len() < r {
                let exclude: Vec<String> =
                    blob.replicas.iter().chain(live.iter()).cloned().collect();
                let target = match gw
                    .nodes
                    .place_excluding(&placement_key, 1, blob.size, &exclude)
                {
                    Ok(t) => t[0].clone(),
                    Err(e) => {
                        tracing::debug!(blob = %blob.id, error = %e, "no node to repair onto yet");
                        break;
                    }
                };
                match copy_replica(gw, &blob, &kept, &target).await {
                    Ok(guard) => {
                        guards.push(guard);
                        live.push(target);
                    }
                    Err(e) => {
                        tracing::warn!(blob = %blob.id, target = %target, error = %e, "repair copy failed");
                        break;
                    }
                }
            }
            let complete = live.len() >= r;
            if !complete {
                pending += 1;
            }
            let added: Vec<String> = live.iter().filter(|n| !kept.contains(n)).cloned().collect();
            if added.is_empty() && !complete {
                continue;
            }
            // Keep lost replicas listed until R live copies exist.
            let mut replicas = live.clone();
            if !complete {
                replicas.extend(lost.iter().cloned());
            }
            match gw.catalog.set_replicas(&blob.id, &replicas).await {
                Ok(true) if complete => {
                    // Copies on reachable (draining) nodes can go now; a down
                    // node's copies are swept when it returns.
                    for n in lost
                        .iter()
                        .filter(|n| gw.nodes.state(n) == Some(NodeState::Draining))
                    {
                        let _ = gw.nodes.delete(n, &blob.id).await;
                    }
                }
                Ok(true) => {}
                Ok(false) => {
                    // Overwritten or deleted meanwhile: the new copies are orphans.
                    gw.nodes.delete_everywhere(&blob.id, &added).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot record repaired replicas"),
            }
            drop(guards);
        }
    }
    pending
}

/// Runs a repair pass when node states change, when the last pass left
/// work, when asked to (a node was removed), and otherwise once a minute.
async fn repair_loop(gw: Arc<Gateway>) {
    let mut last_signature = String::new();
    let mut last_pass = Instant::now();
    let mut left = 0u64;
    let mut handled = HashMap::new();
    let mut rewrites = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !gw.control.leads(Role::Repair) {
            // A new leader starts with a full pass.
            last_signature.clear();
            continue;
        }
        repair_corrupt(&gw, &mut handled, &mut rewrites).await;
        let signature: String = gw
            .nodes
            .snapshot()
            .iter()
            .map(|(id, _, st)| format!("{id}={st:?};"))
            .collect();
        let asked = gw.repair.wake.swap(false, Ordering::Relaxed);
        let due = asked
            || signature != last_signature
            || left > 0
            || last_pass.elapsed() >= Duration::from_secs(60);
        if !due {
            continue;
        }
        last_signature = signature;
        last_pass = Instant::now();
        left = repair_pass(&gw).await;
        gw.repair.passes.fetch_add(1, Ordering::Relaxed);
        gw.repair.under_replicated.store(left, Ordering::Relaxed);
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
        for entry in page.into_iter().filter(|e| e.modified_ms < cutoff) {
            if !gw.control.leads(Role::Orphans)
                || gw.inflight.in_use(gw.catalog.as_ref(), &entry.id).await
            {
                continue;
            }
            let keep = match gw.catalog.owned_blob(&entry.id).await {
                Ok(Some((_, blob))) => blob.replicas.iter().any(|n| n == node),
                Ok(None) => gw.catalog.is_gc_queued(&entry.id).await.unwrap_or(true),
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
        if !gw.control.leads(Role::Orphans) {
            continue;
        }
        let full = last_full.elapsed() >= gw.config.orphan_sweep_interval;
        for (id, _, state) in gw.nodes.snapshot() {
            let previous = last_state.insert(id.clone(), state);
            // A node coming back from down is swept at once.
            let returned = previous == Some(NodeState::Down) && state == NodeState::Up;
            if state == NodeState::Up && (full || returned) {
                sweep_node(&gw, &id).await;
            }
        }
        if full {
            last_full = Instant::now();
        }
    }
}
