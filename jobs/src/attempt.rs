//! One attempt of a task on one node: its image made available, the task
//! run, and what it produced replicated; a map task's attempts across the
//! holders of its input.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use insitu_catalog::{BlobRef, ObjectHeaders, ObjectRecord};
use insitu_job_model::plan;
use insitu_job_model::records::{ErrorRecord, TaskRecord};
use insitu_job_model::{ImageRef, JobErrorCode, PhaseSpec};
use insitu_node_api::{AssetOnNode, TaskEndReport, TaskRequest, TaskResponse};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::active::*;
use crate::host::*;
use crate::inputs::*;
use crate::memo::*;
use crate::node_client::*;
use crate::placement::*;
use crate::Supervisor;

/// Attempts per task: the first and at most two retries.
/// Image and asset objects copied to nodes (a node that does not hold
/// such an object's blob gets a copy, once).
#[derive(Default)]
pub(crate) struct ImageCopies {
    /// (node, copy id) pairs already there.
    pub(crate) on_nodes: std::sync::Mutex<HashSet<(String, String)>>,
    /// One copy at a time, so two tasks never copy the same image.
    pub(crate) copying: Mutex<()>,
}

pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// Named outputs of one task replicated at once.
const REPLICATE_AT_ONCE: usize = 4;

/// Time allowed beyond a task's own timeout (image pull or load, copies).
pub(crate) const DEADLINE_SLACK: Duration = Duration::from_secs(900);

/// A blob a task produced, and the nodes holding it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blob {
    pub(crate) id: String,
    pub(crate) size: u64,
    pub(crate) md5: String,
    pub(crate) replicas: Vec<String>,
}

/// The catalog's form of the headers a task gave an output.
fn object_headers(h: insitu_node_api::OutputHeaders) -> ObjectHeaders {
    ObjectHeaders {
        content_type: h.content_type,
        cache_control: h.cache_control,
        content_disposition: h.content_disposition,
        content_encoding: h.content_encoding,
        content_language: h.content_language,
        expires: h.expires,
        user_metadata: h.user_metadata,
    }
}

/// A named output: bytes the task wrote (replicated), or an existing
/// object it referenced (`mcat`), held from collection until the commit
/// pins it.
#[derive(Debug)]
pub(crate) enum Named {
    Written(Blob, ObjectHeaders),
    Reference(insitu_node_api::ObjectReference),
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Success {
        stdout: Option<Blob>,
        pieces: Vec<(u32, Blob)>,
        /// Named outputs written through the task's endpoint: name, the
        /// reducer it asked for, and what it is.
        named: Vec<(String, Option<u32>, Named)>,
        /// Reused from the memo, or to be remembered in it.
        memo: crate::memo::Memo,
    },
    Failed {
        code: JobErrorCode,
        message: String,
        stderr: Option<Blob>,
    },
    /// Not run: no holder of the input is reachable now.
    Requeue,
}

pub(crate) fn failed(code: JobErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        code,
        message: message.into(),
        stderr: None,
    }
}

pub(crate) struct Finished {
    pub(crate) task: TaskRecord,
    pub(crate) outcome: Outcome,
    pub(crate) retries: u64,
    pub(crate) bytes_local: u64,
    pub(crate) bytes_remote: u64,
    /// Inputs a reducer was refused when it came to read them.
    pub(crate) refused: Vec<ErrorRecord>,
    /// Keep the task's blobs from the orphan sweep until committed.
    pub(crate) _leases: Vec<BlobHold>,
    /// A commit of it was tried and its outcome is unknown: it may have
    /// landed.
    pub(crate) retried: bool,
}

/// What one attempt of a task needs to know about its job.
#[derive(Clone)]
pub(crate) struct TaskCtx {
    pub(crate) active: Arc<ActiveJob>,
    pub(crate) job: String,
    pub(crate) tenant: String,
    pub(crate) phase: u32,
    pub(crate) spec: PhaseSpec,
    pub(crate) split: Option<u32>,
    /// `bucket/prefix` of the job's outputs: a task writes its named
    /// outputs there through its endpoint.
    pub(crate) output_place: String,
    /// Reducers of the next phase, when it is a reduce.
    pub(crate) next_reducers: Option<u32>,
    /// The job memoizes this phase's tasks (the last phase).
    pub(crate) memoize: bool,
}

pub(crate) enum AttemptError {
    /// An internal failure: worth another attempt elsewhere.
    Retry(String),
    Fail(JobErrorCode, String),
}

pub(crate) async fn run_map(
    sv: Arc<Supervisor>,
    ctx: TaskCtx,
    mut task: TaskRecord,
    run: MapRun,
) -> Finished {
    let span = tracing::info_span!("task", tenant = %ctx.tenant, job = %ctx.job, task = %task.id, phase = ctx.phase);
    async move {
        let mut leases = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        let MapRun {
            slot: first_slot,
            holders,
            input,
            input_lease,
        } = run;
        leases.push(input_lease);
        let mut node = Some(first_slot.node.clone());
        let mut placed = Some(first_slot);
        let mut retries = 0;
        let input_key = task.input.clone().unwrap_or_default();
        loop {
            let Some(n) = node.clone() else {
                // No reachable holder now: back to the queue until one is
                // (a returning node, or repair's new replica).
                return finished(task, Outcome::Requeue, retries, 0, 0, leases);
            };
            let _slot = match placed.take() {
                Some(s) => s,
                None => Slot::take(&sv, &n, &ctx.tenant),
            };
            task.attempts += 1;
            task.node = Some(n.clone());
            let id = attempt_id(&task);
            // On a node without the input (placed there by delay
            // scheduling): a copy of it made for this attempt, and
            // removed after it (or by the orphan sweep).
            let away = input.size > 0 && !input.replicas.contains(&n);
            let copy = away.then(|| format!("in-{}", new_blob_id()));
            // A copy that fails counts as an attempt: a task whose input
            // cannot be copied does not go away and back for ever.
            let result = match input_on(&sv, &input, &n, copy.as_deref(), &mut leases).await {
                Ok(input_blob) => {
                    attempt(&sv, &ctx, &task, &id, &n, input_blob, &input_key, &mut leases).await
                }
                Err(e) => Err(e),
            };
            if let Some(copy) = &copy {
                if let Err(e) = sv.nodes.delete(&n, copy).await {
                    tracing::debug!(node = %n, blob = %copy, error = %e, "input copy left to the orphan sweep");
                }
            }
            match result {
                Ok((outcome, assets)) => {
                    // A reused task read nothing.
                    let reused = matches!(
                        outcome,
                        Outcome::Success {
                            memo: Memo::Reused,
                            ..
                        }
                    );
                    let (input_local, input_remote) = match (reused, away) {
                        (true, _) => (0, 0),
                        (false, false) => (input.size, 0),
                        (false, true) => (0, input.size),
                    };
                    return finished(
                        task,
                        outcome,
                        retries,
                        input_local + assets.local,
                        input_remote + assets.remote,
                        leases,
                    );
                }
                Err(AttemptError::Fail(code, message)) => {
                    return finished(task, failed(code, message), retries, 0, 0, leases)
                }
                Err(AttemptError::Retry(why)) => {
                    tracing::warn!(node = %n, error = %why, "task attempt failed; trying another holder");
                    if never_started(&sv, &n) {
                        task.attempts -= 1;
                    }
                    if away && task.attempts < MAX_ATTEMPTS {
                        // Its holders were full when it went away: back to
                        // the queue, to be placed afresh.
                        return finished(task, Outcome::Requeue, retries, 0, 0, leases);
                    }
                    tried.push(n);
                    node = plan::choose_node(&holders, &tried, |x| sv.load.tasks_on(x), u32::MAX)
                        .filter(|x| sv.nodes.is_up(x));
                    if task.attempts >= MAX_ATTEMPTS {
                        let outcome = failed(
                            JobErrorCode::InternalError,
                            format!("task failed after {} attempts: {why}", task.attempts),
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

pub(crate) fn finished(
    task: TaskRecord,
    outcome: Outcome,
    retries: u64,
    bytes_local: u64,
    bytes_remote: u64,
    leases: Vec<BlobHold>,
) -> Finished {
    Finished {
        task,
        outcome,
        retries,
        bytes_local,
        bytes_remote,
        refused: Vec::new(),
        _leases: leases,
        retried: false,
    }
}

/// The blob a map task reads on `node`, if it has an input: its own, or,
/// when given a `copy` id, a copy of it made there, kept from the orphan
/// sweep while the task's leases are held.
async fn input_on(
    sv: &Arc<Supervisor>,
    input: &BlobRef,
    node: &str,
    copy: Option<&str>,
    leases: &mut Vec<BlobHold>,
) -> Result<Option<String>, AttemptError> {
    if input.size == 0 {
        return Ok(None);
    }
    let Some(copy) = copy else {
        return Ok(Some(input.id.clone()));
    };
    leases.push(sv.holds.hold(copy));
    sv.nodes
        .copy_to(input, node, copy)
        .await
        .map_err(|e| AttemptError::Retry(format!("copying the input to {node}: {e}")))?;
    Ok(Some(copy.to_string()))
}

/// The image a task runs in: a name, or an image tarball object made
/// available on the node (returned as the blob to load).
pub(crate) async fn image_for(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    node: &str,
) -> Result<(String, Option<String>), AttemptError> {
    let object = match &ctx.spec.image {
        ImageRef::Name(n) => return Ok((n.clone(), None)),
        ImageRef::Object { object } => object.clone(),
    };
    let obj = readable(sv, ctx, &object, "image")
        .await
        .map_err(|e| match e {
            AttemptError::Fail(JobErrorCode::ResourceNotFoundError, _) => AttemptError::Fail(
                JobErrorCode::ImageNotFoundError,
                format!("image object {object} does not exist"),
            ),
            e => e,
        })?;
    let (blob, _) = on_node(sv, ctx, &obj.blob, node, "img").await?;
    Ok((format!("image object {object}"), Some(blob)))
}

/// The phase's assets on `node`, each checked against the tenant's read
/// access on the version read; and the bytes that were already there and
/// that had to be copied.
pub(crate) async fn assets_for(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    node: &str,
) -> Result<(Vec<AssetOnNode>, Vec<(String, String, String)>, u64, u64), AttemptError> {
    let (mut assets, mut etags, mut local, mut remote) = (Vec::new(), Vec::new(), 0, 0);
    for asset in &ctx.spec.assets {
        let path = asset.strip_prefix("s3://").unwrap_or(asset).to_string();
        let obj = readable(sv, ctx, &path, "asset").await?;
        let (blob, copied) = on_node(sv, ctx, &obj.blob, node, "asset").await?;
        match copied {
            true => remote += obj.blob.size,
            false => local += obj.blob.size,
        }
        etags.push((path.clone(), obj.etag.clone(), obj.blob.id.clone()));
        assets.push(AssetOnNode { path, blob });
    }
    Ok((assets, etags, local, remote))
}

/// An object a task needs (its image, an asset), if the tenant may read it.
async fn readable(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    object: &str,
    what: &str,
) -> Result<ObjectRecord, AttemptError> {
    let (bucket, key) = split(object.strip_prefix("s3://").unwrap_or(object));
    check_input(sv.catalog.as_ref(), &ctx.tenant, &bucket, &key)
        .await
        .map_err(|(code, message)| match code {
            JobErrorCode::InternalError => AttemptError::Retry(message),
            code => AttemptError::Fail(code, format!("{what} {object}: {message}")),
        })
}

/// A blob on `node`: the object's own replica when the node holds one,
/// or a copy made once (`<prefix>-<blob>`, kept from the orphan sweep
/// while the job runs). The flag tells whether a copy was made.
async fn on_node(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    blob: &BlobRef,
    node: &str,
    prefix: &str,
) -> Result<(String, bool), AttemptError> {
    if blob.replicas.iter().any(|n| n == node) {
        return Ok((blob.id.clone(), false));
    }
    let copy_id = format!("{prefix}-{}", blob.id);
    let pair = (node.to_string(), copy_id.clone());
    let _one_at_a_time = sv.images.copying.lock().await;
    let present = sv
        .images
        .on_nodes
        .lock()
        .map(|s| s.contains(&pair))
        .unwrap_or(false);
    if !present {
        let lease = sv.holds.hold(&copy_id);
        match sv.nodes.copy_to(blob, node, &copy_id).await {
            Ok(_) => {}
            // Already there from an earlier job.
            Err(NodeCallError::Status { status: 409, .. }) => {}
            Err(e) => return Err(AttemptError::Retry(format!("copying {prefix} blob: {e}"))),
        }
        if let Some(job) = sv.active(&ctx.job) {
            if let Ok(mut l) = job.image_leases.lock() {
                l.push(lease);
            }
        }
        if let Ok(mut s) = sv.images.on_nodes.lock() {
            s.insert(pair);
        }
    }
    Ok((copy_id, true))
}

/// One attempt of a task on one node: run it, then replicate what it
/// produced.
/// A task id for one attempt on a node, unique even across gateway
/// restarts (an earlier gateway's attempt may still be running there).
pub(crate) fn attempt_id(task: &TaskRecord) -> String {
    format!(
        "{}-a{}-{:06x}",
        task.id,
        task.attempts,
        rand::random::<u32>() & 0xff_ffff
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn attempt(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    task: &TaskRecord,
    attempt_id: &str,
    node: &str,
    input_blob: Option<String>,
    input_key: &str,
    leases: &mut Vec<BlobHold>,
) -> Result<(Outcome, AssetBytes), AttemptError> {
    let (image, image_blob) = image_for(sv, ctx, node).await?;
    let (assets, asset_etags, asset_local, asset_remote) = assets_for(sv, ctx, node).await?;
    let stdout_blob = new_blob_id();
    let stderr_blob = new_blob_id();
    leases.push(sv.holds.hold(&stdout_blob));
    leases.push(sv.holds.hold(&stderr_blob));
    if let Some(n) = ctx.split {
        for r in 0..n {
            leases.push(sv.holds.hold(&format!("{stdout_blob}-r{r}")));
        }
    }
    let mut env: Vec<(String, String)> = ctx
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (in_bucket, in_key) = input_key.split_once('/').unwrap_or(("", input_key));
    env.push(("INSITU_INPUT_BUCKET".into(), in_bucket.to_string()));
    env.push(("INSITU_INPUT_KEY".into(), in_key.to_string()));
    env.push(("INSITU_JOB_ID".into(), ctx.job.clone()));
    env.push(("INSITU_PHASE".into(), ctx.phase.to_string()));
    env.push(("INSITU_TASK_ID".into(), task.id.clone()));
    if let Some(r) = task.reducer {
        env.push(("INSITU_REDUCER".into(), r.to_string()));
    }
    let req = TaskRequest {
        tenant: ctx.tenant.clone(),
        job: ctx.job.clone(),
        phase: ctx.phase,
        image,
        image_blob,
        runtime: ctx.spec.runtime.clone(),
        memory_mb: ctx.spec.memory_mb(),
        cpus: ctx.spec.cpus(),
        disk_mb: ctx.spec.disk_mb(),
        output_mb: ctx.spec.output_mb(),
        timeout_s: ctx.spec.timeout_s(),
        task_id: attempt_id.to_string(),
        exec: ctx.spec.exec.clone(),
        init: ctx.spec.init.clone(),
        input_blob,
        env,
        stdout_blob: stdout_blob.clone(),
        stderr_blob: stderr_blob.clone(),
        split: ctx.split,
        input_stream: task.reducer.is_some(),
        assets,
        output_place: Some(ctx.output_place.clone()),
        next_reducers: ctx.next_reducers,
        task_name: task.id.clone(),
        input_name: match task.reducer {
            Some(r) => format!("reducer {r}"),
            None => input_key.to_string(),
        },
    };
    // The image first, once per (phase, node): a pull or load is its own
    // state, not part of the task's time.
    let key = (ctx.phase, node.to_string());
    let ready = ctx
        .active
        .prepared
        .lock()
        .ok()
        .and_then(|p| p.get(&key).cloned());
    // Assets count in the job's bytes once per (phase, node).
    let first_here = ctx
        .active
        .assets_counted
        .lock()
        .map(|mut c| c.insert(key.clone()))
        .unwrap_or(false);
    let moved = match first_here {
        true => AssetBytes {
            local: asset_local,
            remote: asset_remote,
        },
        false => AssetBytes::default(),
    };
    let image_id = match ready {
        Some(id) => id,
        None => {
            adjust(&ctx.active.preparing, ctx.phase, 1);
            let prepared = sv.nodes.prepare_image(node, &req, DEADLINE_SLACK).await;
            adjust(&ctx.active.preparing, ctx.phase, -1);
            match prepared {
                Ok(id) => {
                    if let Ok(mut p) = ctx.active.prepared.lock() {
                        p.insert(key, id.clone());
                    }
                    id
                }
                Err(e) => {
                    // A copied image object may have been swept from the node
                    // since: copy it again next time.
                    if let (Some(blob), Ok(mut copies)) =
                        (&req.image_blob, sv.images.on_nodes.lock())
                    {
                        copies.remove(&(node.to_string(), blob.clone()));
                    }
                    return Err(node_failure(e));
                }
            }
        }
    };
    // A memoizing job's task whose fingerprint has reusable outputs does
    // not run; one that runs is remembered once committed.
    let mut memo = Memo::Off;
    // A reducer's pieces as its fingerprint saw them (it starts once its
    // upstream is done, so they are all known).
    let mut pieces_seen = None;
    let input = match (ctx.memoize, &task.pin, task.reducer) {
        (true, Some(pin), None) => Some(MemoInput::Object {
            name: input_key,
            pin,
        }),
        (true, None, Some(reducer)) => {
            match reducer_pieces(sv, &ctx.tenant, &ctx.job, ctx.phase, reducer).await {
                Ok(Some(pieces)) => {
                    pieces_seen = Some(pieces);
                    Some(MemoInput::Pieces {
                        reducer,
                        count: ctx.spec.reducers(),
                        pieces,
                    })
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the reducer's pieces; it runs");
                    None
                }
            }
        }
        _ => None,
    };
    if let (Some(input), Some(image_id)) = (input, &image_id) {
        let fp = fingerprint(&ctx.spec, &input, image_id, &asset_etags, &ctx.output_place);
        match reusable(sv, &ctx.tenant, &ctx.job, &fp, leases).await {
            Ok(Some(refs)) => {
                tracing::info!(fingerprint = %fp, "memoized: the earlier outputs are reused");
                return Ok((reused(refs), moved));
            }
            Ok(None) => memo = Memo::Record(fp),
            // The task runs, and is not remembered.
            Err(e) => tracing::warn!(error = %e, "cannot read the memo; the task runs"),
        }
    }
    // A reducer's clock starts when its input ends, which may be long after
    // the call; the node enforces its timeout, and the node's liveness is
    // watched anyway.
    let deadline = match req.input_stream {
        true => Duration::from_secs(366 * 24 * 3600),
        false => Duration::from_secs(ctx.spec.timeout_s()) + DEADLINE_SLACK,
    };
    let resp: TaskResponse = match sv.nodes.run_task(node, &req, deadline).await {
        Ok(r) => r,
        Err(e) => {
            // An asset copy may have been swept from the node: copy again.
            if let Ok(mut copies) = sv.images.on_nodes.lock() {
                for a in &req.assets {
                    copies.remove(&(node.to_string(), a.blob.clone()));
                }
            }
            return Err(node_failure(e));
        }
    };
    // Outputs that may depend on what the task read besides its input,
    // or that another image than the fingerprint's made (a tag moved on
    // the node meanwhile), are not remembered.
    let mut keep =
        !resp.read_through_endpoint && image_id.as_deref() == Some(resp.image_id.as_str());
    // A reducer is remembered only if what it was fed is what its
    // fingerprint names: no piece was overwritten or removed meanwhile.
    if let (true, Some(seen), Some(reducer)) = (keep, pieces_seen, task.reducer) {
        let now = reducer_pieces(sv, &ctx.tenant, &ctx.job, ctx.phase, reducer).await;
        keep = matches!(now, Ok(Some(d)) if d == seen);
    }
    let mut outcome = finish_attempt(sv, ctx, node, resp, stdout_blob, stderr_blob, leases).await;
    if let (Outcome::Success { memo: m, .. }, true) = (&mut outcome, keep) {
        *m = memo;
    }
    Ok((outcome, moved))
}

/// Bytes of assets a task's node already held, and copied to it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AssetBytes {
    pub(crate) local: u64,
    pub(crate) remote: u64,
}

/// What a task that ran produced, replicated: its stdout (or pieces), or
/// its failure with stderr kept.
async fn finish_attempt(
    sv: &Arc<Supervisor>,
    ctx: &TaskCtx,
    node: &str,
    resp: TaskResponse,
    stdout_blob: String,
    stderr_blob: String,
    leases: &mut Vec<BlobHold>,
) -> Outcome {
    let on_node = |id: String, size: u64, md5: String| Blob {
        id,
        size,
        md5,
        replicas: vec![node.to_string()],
    };
    match resp.end {
        TaskEndReport::Exited { code: 0 } => {
            // Up to 1000 of them: replicated a few at a time, in order.
            use futures::StreamExt;
            for o in &resp.named {
                if let Some(r) = &o.reference {
                    leases.push(sv.holds.hold(&r.blob));
                }
            }
            let named: Vec<(String, Option<u32>, Named)> = futures::stream::iter(resp.named)
                .map(|o| async move {
                    let named = match o.reference {
                        Some(r) => Named::Reference(r),
                        None => {
                            let headers = object_headers(o.headers);
                            let blob = on_node(o.blob, o.size, o.md5);
                            Named::Written(replicate(sv, blob).await, headers)
                        }
                    };
                    (o.name, o.reducer, named)
                })
                .buffered(REPLICATE_AT_ONCE)
                .collect()
                .await;
            if ctx.split.is_some() {
                let mut pieces = Vec::new();
                for p in resp.pieces {
                    let blob = replicate(sv, on_node(p.blob, p.size, p.md5)).await;
                    pieces.push((p.reducer, blob));
                }
                Outcome::Success {
                    stdout: None,
                    pieces,
                    named,
                    memo: crate::memo::Memo::Off,
                }
            } else {
                let blob = on_node(stdout_blob, resp.stdout_size, resp.stdout_md5);
                Outcome::Success {
                    stdout: Some(replicate(sv, blob).await),
                    pieces: Vec::new(),
                    named,
                    memo: crate::memo::Memo::Off,
                }
            }
        }
        end => {
            let _ = sv.nodes.delete(node, &stdout_blob).await;
            let stderr = if resp.stderr_kept {
                Some(replicate(sv, on_node(stderr_blob, resp.stderr_size, String::new())).await)
            } else {
                None
            };
            let last_line = resp
                .stderr_preview
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(512)
                .collect::<String>();
            let (code, message) = match end {
                TaskEndReport::Exited { code } => (
                    JobErrorCode::UserTaskError,
                    format!("exec exited with status {code}: {last_line}"),
                ),
                TaskEndReport::Killed { resource } => (
                    JobErrorCode::TaskKilledError,
                    format!("the task exceeded its {resource} limit and was killed"),
                ),
                TaskEndReport::TimedOut => (
                    JobErrorCode::TaskTimeoutError,
                    format!(
                        "the task ran longer than its {} s timeout",
                        ctx.spec.timeout_s()
                    ),
                ),
            };
            Outcome::Failed {
                code,
                message,
                stderr,
            }
        }
    }
}

/// What a node's refusal means for a task: its own failure (bad image,
/// bad spec, failed `init`), or an internal one worth another attempt.
pub(crate) fn node_failure(e: NodeCallError) -> AttemptError {
    match e {
        NodeCallError::Status {
            status: 400 | 404 | 422,
            body,
            ..
        } => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let message = v["message"].as_str().unwrap_or(&body).to_string();
            match v["code"].as_str() {
                Some("ImageNotFoundError") => {
                    AttemptError::Fail(JobErrorCode::ImageNotFoundError, message)
                }
                Some("UserTaskError") => AttemptError::Fail(JobErrorCode::UserTaskError, message),
                Some("InvalidArgumentError") => {
                    AttemptError::Fail(JobErrorCode::InvalidArgumentError, message)
                }
                // The input replica vanished from that node.
                _ => AttemptError::Retry(message),
            }
        }
        e => AttemptError::Retry(e.to_string()),
    }
}

/// Copies a task's blob from its node to R-1 more. A copy that fails is
/// left to repair, which restores every committed blob to R replicas.
pub(crate) async fn replicate(sv: &Arc<Supervisor>, mut blob: Blob) -> Blob {
    let want = sv.config.replicas.saturating_sub(1);
    if want == 0 {
        return blob;
    }
    let targets = match sv
        .nodes
        .place_more(&blob.id, want, blob.size, &blob.replicas)
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(blob = %blob.id, error = %e, "task output left under-replicated; repair will copy it");
            return blob;
        }
    };
    let source = BlobRef {
        id: blob.id.clone(),
        size: blob.size,
        replicas: blob.replicas.clone(),
    };
    let copies = targets
        .iter()
        .map(|t| sv.nodes.copy_to(&source, t, &blob.id));
    for (t, r) in targets.iter().zip(futures::future::join_all(copies).await) {
        match r {
            Ok(_) => blob.replicas.push(t.clone()),
            Err(e) => {
                tracing::warn!(blob = %blob.id, node = %t, error = %e, "copy of a task output failed; repair will retry")
            }
        }
    }
    blob
}

/// A new blob id for a task's output.
fn new_blob_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
