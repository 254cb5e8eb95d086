//! Memoized tasks (a job's `memoize`): a map task of the job's last phase
//! whose fingerprint equals that of an earlier successful task of the same
//! tenant reuses that task's outputs, by reference, instead of running.
//!
//! The fingerprint covers what decides a task's outputs: its input (where
//! it is, and its version: blob, ETag and size), the phase's `exec`,
//! `init` and `env`, the content id of the image on the node that would
//! run it, the assets' versions, the limits, and where the job's outputs
//! go (so reused outputs are under the place the job asked for). An entry
//! is recorded after the task's commit, unless the task asked its
//! endpoint for anything but writing outputs (its outputs may then depend
//! on more than its input) or made more than `MAX_MEMO_OUTPUTS` outputs;
//! it is used only while every output it names is still the same version
//! and readable by the tenant, and dropped when one is not.

use std::sync::Arc;

use insitu_catalog::{BlobRef, Catalog, CatalogError, JobChange};
use insitu_job_model::limits::MAX_MEMO_ENTRIES_PER_TENANT;
use insitu_job_model::plan::OutputPlace;
use insitu_job_model::records::{InputPin, JobRecord, MemoOutput, MemoRecord};
use insitu_job_model::{JobErrorCode, PhaseSpec};
use insitu_node_api::ObjectReference;
use sha2::{Digest, Sha256};

use crate::active::ActiveJob;
use crate::attempt::{Finished, Named, Outcome};
use crate::commit::object_record;
use crate::host::BlobHold;
use crate::inputs::{check_input, split};
use crate::Supervisor;

/// A task with more outputs than this is not memoized: an entry stays
/// small, and checking it costs a few reads.
pub(crate) const MAX_MEMO_OUTPUTS: usize = 64;

/// What a successful outcome means for the memo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Memo {
    /// The job does not memoize this task.
    Off,
    /// Not run: an earlier task's outputs were reused.
    Reused,
    /// Run: its outputs are remembered under this fingerprint once
    /// committed.
    Record(String),
}

/// The fingerprint of a task: hex SHA-256 of its parts as JSON.
pub(crate) fn fingerprint(
    spec: &PhaseSpec,
    input: &str,
    pin: &InputPin,
    image_id: &str,
    assets: &[(String, String, String)],
    output_place: &str,
) -> String {
    let parts = serde_json::json!({
        "v": 1,
        "input": { "object": input, "blob": pin.blob, "etag": pin.etag, "size": pin.size },
        "output": output_place,
        "exec": spec.exec,
        "init": spec.init,
        "env": spec.env,
        "image": image_id,
        "assets": assets,
        "limits": {
            "memory_mb": spec.memory_mb(),
            "cpus": spec.cpus(),
            "disk_mb": spec.disk_mb(),
            "output_mb": spec.output_mb(),
            "timeout_s": spec.timeout_s(),
            "runtime": spec.runtime,
        },
    });
    hex::encode(Sha256::digest(parts.to_string().as_bytes()))
}

/// The outputs an earlier task with this fingerprint left, if every one
/// is still the version it wrote and the tenant may read it, each pinned
/// for the job at once (and held until then) so that it stays readable
/// until the job ends; an entry that no longer holds is dropped. `Err`
/// when the catalog cannot answer now; the task then runs.
pub(crate) async fn reusable(
    sv: &Arc<Supervisor>,
    tenant: &str,
    job: &str,
    fp: &str,
    holds: &mut Vec<BlobHold>,
) -> Result<Option<Vec<ObjectReference>>, String> {
    let catalog: &dyn Catalog = sv.catalog.as_ref();
    let rec = match catalog.memo_get(tenant, fp).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return Ok(None),
        Err(CatalogError::Corrupt(e)) => {
            // Unreadable (a newer build's record, say): not used.
            tracing::warn!(fingerprint = fp, error = %e, "an unreadable memo entry is dropped");
            let _ = catalog.memo_delete(tenant, fp, None).await;
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut refs = Vec::with_capacity(rec.outputs.len());
    let mut change = JobChange::default();
    change.require_running(tenant, job);
    for o in &rec.outputs {
        match check_input(catalog, tenant, &o.bucket, &o.key).await {
            Ok(obj) if obj.etag == o.etag && obj.blob.id == o.blob => {
                holds.push(sv.holds.hold(&obj.blob.id));
                change.pin(
                    job,
                    BlobRef {
                        id: obj.blob.id.clone(),
                        size: obj.blob.size,
                        replicas: obj.blob.replicas.clone(),
                    },
                );
                refs.push(ObjectReference {
                    bucket: o.bucket.clone(),
                    key: o.key.clone(),
                    blob: o.blob.clone(),
                    etag: o.etag.clone(),
                    size: obj.size,
                    replicas: obj.blob.replicas.clone(),
                })
            }
            Err((JobErrorCode::InternalError, message)) => return Err(message),
            _ => {
                // Overwritten, deleted or no longer readable: the entry goes.
                tracing::info!(fingerprint = fp, object = %format!("{}/{}", o.bucket, o.key), "a memoized output is gone; the task runs");
                catalog
                    .memo_delete(tenant, fp, Some(rec.created_ms))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(None);
            }
        }
    }
    // Pinned before the task counts as done: collection leaves them from
    // now on, as for a reference a task makes.
    catalog
        .job_commit(change)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(refs))
}

/// A reused task's outcome: its earlier outputs, by reference.
pub(crate) fn reused(refs: Vec<ObjectReference>) -> Outcome {
    Outcome::Success {
        stdout: None,
        pieces: Vec::new(),
        named: refs
            .into_iter()
            .map(|r| (format!("{}/{}", r.bucket, r.key), None, Named::Reference(r)))
            .collect(),
        memo: Memo::Reused,
    }
}

/// Remembers what a committed task of a memoizing job left as its final
/// outputs: built now, checked and written in the background (best
/// effort: a failure only means the next run runs the task).
pub(crate) fn remember(sv: &Arc<Supervisor>, job: &ActiveJob, rec: &JobRecord, fin: &Finished) {
    let Outcome::Success {
        stdout,
        named,
        memo: Memo::Record(fp),
        ..
    } = &fin.outcome
    else {
        return;
    };
    let out = OutputPlace::of(&rec.spec);
    let task = &fin.task;
    let mut outputs = Vec::new();
    if let Some(blob) = stdout {
        let key = out.output_key(
            &rec.id,
            task.phase,
            true,
            &task.id,
            task.input.as_deref(),
            task.reducer,
        );
        outputs.push(MemoOutput {
            bucket: out.bucket.clone(),
            key,
            etag: object_record(&rec.tenant, blob).etag,
            size: blob.size,
            blob: blob.id.clone(),
        });
    }
    for (name, _, n) in named {
        match n {
            Named::Written(blob, _) => outputs.push(MemoOutput {
                bucket: out.bucket.clone(),
                key: out.named_output_key(&rec.id, task.phase, true, &task.id, name),
                etag: object_record(&rec.tenant, blob).etag,
                size: blob.size,
                blob: blob.id.clone(),
            }),
            Named::Reference(r) => outputs.push(MemoOutput {
                bucket: r.bucket.clone(),
                key: r.key.clone(),
                etag: r.etag.clone(),
                size: r.size,
                blob: r.blob.clone(),
            }),
        }
    }
    if outputs.len() > MAX_MEMO_OUTPUTS {
        return;
    }
    let entry = MemoRecord {
        created_ms: insitu_catalog::now_ms(),
        job: rec.id.clone(),
        task: task.id.clone(),
        outputs,
    };
    let (sv, tenant, fp) = (sv.clone(), rec.tenant.clone(), fp.clone());
    let write = tokio::spawn(async move {
        let catalog: &dyn Catalog = sv.catalog.as_ref();
        // Only what the commit published as it is now: a reference that
        // was gone by the commit is not an output, and then nothing is
        // kept.
        for o in &entry.outputs {
            let (bucket, key) = split(&format!("{}/{}", o.bucket, o.key));
            match catalog.get_object(&bucket, &key).await {
                Ok(Some(obj)) if obj.blob.id == o.blob => {}
                _ => return,
            }
        }
        if let Err(e) = catalog
            .memo_put(&tenant, &fp, &entry, MAX_MEMO_ENTRIES_PER_TENANT)
            .await
        {
            tracing::warn!(task = %entry.task, error = %e, "cannot remember a memoized task");
        }
    });
    if let Ok(mut w) = job.memo_writes.lock() {
        w.retain(|h| !h.is_finished());
        w.push(write);
    }
}

/// Waits for the job's memo entries still being written.
pub(crate) async fn written(job: &ActiveJob) {
    let writes = job
        .memo_writes
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default();
    for w in writes {
        let _ = w.await;
    }
}
