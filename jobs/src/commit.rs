//! Outcomes committed atomically with the job's state: outputs, successors,
//! counters and errors; and the ends of a job (done, cancelled) with their
//! cleanup.

use std::sync::Arc;

use futures::StreamExt;

use insitu_catalog::{
    now_ms, Acl, BlobRef, BucketRecord, CannedAcl, CatalogError, JobChange, ListQuery,
    ObjectHeaders, ObjectRecord,
};
use insitu_job_model::plan::{self, Downstream, OutputPlace};
use insitu_job_model::records::{
    ErrorRecord, JobRecord, JobState, OutputRecord, PieceRecord, TaskRecord, TaskState,
};
use insitu_job_model::{JobErrorCode, JobSpec};
use insitu_node_api::ObjectReference;

use crate::active::*;
use crate::attempt::*;
use crate::inputs::*;
use crate::{JobError, Supervisor};

pub(crate) fn object_record(tenant: &str, blob: &Blob) -> ObjectRecord {
    ObjectRecord {
        size: blob.size,
        etag: blob.md5.clone(),
        last_modified_ms: now_ms(),
        owner: tenant.to_string(),
        headers: ObjectHeaders::default(),
        acl: Acl::Canned(CannedAcl::Private),
        blob: BlobRef {
            id: blob.id.clone(),
            size: blob.size,
            replicas: blob.replicas.clone(),
        },
        parts_count: 0,
        part_sizes: Vec::new(),
        upload_id: None,
        checksum: None,
    }
}

/// Commits finished tasks in one atomic change, each task's outcome (its
/// output objects, its successors, its counters and its own state) with
/// the job's record; if that fails (an output bucket is gone), one by one,
/// so each failure is recorded on its own.
///
/// Returns the tasks whose commit must be tried again: the catalog was
/// unavailable. Whether such a commit landed is unknown, so the next
/// change to the job first reads its record again (`lock_settled`), and a
/// task tried again whose outcome the catalog already has is not
/// committed twice.
pub(crate) async fn commit_all(
    sv: &Arc<Supervisor>,
    job: &ActiveJob,
    fins: Vec<Finished>,
) -> Vec<Finished> {
    let mut rec = match job.lock_settled(sv).await {
        Ok(rec) => rec,
        Err(e) if e.is_retryable() => return fins,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the job back; its finished tasks are dropped");
            return Vec::new();
        }
    };
    if rec.state == JobState::Cancelled {
        // Cancelled meanwhile: given back, so that the driver records them
        // with the job's other unfinished tasks.
        return fins;
    }
    if rec.state.is_final() {
        return Vec::new();
    }
    let mut pending = Vec::with_capacity(fins.len());
    for fin in fins {
        if !fin.retried {
            pending.push(fin);
            continue;
        }
        match landed(sv, &rec.id, &fin.task).await {
            Ok(true) => {
                tracing::info!(task = %fin.task.id, "an earlier commit of the task had landed")
            }
            Ok(false) => pending.push(fin),
            Err(_) => return retried(std::iter::once(fin).chain(pending).collect()),
        }
    }
    if pending.len() > 1 {
        let mut current = rec.clone();
        let mut merged = JobChange::default();
        let mut built = true;
        for fin in &pending {
            match build_commit(sv, &current, fin, true).await {
                Ok((step, new)) => {
                    merged.merge(step);
                    current = new;
                }
                Err(_) => {
                    built = false;
                    break;
                }
            }
        }
        if built {
            match job.commit(sv, merged).await {
                Ok(()) => {
                    *rec = current;
                    for fin in &pending {
                        crate::memo::remember(sv, job, &rec, fin);
                    }
                    return Vec::new();
                }
                Err(CatalogError::Fenced(_)) => return Vec::new(),
                Err(e) if e.is_retryable() => return retried(pending),
                Err(_) => {}
            }
        }
    }
    let mut pending = pending.into_iter();
    while let Some(fin) = pending.next() {
        if let Err(again) = commit_one(sv, job, &mut rec, fin).await {
            // The catalog is away: the rest wait too, untried.
            return std::iter::once(again).chain(pending).collect();
        }
    }
    Vec::new()
}

/// Commits one finished task; gives it back when the catalog was
/// unavailable (see [`commit_all`]).
pub(crate) async fn commit(
    sv: &Arc<Supervisor>,
    job: &ActiveJob,
    fin: Finished,
) -> Option<Finished> {
    commit_all(sv, job, vec![fin]).await.pop()
}

fn retried(mut fins: Vec<Finished>) -> Vec<Finished> {
    for f in &mut fins {
        f.retried = true;
    }
    fins
}

/// Whether the catalog already has the task's outcome (an earlier commit
/// of it landed although its answer was lost).
async fn landed(sv: &Supervisor, job: &str, task: &TaskRecord) -> Result<bool, CatalogError> {
    let stored = match task.reducer {
        Some(r) => sv.catalog.job_reducer(job, task.phase, r).await?,
        None => {
            let seq = plan::map_task_seq(&task.id)
                .ok_or_else(|| CatalogError::Corrupt(format!("map task id {}", task.id)))?;
            sv.catalog
                .job_tasks(job, seq.checked_sub(1), 1)
                .await?
                .into_iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, t)| t)
        }
    };
    Ok(stored.is_some_and(|t| t.state != TaskState::Queued))
}

/// Commits one task's outcome under the job's locked record; the task
/// back (marked as tried) when the catalog was unavailable.
async fn commit_one(
    sv: &Arc<Supervisor>,
    job: &ActiveJob,
    rec: &mut JobRecord,
    fin: Finished,
) -> Result<(), Finished> {
    let first_try = build_commit(sv, rec, &fin, true).await;
    let result = match first_try {
        Ok((step, new)) => match job.commit(sv, step).await {
            Ok(()) => {
                crate::memo::remember(sv, job, &new, &fin);
                Ok(new)
            }
            Err(e) if e.is_retryable() => return Err(retried(vec![fin]).remove(0)),
            Err(e) => Err(e),
        },
        // Not tried: the change could not be built (the catalog is away).
        Err(e) if e.is_retryable() => return Err(fin),
        Err(e) => Err(e),
    };
    match result {
        Ok(new) => *rec = new,
        // Another gateway drives the job: nothing of this is recorded.
        Err(CatalogError::Fenced(_)) => {}
        Err(e) => {
            // The output bucket is gone (or the catalog refused the
            // change): the task fails with an internal error rather than
            // lose its record.
            tracing::error!(task = %fin.task.id, error = %e, "committing task output failed");
            let fail = Finished {
                task: fin.task.clone(),
                outcome: failed(
                    JobErrorCode::InternalError,
                    format!("committing the output failed: {e}"),
                ),
                retries: fin.retries,
                bytes_local: fin.bytes_local,
                bytes_remote: fin.bytes_remote,
                refused: fin.refused.clone(),
                _leases: Vec::new(),
                retried: false,
            };
            match build_commit(sv, rec, &fail, false).await {
                Ok((step, new)) => match job.commit(sv, step).await {
                    Ok(()) => *rec = new,
                    Err(e) if e.is_retryable() => return Err(retried(vec![fail]).remove(0)),
                    Err(_) => {}
                },
                Err(e) if e.is_retryable() => return Err(fail),
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// How an output is routed to the next phase's reducers: by the hash of
/// what its task read (stdout: a map task's input `bucket/key`, a
/// reducer's task id; for tasks that read the job's inputs the same in
/// every run of the job, so that a memoized reducer gets the same pieces
/// again), of its name (a named output, so that
/// the same name from every task meets at one reducer), or to the reducer
/// the task chose.
#[derive(Clone, Copy)]
enum Route<'a> {
    Source,
    Name(&'a str),
    To(u32),
}

/// Where a successful task's outputs go, within its commit.
struct Emit<'a> {
    step: &'a mut JobChange,
    rec: &'a mut JobRecord,
    bucket: &'a BucketRecord,
    phase: u32,
    task: &'a TaskRecord,
}

impl Emit<'_> {
    /// An output object at `key`: a final output, the input of a map task
    /// of the next phase, or a piece for a reducer, routed by `route`.
    fn output(
        &mut self,
        spec: &JobSpec,
        key: String,
        blob: &Blob,
        headers: &ObjectHeaders,
        route: Route<'_>,
    ) {
        let tenant = self.rec.tenant.clone();
        let obj = ObjectRecord {
            headers: headers.clone(),
            ..object_record(&tenant, blob)
        };
        self.step.put_object(self.bucket, &key, obj);
        let loc = format!("{}/{key}", self.bucket.name);
        match plan::downstream(spec, self.phase as usize) {
            Downstream::None => {
                let id = self.rec.id.clone();
                self.step.add_output(
                    &id,
                    self.rec.seq.output,
                    OutputRecord {
                        etag: None,
                        phase: self.phase,
                        task: self.task.id.clone(),
                        object: loc,
                        size: blob.size,
                        input_etag: self.task.pin.as_ref().map(|p| p.etag.clone()),
                    },
                );
                self.rec.seq.output += 1;
                self.rec.counters.outputs += 1;
            }
            Downstream::Map => add_map_task(self.step, self.rec, self.phase + 1, loc, None),
            Downstream::ReduceByName { count } | Downstream::ReduceByKey { count } => {
                let r = match route {
                    Route::To(r) if r < count => r,
                    Route::Name(name) => plan::reducer_for_name(name, count),
                    _ => plan::reducer_for_name(
                        self.task.input.as_deref().unwrap_or(&self.task.id),
                        count,
                    ),
                };
                self.piece(key, r, blob);
            }
        }
    }

    /// An output that is an existing object, by reference: pinned for the
    /// job, then listed as a final output (the object itself, not
    /// copied), the input of a map task of the next phase, or a reducer's
    /// piece, all reading the version referenced.
    fn reference(&mut self, spec: &JobSpec, r: &ObjectReference, route: Route<'_>) {
        let obj = ObjectRecord {
            size: r.size,
            etag: r.etag.clone(),
            blob: BlobRef {
                id: r.blob.clone(),
                size: r.size,
                replicas: r.replicas.clone(),
            },
            ..object_record(&self.rec.tenant, &Blob::default())
        };
        let id = self.rec.id.clone();
        let pin = pin_object(self.step, &id, &obj);
        let loc = format!("{}/{}", r.bucket, r.key);
        match plan::downstream(spec, self.phase as usize) {
            Downstream::None => {
                self.step.add_output(
                    &id,
                    self.rec.seq.output,
                    OutputRecord {
                        phase: self.phase,
                        task: self.task.id.clone(),
                        object: loc,
                        size: r.size,
                        input_etag: self.task.pin.as_ref().map(|p| p.etag.clone()),
                        etag: Some(r.etag.clone()),
                    },
                );
                self.rec.seq.output += 1;
                self.rec.counters.outputs += 1;
            }
            Downstream::Map => add_map_task(self.step, self.rec, self.phase + 1, loc, Some(pin)),
            Downstream::ReduceByName { count } | Downstream::ReduceByKey { count } => {
                let reducer = match route {
                    Route::To(n) if n < count => n,
                    Route::Name(name) => plan::reducer_for_name(name, count),
                    _ => plan::reducer_for_name(&loc, count),
                };
                self.step.add_piece(
                    &id,
                    self.phase + 1,
                    reducer,
                    self.rec.seq.piece,
                    PieceRecord {
                        bucket: r.bucket.clone(),
                        key: r.key.clone(),
                        size: r.size,
                        pin: Some(pin),
                    },
                );
                self.rec.seq.piece += 1;
            }
        }
    }

    /// A piece of the next phase's reducer `r`.
    fn piece(&mut self, key: String, r: u32, blob: &Blob) {
        let tenant = self.rec.tenant.clone();
        self.step
            .put_object(self.bucket, &key, object_record(&tenant, blob));
        let id = self.rec.id.clone();
        self.step.add_piece(
            &id,
            self.phase + 1,
            r,
            self.rec.seq.piece,
            PieceRecord {
                bucket: self.bucket.name.clone(),
                key,
                size: blob.size,
                pin: None,
            },
        );
        self.rec.seq.piece += 1;
    }
}

/// Whether the version a task referenced can still be read: the key's
/// current one, or one pinned (the gateway pinned it for the job when the
/// task referenced it, so a version queued for collection since is kept).
async fn reference_alive(
    catalog: &dyn insitu_catalog::Catalog,
    r: &ObjectReference,
) -> Result<bool, insitu_catalog::CatalogError> {
    if r.size == 0 {
        return Ok(true);
    }
    if let Some(o) = catalog.get_object(&r.bucket, &r.key).await? {
        if o.blob.id == r.blob {
            return Ok(true);
        }
    }
    Ok(catalog.pinned_blob(&r.blob).await?.is_some())
}

pub(crate) async fn build_commit(
    sv: &Supervisor,
    rec: &JobRecord,
    fin: &Finished,
    with_objects: bool,
) -> Result<(JobChange, JobRecord), insitu_catalog::CatalogError> {
    let mut new = rec.clone();
    let mut step = JobChange::default();
    let phase = fin.task.phase as usize;
    let last = phase + 1 == rec.spec.phases.len();
    let out = OutputPlace::of(&rec.spec);
    let mut task = fin.task.clone();
    new.counters.retries += fin.retries;
    new.phases[phase].bytes_local += fin.bytes_local;
    new.phases[phase].bytes_remote += fin.bytes_remote;
    for refused in &fin.refused {
        add_error(&mut step, &mut new, refused.clone());
    }
    let bucket = if with_objects {
        Some(
            output_bucket(sv.catalog.as_ref(), &rec.tenant, &rec.spec)
                .await
                .map_err(|e| match e {
                    // Unavailable stays retryable.
                    JobError::Catalog(e) => e,
                    e => CatalogError::Corrupt(e.to_string()),
                })?,
        )
    } else {
        None
    };
    match (&fin.outcome, bucket) {
        (
            Outcome::Success {
                stdout,
                pieces,
                named,
                memo,
            },
            Some(bucket),
        ) => {
            task.state = TaskState::Done;
            new.phases[phase].done += 1;
            if *memo == crate::memo::Memo::Reused {
                new.phases[phase].memoized += 1;
            }
            // A referenced version that is neither current nor pinned (a
            // reference recorded before references were pinned at once)
            // cannot be relied on.
            let mut gone = Vec::new();
            for (name, _, n) in named {
                if let Named::Reference(r) = n {
                    if !reference_alive(sv.catalog.as_ref(), r).await? {
                        gone.push((name.clone(), r.clone()));
                    }
                }
            }
            let mut emit = Emit {
                step: &mut step,
                rec: &mut new,
                bucket: &bucket,
                phase: fin.task.phase,
                task: &task,
            };
            if let Some(blob) = stdout {
                let key = out.output_key(
                    &rec.id,
                    fin.task.phase,
                    last,
                    &task.id,
                    task.input.as_deref(),
                    task.reducer,
                );
                emit.output(
                    &rec.spec,
                    key,
                    blob,
                    &ObjectHeaders::default(),
                    Route::Source,
                );
            }
            for (name, reducer, named) in named {
                let route = match reducer {
                    Some(r) => Route::To(*r),
                    None => Route::Name(name),
                };
                match named {
                    Named::Written(blob, headers) => {
                        let key =
                            out.named_output_key(&rec.id, fin.task.phase, last, &task.id, name);
                        emit.output(&rec.spec, key, blob, headers, route);
                    }
                    Named::Reference(r) if !gone.iter().any(|(n, _)| n == name) => {
                        emit.reference(&rec.spec, r, route);
                    }
                    Named::Reference(_) => {}
                }
            }
            for (r, blob) in pieces {
                let key = OutputPlace::piece_key(&rec.id, fin.task.phase, &task.id, *r);
                emit.piece(key, *r, blob);
            }
            for (_, r) in gone {
                // Not a failed job input: the error alone.
                let err = ErrorRecord {
                    phase: fin.task.phase,
                    task: task.id.clone(),
                    input: format!("{}/{}", r.bucket, r.key),
                    code: JobErrorCode::ResourceNotFoundError,
                    message: format!(
                        "the version of {}/{} the task referenced (ETag {}) was replaced and collected before the task ended",
                        r.bucket, r.key, r.etag
                    ),
                    stderr: None,
                    node: task.node.clone(),
                    input_etag: Some(r.etag.clone()),
                };
                step.add_error(&new.id, new.seq.error, err);
                new.seq.error += 1;
                new.counters.errors += 1;
            }
        }
        (outcome, bucket) => {
            let (code, message, stderr) = match outcome {
                Outcome::Failed {
                    code,
                    message,
                    stderr,
                } => (*code, message.clone(), stderr.as_ref()),
                Outcome::Success { .. } | Outcome::Requeue => (
                    JobErrorCode::InternalError,
                    "the output bucket is gone".to_string(),
                    None,
                ),
            };
            task.state = TaskState::Failed;
            new.phases[phase].failed += 1;
            let mut stderr_loc = None;
            if let (Some(blob), Some(bucket)) = (stderr, bucket) {
                let key = OutputPlace::stderr_key(&rec.id, &task.id, task.attempts);
                stderr_loc = Some(format!("{}/{key}", bucket.name));
                step.put_object(&bucket, &key, object_record(&rec.tenant, blob));
            }
            let input = match (&task.input, task.reducer) {
                (Some(i), _) => i.clone(),
                (None, Some(r)) => format!("reducer {r}"),
                _ => String::new(),
            };
            add_error(
                &mut step,
                &mut new,
                ErrorRecord {
                    phase: fin.task.phase,
                    task: task.id.clone(),
                    input,
                    code,
                    message,
                    stderr: stderr_loc,
                    node: task.node.clone(),
                    input_etag: task.pin.as_ref().map(|p| p.etag.clone()),
                },
            );
        }
    }
    match task.reducer {
        Some(_) => step.put_reducer(&rec.id, task),
        None => {
            let seq = plan::map_task_seq(&task.id).ok_or_else(|| {
                insitu_catalog::CatalogError::Corrupt(format!("map task id {}", task.id))
            })?;
            step.put_task(&rec.id, seq, task);
        }
    }
    step.put_job(&new);
    Ok((step, new))
}

/// The job is complete: record it, remove intermediate objects, and end
/// the job's containers on every node.
pub(crate) async fn finish(sv: &Arc<Supervisor>, job: &ActiveJob) {
    // Containers and intermediate outputs go first, so that a job seen as
    // done has nothing left running and nothing left over (a crash in
    // between repeats this, which is harmless).
    let snapshot = job.record.lock().await.clone();
    cleanup(sv, job, &snapshot).await;
    // What its tasks taught the memo is in before the job is seen done.
    crate::memo::written(job).await;
    // Only by the job's driver: one that lost it leaves them to the next.
    if !job.is_lost() {
        release_pins(sv, &snapshot.id).await;
    }
    let mut rec = match job.lock_settled(sv).await {
        Ok(rec) => rec,
        Err(e) => {
            // The driver ends; the next lease turn resumes the job.
            tracing::warn!(error = %e, "cannot record the job as done yet");
            return;
        }
    };
    if rec.state.is_final() {
        return;
    }
    let mut new = rec.clone();
    new.state = JobState::Done;
    new.done_ms = Some(now_ms());
    let mut step = JobChange::default();
    step.put_job(&new);
    step.release_lease(&new.id);
    if let Err(e) = job.commit(sv, step).await {
        tracing::error!(error = %e, "cannot record the job as done");
        return;
    }
    *rec = new.clone();
    tracing::info!(
        outputs = new.counters.outputs,
        errors = new.counters.errors,
        retries = new.counters.retries,
        "job done"
    );
}

pub(crate) async fn cancelled(sv: &Arc<Supervisor>, job: &ActiveJob, aborted: Vec<TaskRecord>) {
    let rec = 'record: {
        let mut rec = match job.lock_settled(sv).await {
            Ok(rec) => rec,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the tasks the cancel cut short");
                break 'record job.record.lock().await.clone();
            }
        };
        let mut new = rec.clone();
        let mut step = JobChange::default();
        for task in aborted {
            add_error(
                &mut step,
                &mut new,
                ErrorRecord {
                    phase: task.phase,
                    task: task.id.clone(),
                    input: task
                        .input
                        .clone()
                        .unwrap_or_else(|| format!("reducer {}", task.reducer.unwrap_or(0))),
                    code: JobErrorCode::JobCancelledError,
                    message: "the job was cancelled while the task ran".into(),
                    stderr: None,
                    node: task.node.clone(),
                    input_etag: task.pin.as_ref().map(|p| p.etag.clone()),
                },
            );
        }
        step.put_job(&new);
        if job.commit(sv, step).await.is_ok() {
            *rec = new;
        }
        rec.clone()
    };
    cleanup(sv, job, &rec).await;
    if !job.is_lost() {
        release_pins(sv, &rec.id).await;
    }
    // Now nothing of the job is left to do: its lease goes.
    let mut step = JobChange::default();
    step.release_lease(&rec.id);
    if let Err(e) = job.commit(sv, step).await {
        tracing::warn!(error = %e, "cannot release the cancelled job's lease; its next owner will");
    }
}

/// Pins dropped per catalog change when a job ends.
const PIN_RELEASE_PAGE: usize = 10_000;

/// Drops an ended job's pins a page at a time (its tasks are all over),
/// so that the change releasing its lease stays small however many
/// inputs it had. What a failure leaves, that change drops.
async fn release_pins(sv: &Supervisor, job: &str) {
    loop {
        match sv.catalog.release_pins(job, PIN_RELEASE_PAGE).await {
            Ok(n) if n == PIN_RELEASE_PAGE => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the job's pins page by page");
                return;
            }
        }
    }
}

/// Task groups ended concurrently when a job ends.
const GROUP_ENDS_AT_ONCE: usize = 16;

pub(crate) async fn cleanup(sv: &Arc<Supervisor>, job: &ActiveJob, rec: &JobRecord) {
    // Every node's groups end at once (a container's removal takes tens
    // of milliseconds, and a job seen done waits for the last of them).
    let phases = rec.spec.phases.len() as u32;
    let groups: Vec<(String, u32)> = sv
        .nodes
        .node_ids()
        .into_iter()
        .flat_map(|node| (0..phases).map(move |phase| (node.clone(), phase)))
        .collect();
    futures::stream::iter(groups)
        .for_each_concurrent(GROUP_ENDS_AT_ONCE, |(node, phase)| async move {
            if let Err(e) = sv.nodes.end_group(&node, &rec.tenant, &rec.id, phase).await {
                tracing::debug!(node = %node, error = %e, "ending task group");
            }
        })
        .await;
    // Intermediate outputs served their purpose; saved stderr stays.
    let out = OutputPlace::of(&rec.spec);
    let prefix = format!("{}p", OutputPlace::job_prefix(&rec.id));
    let query = ListQuery {
        prefix,
        delimiter: None,
        start_after: None,
        max: 1000,
    };
    while let Ok(page) = sv.catalog.list_objects(&out.bucket, &query).await {
        if page.objects.is_empty() {
            break;
        }
        let mut step = JobChange::default();
        for (k, _) in page.objects {
            step.delete_object(&out.bucket, &k);
        }
        if job.commit(sv, step).await.is_err() {
            break;
        }
    }
    if let Ok(mut l) = job.image_leases.lock() {
        l.clear();
    }
}

#[cfg(test)]
mod tests {
    //! A commit that landed although its answer was lost (a connection cut
    //! after the database committed), and one that did not land: either
    //! way the task's outcome is in the catalog exactly once.

    use std::time::Duration;

    use async_trait::async_trait;
    use insitu_job_model::records::{JobCounters, PhaseCounters, Seqs, TaskRecord};
    use insitu_job_model::JobSpec;
    use insitu_node_api::{TaskRequest, TaskResponse};

    use super::*;
    use crate::host::*;
    use crate::node_client::*;
    use crate::SupervisorConfig;

    struct NoNodes;

    #[async_trait]
    impl NodeClient for NoNodes {
        fn node_ids(&self) -> Vec<String> {
            Vec::new()
        }
        fn is_up(&self, _: &str) -> bool {
            false
        }
        fn place_more(&self, _: &str, _: usize, _: u64, _: &[String]) -> NodeResult<Vec<String>> {
            Ok(Vec::new())
        }
        fn has_room(&self, _: &str, _: u64) -> bool {
            false
        }
        async fn copy_to(&self, _: &BlobRef, _: &str, _: &str) -> NodeResult<()> {
            unreachable!()
        }
        async fn delete(&self, _: &str, _: &str) -> NodeResult<()> {
            unreachable!()
        }
        async fn prepare_image(
            &self,
            _: &str,
            _: &TaskRequest,
            _: Duration,
        ) -> NodeResult<Option<String>> {
            unreachable!()
        }
        async fn run_task(
            &self,
            _: &str,
            _: &TaskRequest,
            _: Duration,
        ) -> NodeResult<TaskResponse> {
            unreachable!()
        }
        async fn stream_append_blob(&self, _: &str, _: &str, _: &str) -> NodeResult<()> {
            unreachable!()
        }
        async fn stream_append_copy(&self, _: &str, _: &str, _: &BlobRef) -> NodeResult<()> {
            unreachable!()
        }
        async fn stream_end(&self, _: &str, _: &str) -> NodeResult<()> {
            unreachable!()
        }
        async fn end_group(&self, _: &str, _: &str, _: &str, _: u32) -> NodeResult<()> {
            unreachable!()
        }
        async fn read_logs(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &insitu_node_api::LogRequest,
        ) -> NodeResult<insitu_node_api::LogResponse> {
            unreachable!()
        }
    }

    struct Me;

    impl Peers for Me {
        fn id(&self) -> &str {
            "gw-a"
        }
        fn lease_ms(&self) -> i64 {
            60_000
        }
        fn least_loaded(&self, _: u32) -> String {
            "gw-a".into()
        }
        fn peer_addr(&self, _: &str) -> Option<String> {
            None
        }
        fn alone(&self) -> bool {
            true
        }
    }

    struct NoHolds;

    impl BlobHolds for NoHolds {
        fn hold(&self, _: &str) -> BlobHold {
            BlobHold::new(())
        }
    }

    /// A job with one queued map task, committed, and its driver's state
    /// (no driver runs: the test makes its commits).
    async fn one_task_job(dir: &std::path::Path) -> (Arc<Supervisor>, ActiveJob, Finished) {
        let catalog = insitu_catalog::open_rocksdb(&dir.join("catalog")).unwrap();
        catalog.create_tenant("alice").await.unwrap();
        for b in ["src", "out"] {
            catalog
                .create_bucket(b, "alice", Acl::Canned(CannedAcl::Private))
                .await
                .unwrap();
        }
        let sv = Supervisor::new(SupervisorParts {
            catalog: catalog.clone(),
            nodes: Arc::new(NoNodes),
            holds: Arc::new(NoHolds),
            peers: Arc::new(Me),
            config: SupervisorConfig {
                replicas: 1,
                task_slots: 1,
                locality_wait: std::time::Duration::MAX,
                tenant_max_tasks: 0,
                tenant_max_jobs: 0,
                task_maxima: Default::default(),
            },
        });
        let spec = JobSpec::parse(
            br#"{ "phases": [{ "type": "map", "image": "img", "exec": "wc -l" }],
                  "inputs": ["src/a"], "output": "out/res/" }"#,
        )
        .unwrap();
        let task = TaskRecord {
            pin: None,
            id: plan::map_task_id(0),
            phase: 0,
            input: Some("src/a".into()),
            reducer: None,
            state: TaskState::Queued,
            node: None,
            attempts: 1,
        };
        let rec = JobRecord {
            id: "j1".into(),
            tenant: "alice".into(),
            spec,
            state: JobState::Running,
            created_ms: 1,
            done_ms: None,
            input_closed: true,
            prefix_cursor: None,
            seq: Seqs {
                task: 1,
                input: 1,
                ..Seqs::default()
            },
            phases: vec![PhaseCounters {
                tasks: 1,
                ..PhaseCounters::default()
            }],
            counters: JobCounters {
                inputs: 1,
                ..JobCounters::default()
            },
        };
        let mut step = JobChange::default();
        step.put_task("j1", 0, task.clone());
        step.put_job(&rec);
        step.lease_new_job("alice", "j1", "gw-a", 60_000);
        catalog.job_commit(step).await.unwrap();
        let job = ActiveJob {
            id: "j1".into(),
            tenant: "alice".into(),
            epoch: 1,
            lost: Default::default(),
            unsettled: Default::default(),
            record: tokio::sync::Mutex::new(rec),
            wake: Default::default(),
            image_leases: Default::default(),
            running: Default::default(),
            preparing: Default::default(),
            prepared: Default::default(),
            assets_counted: Default::default(),
            waiting: Default::default(),
            locality: Default::default(),
            memo_writes: Default::default(),
        };
        let blob = Blob {
            id: "out-blob".into(),
            size: 3,
            md5: "0123456789abcdef0123456789abcdef".into(),
            replicas: vec!["n1".into()],
        };
        let fin = Finished {
            task,
            outcome: Outcome::Success {
                stdout: Some(blob),
                pieces: Vec::new(),
                named: Vec::new(),
                memo: crate::memo::Memo::Off,
            },
            retries: 0,
            bytes_local: 0,
            bytes_remote: 0,
            refused: Vec::new(),
            _leases: Vec::new(),
            retried: true,
        };
        (sv, job, fin)
    }

    async fn outputs(sv: &Supervisor) -> usize {
        sv.catalog.job_outputs("j1", None, 10).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_commit_that_landed_unanswered_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let (sv, job, fin) = one_task_job(dir.path()).await;
        // The change lands, but its answer is lost: this gateway's record
        // stays as it was, and its outcome is unknown.
        let (step, _) = build_commit(&sv, &*job.record.lock().await, &fin, true)
            .await
            .unwrap();
        job.commit(&sv, step).await.unwrap();
        job.unsettled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(commit_all(&sv, &job, vec![fin]).await.is_empty());
        assert_eq!(outputs(&sv).await, 1);
        let here = job.record.lock().await.clone();
        let stored = sv.catalog.job("alice", "j1").await.unwrap().unwrap();
        assert_eq!(here.counters.outputs, 1);
        assert_eq!(here.phases[0].done, 1);
        assert_eq!(here.seq, stored.seq);
    }

    #[tokio::test]
    async fn a_commit_that_did_not_land_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (sv, job, fin) = one_task_job(dir.path()).await;
        job.unsettled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(commit_all(&sv, &job, vec![fin]).await.is_empty());
        assert_eq!(outputs(&sv).await, 1);
        let stored = sv.catalog.job("alice", "j1").await.unwrap().unwrap();
        assert_eq!(stored.counters.outputs, 1);
        assert_eq!(stored.phases[0].done, 1);
    }
}
