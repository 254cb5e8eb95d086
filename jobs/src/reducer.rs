//! Reducers: placed on the node with the fewest, started at once, and fed
//! their input pieces as earlier phases commit them.

use std::sync::Arc;
use std::time::Duration;

use insitu_job_model::records::{ErrorRecord, PieceRecord, TaskRecord};
use insitu_job_model::JobErrorCode;
use tracing::Instrument;

use crate::active::*;
use crate::attempt::*;
use crate::inputs::*;
use crate::node_client::*;
use crate::placement::*;
use crate::Supervisor;

/// A reducer runs from the moment its phase can get input: the node starts
/// it with a pipe for stdin, and `feed_reducer` appends each input piece as
/// earlier phases commit it, so reducers work while maps still run. The
/// reducer sees end of input once every earlier phase is done and the
/// job's input is complete.
pub(crate) async fn run_reducer(
    sv: Arc<Supervisor>,
    job: Arc<ActiveJob>,
    ctx: TaskCtx,
    mut task: TaskRecord,
) -> Finished {
    let span = tracing::info_span!("task", tenant = %ctx.tenant, job = %ctx.job, task = %task.id, phase = ctx.phase);
    async move {
        let reducer = task.reducer.unwrap_or(0);
        let mut leases = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        let mut retries = 0;
        loop {
            // The live node with the fewest reducers, then the least busy.
            let node = sv
                .nodes
                .node_ids()
                .into_iter()
                .filter(|n| sv.nodes.is_up(n) && !tried.contains(n))
                .min_by_key(|n| (sv.load.reducers_on(n), sv.load.tasks_on(n)));
            let Some(node) = node else {
                // Every node was tried or is down: wait for one.
                tokio::time::sleep(Duration::from_secs(1)).await;
                tried.clear();
                continue;
            };
            let _placed = ReducerPlace::take(&sv, &node);
            task.attempts += 1;
            task.node = Some(node.clone());
            let attempt_id = attempt_id(&task);
            let (result, fed) = {
                let call = attempt(&sv, &ctx, &task, &attempt_id, &node, None, "", &mut leases);
                let feed = feed_reducer(&sv, &job, &ctx, reducer, &node, &attempt_id);
                tokio::pin!(call, feed);
                let mut fed: Option<Fed> = None;
                let result = loop {
                    tokio::select! {
                        r = &mut call => break r,
                        f = &mut feed, if fed.is_none() => match f {
                            Ok(counts) => fed = Some(counts),
                            Err(e) => break Err(AttemptError::Retry(format!("feeding the reducer: {e}"))),
                        },
                    }
                };
                (result, fed)
            };
            let fed = fed.unwrap_or_default();
            match result {
                Ok((outcome, assets)) => {
                    let (local, remote) = (fed.local + assets.local, fed.remote + assets.remote);
                    let mut fin = finished(task, outcome, retries, local, remote, leases);
                    fin.refused = fed.refused;
                    return fin;
                }
                Err(AttemptError::Fail(code, message)) => {
                    return finished(task, failed(code, message), retries, 0, 0, leases)
                }
                Err(AttemptError::Retry(why)) => {
                    tracing::warn!(node = %node, error = %why, "reducer attempt failed; trying another node");
                    if never_started(&sv, &node) {
                        task.attempts -= 1;
                    }
                    tried.push(node);
                    if task.attempts >= MAX_ATTEMPTS {
                        let outcome = failed(
                            JobErrorCode::InternalError,
                            format!("reducer failed after {} attempts: {why}", task.attempts),
                        );
                        return finished(task, outcome, retries, 0, 0, leases);
                    }
                    retries += 1;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// What a reducer was fed: bytes read from its node's disk and from
/// others, and the inputs it was refused.
#[derive(Default)]
pub(crate) struct Fed {
    pub(crate) local: u64,
    pub(crate) remote: u64,
    pub(crate) refused: Vec<ErrorRecord>,
}

/// How long the feeder keeps offering input to a task that has not opened
/// it yet (its image may be being pulled).
pub(crate) const FEED_OPEN_PATIENCE: Duration = Duration::from_secs(900);

/// Appends a reducer's input pieces to its running task, in commit order,
/// as they appear; ends its input when nothing more can come. Pieces the
/// node holds are read from its disk; others are streamed to it. Returns
/// what was fed.
pub(crate) async fn feed_reducer(
    sv: &Arc<Supervisor>,
    job: &ActiveJob,
    ctx: &TaskCtx,
    reducer: u32,
    node: &str,
    attempt_id: &str,
) -> Result<Fed, String> {
    let stream = format!("{}/{}/{attempt_id}", ctx.tenant, ctx.job);
    let mut after: Option<u64> = None;
    let mut fed = Fed::default();
    // Since when the catalog has been unavailable to the feed.
    let mut away: Option<tokio::time::Instant> = None;
    loop {
        // Looked at before the scan: once every earlier task has committed
        // (pieces are committed with their task), an empty scan is final.
        let complete = job.record.lock().await.upstream_done(ctx.phase as usize);
        let page = match sv
            .catalog
            .job_pieces(&ctx.job, ctx.phase, reducer, after, 100)
            .await
        {
            Ok(p) => p,
            // The catalog is away: the reducer waits for it, up to a
            // point, rather than fail an attempt.
            Err(e)
                if e.is_retryable()
                    && tokio::time::Instant::now() < catalog_patience(&mut away) =>
            {
                tracing::debug!(error = %e, "reducer feed waits for the catalog");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        away = None;
        if page.is_empty() {
            if complete {
                with_patience(|| sv.nodes.stream_end(node, &stream))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(fed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for (seq, p) in page {
            after = Some(seq);
            let blob = match &p.pin {
                // A pinned version (a job input, a referenced object): its
                // access was checked when it was pinned.
                Some(pin) => {
                    let found = loop {
                        match pinned_blob(sv.catalog.as_ref(), &p.bucket, &p.key, pin).await {
                            Err(e) if tokio::time::Instant::now() < catalog_patience(&mut away) => {
                                tracing::debug!(error = %e, "reducer feed waits for the catalog");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            other => break other,
                        }
                    };
                    away = None;
                    match found {
                        Ok(Some(b)) => b,
                        // Gone (a job older than its pins): nothing to read.
                        Ok(None) => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                None => match checked_piece(sv, ctx, &p, &mut away, &mut fed).await? {
                    Some(o) => o.blob,
                    None => continue,
                },
            };
            if blob.size == 0 {
                continue;
            }
            // Held while it streams: neither GC nor the orphan sweep takes
            // it from under the feed.
            let _lease = sv.holds.hold(&blob.id);
            let sent = if blob.replicas.iter().any(|n| n == node) {
                fed.local += blob.size;
                with_patience(|| sv.nodes.stream_append_blob(node, &stream, &blob.id)).await
            } else {
                fed.remote += blob.size;
                with_patience(|| sv.nodes.stream_append_copy(node, &stream, &blob)).await
            };
            match sent {
                Ok(()) => {}
                // The task stopped reading (it may need no more input):
                // its own answer tells how it ended.
                Err(e) if e.status() == Some(409) => return Ok(fed),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// The current version of an unpinned piece (an earlier phase's output),
/// if the tenant may still read it: access is checked again on the
/// version read. `None` to skip it (deleted since, or refused, with the
/// refusal recorded).
async fn checked_piece(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    p: &PieceRecord,
    away: &mut Option<tokio::time::Instant>,
    fed: &mut Fed,
) -> Result<Option<insitu_catalog::ObjectRecord>, String> {
    let checked = loop {
        match check_input(sv.catalog.as_ref(), &ctx.tenant, &p.bucket, &p.key).await {
            // Only the catalog fails this way: wait for it.
            Err((JobErrorCode::InternalError, e))
                if tokio::time::Instant::now() < catalog_patience(away) =>
            {
                tracing::debug!(error = %e, "reducer feed waits for the catalog");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    *away = None;
    match checked {
        Ok(o) => Ok(Some(o)),
        Err((JobErrorCode::InternalError, e)) => Err(e),
        Err((JobErrorCode::AccessDeniedError, message)) => {
            fed.refused.push(ErrorRecord {
                phase: ctx.phase,
                task: String::new(),
                input: format!("{}/{}", p.bucket, p.key),
                code: JobErrorCode::AccessDeniedError,
                message,
                stderr: None,
                node: None,
                input_etag: None,
            });
            Ok(None)
        }
        // Deleted since: nothing to read.
        Err(_) => Ok(None),
    }
}

/// How long the feed waits for an unavailable catalog before the attempt
/// fails: as long as the catalog is away, counted from the first failure.
const CATALOG_PATIENCE: Duration = Duration::from_secs(900);

fn catalog_patience(away: &mut Option<tokio::time::Instant>) -> tokio::time::Instant {
    *away.get_or_insert_with(tokio::time::Instant::now) + CATALOG_PATIENCE
}

/// Retries a call to a task's input while the task has not opened it yet
/// (404), up to `FEED_OPEN_PATIENCE`.
pub(crate) async fn with_patience<F, Fut>(mut call: F) -> NodeResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), NodeCallError>>,
{
    let deadline = tokio::time::Instant::now() + FEED_OPEN_PATIENCE;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(NodeCallError::Status { status: 404, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
