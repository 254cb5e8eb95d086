//! Memoized tasks (a job's `memoize`): a task of the job's last phase
//! whose fingerprint equals that of an earlier successful task of the same
//! tenant reuses that task's outputs, by reference, instead of running.
//!
//! The fingerprint covers what decides a task's outputs: its input (for a
//! map task where it is, and its version: blob, ETag and size; for a
//! reducer its index, the phase's reducer count, and the multiset of its
//! input pieces' ETags and sizes, so that pieces identical by ETag, from
//! memoized or rerun upstream tasks alike, match), the phase's `exec`,
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
use crate::inputs::{check_input, pinned_blob, split};
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

/// What a task reads, as its fingerprint names it.
pub(crate) enum MemoInput<'a> {
    /// A map task's input object, at the version pinned.
    Object { name: &'a str, pin: &'a InputPin },
    /// A reducer's input: its pieces, in any order.
    Pieces {
        reducer: u32,
        count: u32,
        pieces: PiecesDigest,
    },
}

/// An order-free digest of a reducer's input pieces: the sum, modulo
/// 2^256, of the SHA-256 of each non-empty piece's ETag and size, and
/// their count. The feed's order is not part of a job's semantics, so the
/// same pieces in another order are the same input; and the digest takes
/// constant memory however many pieces there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PiecesDigest {
    sum: [u64; 4],
    count: u64,
}

impl PiecesDigest {
    pub(crate) fn add(&mut self, etag: &str, size: u64) {
        let mut h = Sha256::new();
        h.update(etag.as_bytes());
        h.update([0]);
        h.update(size.to_le_bytes());
        let d = h.finalize();
        let mut carry = false;
        for (i, word) in self.sum.iter_mut().enumerate() {
            let mut limb = [0u8; 8];
            limb.copy_from_slice(&d[i * 8..i * 8 + 8]);
            let (a, c1) = word.overflowing_add(u64::from_le_bytes(limb));
            let (b, c2) = a.overflowing_add(u64::from(carry));
            *word = b;
            carry = c1 || c2;
        }
        self.count += 1;
    }

    fn hex(&self) -> String {
        let bytes: Vec<u8> = self.sum.iter().flat_map(|w| w.to_le_bytes()).collect();
        hex::encode(bytes)
    }
}

/// The digest of what reducer `reducer` of the task's phase reads now:
/// every piece recorded for it (the caller knows the upstream is done),
/// at its current version. `Ok(None)` when a piece cannot be read (gone,
/// or refused): such a reducer is not memoized.
pub(crate) async fn reducer_pieces(
    sv: &Supervisor,
    tenant: &str,
    job: &str,
    phase: u32,
    reducer: u32,
) -> Result<Option<PiecesDigest>, String> {
    let catalog: &dyn Catalog = sv.catalog.as_ref();
    let mut digest = PiecesDigest::default();
    let mut after = None;
    loop {
        let page = catalog
            .job_pieces(job, phase, reducer, after, PIECES_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            return Ok(Some(digest));
        }
        for (seq, p) in page {
            after = Some(seq);
            let (version, size) = match &p.pin {
                // A job input or a referenced object, at its pinned
                // version (blob and ETag: a rewrite is a change); one
                // gone is skipped, as the feed skips it.
                Some(pin) => match pinned_blob(catalog, &p.bucket, &p.key, pin).await {
                    Ok(Some(_)) => (format!("{}/{}", pin.etag, pin.blob), pin.size),
                    Ok(None) => continue,
                    Err(e) => return Err(e.to_string()),
                },
                // An earlier phase's output: its ETag, whichever run of
                // the task made it.
                None => match check_input(catalog, tenant, &p.bucket, &p.key).await {
                    Ok(o) => (o.etag, o.size),
                    Err((JobErrorCode::InternalError, e)) => return Err(e),
                    Err(_) => return Ok(None),
                },
            };
            // The feed skips empty pieces: so does the digest.
            if size > 0 {
                digest.add(&version, size);
            }
        }
    }
}

/// Pieces read per catalog call while digesting a reducer's input.
const PIECES_PAGE: usize = 1000;

/// The fingerprint of a task: hex SHA-256 of its parts as JSON.
pub(crate) fn fingerprint(
    spec: &PhaseSpec,
    input: &MemoInput<'_>,
    image_id: &str,
    assets: &[(String, String, String)],
    output_place: &str,
) -> String {
    let input = match input {
        MemoInput::Object { name, pin } => serde_json::json!({
            "object": name, "blob": pin.blob, "etag": pin.etag, "size": pin.size,
        }),
        MemoInput::Pieces {
            reducer,
            count,
            pieces,
        } => serde_json::json!({
            "reducer": reducer, "reducers": count,
            "pieces": pieces.hex(), "piece_count": pieces.count,
        }),
    };
    let parts = serde_json::json!({
        "v": 1,
        "input": input,
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
    // (Task futures run on tasks of their own, `driver::spawned`: this
    // transaction is never left unpolled while it locks the job's row.)
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
