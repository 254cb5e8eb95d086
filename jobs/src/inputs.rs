//! A job's inputs: adding them (as map tasks or reducer pieces), and the
//! read check made on the version that is read.

use insitu_catalog::{
    access, BlobRef, BucketRecord, Catalog, CatalogError, JobChange, ObjectRecord, Requester,
};
use insitu_job_model::plan::{self, OutputPlace};
use insitu_job_model::records::{
    self, InputPin, InputRecord, JobRecord, PieceRecord, TaskRecord, TaskState,
};
use insitu_job_model::JobErrorCode;
use insitu_job_model::{JobSpec, PhaseKind};

use crate::error::*;
use crate::host::{BlobHold, BlobHolds};

/// Splits `bucket/key`.
pub(crate) fn split(loc: &str) -> (String, String) {
    match loc.split_once('/') {
        Some((b, k)) => (b.to_string(), k.to_string()),
        None => (loc.to_string(), String::new()),
    }
}

/// The output bucket, which the tenant must own.
pub(crate) async fn output_bucket(
    catalog: &dyn Catalog,
    tenant: &str,
    spec: &JobSpec,
) -> Result<BucketRecord, JobError> {
    let out = OutputPlace::of(spec);
    let bucket = catalog.get_bucket(&out.bucket).await?.ok_or_else(|| {
        JobError::Invalid(format!("output: bucket {} does not exist", out.bucket))
    })?;
    if bucket.owner != tenant {
        return Err(JobError::AccessDenied(format!(
            "output: bucket {} belongs to another tenant",
            out.bucket
        )));
    }
    Ok(bucket)
}

/// Every asset of every phase exists and the tenant may read it: a job
/// whose asset is missing or refused is not created. (Each task's node
/// checks again on the version it links.)
pub(crate) async fn check_assets(
    catalog: &dyn Catalog,
    tenant: &str,
    spec: &JobSpec,
) -> Result<(), JobError> {
    use insitu_job_model::JobErrorCode;
    for (i, phase) in spec.phases.iter().enumerate() {
        for (j, asset) in phase.assets.iter().enumerate() {
            let (bucket, key) = split(asset.strip_prefix("s3://").unwrap_or(asset));
            if let Err((code, message)) = check_input(catalog, tenant, &bucket, &key).await {
                let message = format!("phases[{i}].assets[{j}]: {message}");
                return Err(match code {
                    JobErrorCode::ResourceNotFoundError => JobError::MissingObject(message),
                    JobErrorCode::AccessDeniedError => JobError::AccessDenied(message),
                    _ => JobError::Unavailable(message),
                });
            }
        }
    }
    Ok(())
}

/// Adds inputs to a job record being built into `step`, each pinned at
/// once to the version the tenant may read now (its blob kept from
/// garbage collection until the job ends): a map task each when the first
/// phase is a map, or a reducer piece each when it is a reduce (routed by
/// the input's name). An input that is missing or refused is an error
/// record at once. An input already in the job is not added again: its
/// output would have the same name. Returns holds on the versions pinned,
/// to keep until `step` is committed: GC leaves them alone until the pins
/// are in the catalog.
pub(crate) async fn add_inputs(
    catalog: &dyn Catalog,
    holds: &dyn BlobHolds,
    step: &mut JobChange,
    rec: &mut JobRecord,
    inputs: &[(String, String, u64)],
) -> Result<Vec<BlobHold>, CatalogError> {
    let first = rec.spec.phases[0].clone();
    let mut held = Vec::new();
    let mut batch = std::collections::HashSet::new();
    for (bucket, key, _) in inputs {
        let loc = format!("{bucket}/{key}");
        let known = !batch.insert(loc.clone()) || catalog.job_has_input(&rec.id, &loc).await?;
        if known {
            continue;
        }
        let checked = check_input(catalog, &rec.tenant, bucket, key).await;
        if let Ok(o) = &checked {
            held.push(holds.hold(&o.blob.id));
        }
        let etag = checked.as_ref().ok().map(|o| o.etag.clone());
        step.add_input(
            &rec.id,
            rec.seq.input,
            InputRecord {
                input: loc.clone(),
                etag,
            },
        );
        rec.seq.input += 1;
        rec.counters.inputs += 1;
        let obj = match checked {
            Ok(obj) => obj,
            Err((JobErrorCode::InternalError, message)) => {
                return Err(CatalogError::Unavailable(message))
            }
            Err((code, message)) => {
                add_error(
                    step,
                    rec,
                    records::ErrorRecord {
                        phase: 0,
                        task: String::new(),
                        input: loc,
                        code,
                        message,
                        stderr: None,
                        node: None,
                        input_etag: None,
                    },
                );
                continue;
            }
        };
        let pin = pin_object(step, &rec.id, &obj);
        match first.kind {
            PhaseKind::Map => add_map_task(step, rec, 0, loc, Some(pin)),
            PhaseKind::Reduce => {
                let r = plan::reducer_for_name(&loc, first.reducers());
                step.add_piece(
                    &rec.id,
                    0,
                    r,
                    rec.seq.piece,
                    PieceRecord {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        size: obj.blob.size,
                        pin: Some(pin),
                    },
                );
                rec.seq.piece += 1;
            }
        }
    }
    Ok(held)
}

/// Pins an object's current version for a job, in a step: the version
/// its task reads.
pub(crate) fn pin_object(step: &mut JobChange, job: &str, obj: &ObjectRecord) -> InputPin {
    if obj.blob.size > 0 {
        step.pin(job, obj.blob.clone());
    }
    InputPin {
        blob: obj.blob.id.clone(),
        etag: obj.etag.clone(),
        size: obj.blob.size,
    }
}

/// The blob of a pinned version, with the nodes that hold it: the key's
/// current record when it still names that version; else (the key was
/// overwritten or deleted since) its replicas when the key let go of it,
/// from the collection queue, or failing that as pinned. `None` when the
/// pinned version is gone (a job older than its pins).
pub(crate) async fn pinned_blob(
    catalog: &dyn Catalog,
    bucket: &str,
    key: &str,
    pin: &InputPin,
) -> Result<Option<BlobRef>, CatalogError> {
    if pin.size == 0 {
        return Ok(Some(BlobRef {
            id: pin.blob.clone(),
            size: 0,
            replicas: Vec::new(),
        }));
    }
    if let Some(o) = catalog.get_object(bucket, key).await? {
        if o.blob.id == pin.blob {
            return Ok(Some(o.blob));
        }
    }
    let Some(pinned) = catalog.pinned_blob(&pin.blob).await? else {
        return Ok(None);
    };
    Ok(Some(
        catalog.queued_blob(&pin.blob).await?.unwrap_or(pinned),
    ))
}

/// Queues a map task of `phase` over `input` (`bucket/key`) in a step,
/// reading the pinned version when there is one.
pub(crate) fn add_map_task(
    step: &mut JobChange,
    rec: &mut JobRecord,
    phase: u32,
    input: String,
    pin: Option<InputPin>,
) {
    let task = TaskRecord {
        id: plan::map_task_id(rec.seq.task),
        phase,
        input: Some(input),
        reducer: None,
        state: TaskState::Queued,
        node: None,
        attempts: 0,
        pin,
    };
    step.put_task(&rec.id, rec.seq.task, task);
    rec.seq.task += 1;
    rec.phases[phase as usize].tasks += 1;
}

/// Whether the tenant may read `bucket/key` as a job input: the object
/// record that was checked (read that version, and no other: the key may
/// be overwritten with other permissions meanwhile), or the error the
/// input gets (answered as S3 would: a missing key is only reported as
/// missing to someone who may list the bucket).
pub(crate) async fn check_input(
    catalog: &dyn Catalog,
    tenant: &str,
    bucket: &str,
    key: &str,
) -> Result<insitu_catalog::ObjectRecord, (insitu_job_model::JobErrorCode, String)> {
    use insitu_job_model::JobErrorCode;
    let loc = format!("{bucket}/{key}");
    let internal = |e: CatalogError| (JobErrorCode::InternalError, e.to_string());
    let Some(b) = catalog.get_bucket(bucket).await.map_err(internal)? else {
        return Err((
            JobErrorCode::ResourceNotFoundError,
            format!("bucket {bucket} does not exist"),
        ));
    };
    match catalog.get_object(bucket, key).await.map_err(internal)? {
        Some(o) if may_read(tenant, &b, &o) => Ok(o),
        None if may_list(tenant, &b) => Err((
            JobErrorCode::ResourceNotFoundError,
            format!("object {loc} does not exist"),
        )),
        _ => Err((
            JobErrorCode::AccessDeniedError,
            format!("tenant {tenant} may not read {loc}"),
        )),
    }
}

/// Records an error (and, for a job input, a failed input) in a step.
pub(crate) fn add_error(step: &mut JobChange, rec: &mut JobRecord, err: records::ErrorRecord) {
    if err.phase == 0 && !err.input.is_empty() {
        step.add_failed_input(
            &rec.id,
            rec.seq.failed_input,
            InputRecord {
                input: err.input.clone(),
                etag: err.input_etag.clone(),
            },
        );
        rec.seq.failed_input += 1;
    }
    step.add_error(&rec.id, rec.seq.error, err);
    rec.seq.error += 1;
    rec.counters.errors += 1;
}

/// Parses `bucket/key` inputs given to the API.
pub(crate) fn parse_inputs(inputs: &[String]) -> Result<Vec<(String, String, u64)>, JobError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            insitu_job_model::spec::split_location(&format!("inputs[{i}]"), s, false)
                .map(|(b, k)| (b, k, 0))
                .map_err(|e| JobError::Invalid(e.to_string()))
        })
        .collect()
}

/// Whether the tenant may read an input object, by the rule S3's GET
/// follows.
pub(crate) fn may_read(tenant: &str, bucket: &BucketRecord, obj: &ObjectRecord) -> bool {
    access::may_read(Requester::Tenant(tenant), bucket, obj)
}

/// Whether the tenant may list a bucket (and so learn that a key is
/// missing).
pub(crate) fn may_list(tenant: &str, bucket: &BucketRecord) -> bool {
    access::may_list(Requester::Tenant(tenant), bucket)
}
