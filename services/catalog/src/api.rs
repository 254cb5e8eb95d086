//! The catalog's typed interface: one async trait per domain, which every
//! backend implements. Callers hold an `Arc<dyn Catalog>` and see only the
//! record types of this crate and the jobs crate; key layouts, column
//! families, tables and transactions stay inside each backend.

use async_trait::async_trait;
use insitu_job_model::records::{
    ErrorRecord, InputRecord, JobRecord, MemoRecord, OutputRecord, PieceRecord, TaskRecord,
};

use crate::records::*;
use crate::{CatalogError, Result};

/// A condition checked atomically with a write (`If-None-Match` and
/// `If-Match` on PUT, copy and CompleteMultipartUpload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCondition {
    None,
    /// Only if no object exists under the key (`If-None-Match: *`).
    IfNoneMatchAny,
    /// Only if the current object, if any, does not have this ETag.
    IfNoneMatch(String),
    /// Only if some object exists under the key (`If-Match: *`).
    IfMatchAny,
    /// Only if the current object has this ETag.
    IfMatch(String),
}

impl WriteCondition {
    /// Whether the condition holds for the object now under `key`. As in
    /// S3, an `If-Match` with no object there is `NoSuchKey`; any other
    /// failure is `PreconditionFailed`.
    pub fn check(&self, key: &str, existing: Option<&ObjectRecord>) -> Result<()> {
        let holds = match (self, existing) {
            (Self::None, _) => true,
            (Self::IfMatchAny | Self::IfMatch(_), None) => {
                return Err(CatalogError::NoSuchKey(key.to_string()))
            }
            (Self::IfMatchAny, Some(_)) => true,
            (Self::IfMatch(etag), Some(e)) => e.etag == *etag,
            (Self::IfNoneMatchAny, e) => e.is_none(),
            (Self::IfNoneMatch(etag), e) => e.is_none_or(|e| e.etag != *etag),
        };
        if holds {
            Ok(())
        } else {
            Err(CatalogError::PreconditionFailed)
        }
    }
}

/// Whether the bucket now under a name is the one a caller was authorised
/// for (`expected`; `None`: any bucket of that name). A bucket deleted and
/// re-created meanwhile, by anyone, is another bucket.
pub(crate) fn is_expected_bucket(
    current: Option<&BucketRecord>,
    expected: Option<&BucketRecord>,
) -> bool {
    match (current, expected) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(c), Some(e)) => c.owner == e.owner && c.created_ms == e.created_ms,
    }
}

/// A listing of one bucket's keys in byte order.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: String,
    /// Keys holding this after the prefix roll up into a common prefix.
    pub delimiter: Option<String>,
    /// Exclusive: listing starts strictly after this key.
    pub start_after: Option<String>,
    pub max: usize,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct ObjectPage {
    pub objects: Vec<(String, ObjectRecord)>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// The last key or common prefix returned; the next page starts after it.
    pub last: Option<String>,
}

/// A listing of one bucket's unfinished multipart uploads, in (key, upload
/// id) order.
#[derive(Debug, Clone, Default)]
pub struct UploadQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    pub max: usize,
}

#[derive(Debug, Default)]
pub struct UploadPage {
    pub uploads: Vec<UploadRecord>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// Where the next page starts: the last key (or common prefix) and,
    /// for an upload, its id.
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    async fn create_tenant(&self, name: &str) -> Result<TenantRecord>;
    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>>;
    /// Replaces a tenant's policy; false if there is no such tenant.
    async fn set_tenant_policy(&self, name: &str, policy: &TenantPolicy) -> Result<bool>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>>;
    /// Adds a key for an existing tenant. Re-adding an identical key is a
    /// no-op so that root credentials from the environment can be installed
    /// at every start.
    async fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()>;
    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRecord>>;

    async fn ensure_tenant(&self, name: &str) -> Result<()> {
        match self.create_tenant(name).await {
            Ok(_) | Err(crate::CatalogError::TenantExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
pub trait BucketStore: Send + Sync {
    async fn create_bucket(&self, name: &str, owner: &str, acl: Acl) -> Result<BucketRecord>;
    async fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>>;
    /// Changes one of a bucket's settings (its ACL, its CORS rules), only
    /// if the bucket under that name is still `bucket`, the one the caller
    /// was authorised for; `NoSuchBucket` otherwise (deleted, or deleted
    /// and created again by anyone).
    async fn update_bucket(&self, bucket: &BucketRecord, update: BucketUpdate) -> Result<()>;
    /// Deletes an empty bucket. Unfinished multipart uploads do not keep a
    /// bucket alive: they are aborted and their parts queued for collection.
    async fn delete_bucket(&self, name: &str) -> Result<()>;
    /// The owner's buckets in name order.
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketRecord>>;
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>>;
    /// Makes `rec` the visible version of `bucket/key`, atomically replacing
    /// any previous version, whose blob is queued for collection. The caller
    /// has already made `rec.blob` durable on every replica.
    async fn put_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> Result<()>;
    /// Like `put_object`, but only into the very bucket the caller was
    /// authorised for (a bucket deleted and re-created by someone else
    /// meanwhile is refused) and only if `cond` holds for the current object.
    async fn put_object_checked(
        &self,
        bucket: &BucketRecord,
        key: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()>;
    /// Replaces only the ACL of the object `key`, only if it is still the
    /// one the caller was authorised for (its blob is `blob_id`, in the
    /// very bucket `bucket`); false otherwise (gone, or replaced).
    async fn set_object_acl(
        &self,
        bucket: &BucketRecord,
        key: &str,
        blob_id: &str,
        acl: Acl,
    ) -> Result<bool>;
    /// Removes an object; returns whether it existed.
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool>;
    /// Lists keys of `bucket` in byte order, grouping by the delimiter after
    /// the prefix. A common prefix is skipped whole, so a listing with a
    /// delimiter never reads the keys it hides.
    async fn list_objects(&self, bucket: &str, q: &ListQuery) -> Result<ObjectPage>;
}

#[async_trait]
pub trait MultipartStore: Send + Sync {
    async fn create_upload(&self, rec: &UploadRecord) -> Result<()>;
    async fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>>;
    /// Records a durable part; a part uploaded again under the same number
    /// replaces the old one, whose blob is collected.
    async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: &PartRecord,
    ) -> Result<()>;
    /// Parts in number order after `marker`, at most `max`, and whether
    /// more follow.
    async fn list_parts(
        &self,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(Vec<PartRecord>, bool)>;
    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()>;
    /// Atomically publishes the assembled object and forgets the upload,
    /// if `cond` holds for the object now under the key. All part blobs are
    /// queued for collection: the object has its own blob.
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()>;
    async fn list_uploads(&self, bucket: &str, q: &UploadQuery) -> Result<UploadPage>;
}

/// What repair, GC and the orphan sweep need: the GC queue and the index of
/// which record owns each blob, both kept by the catalog in the same
/// transaction as the change that implies them.
#[async_trait]
pub trait BlobIndex: Send + Sync {
    /// Queued blobs with ids after `after`, at most `max`.
    async fn list_gc_after(&self, after: &str, max: usize) -> Result<Vec<GcRecord>>;
    async fn remove_gc(&self, blob_id: &str) -> Result<()>;
    async fn is_gc_queued(&self, blob_id: &str) -> Result<bool>;
    /// The blob as queued for collection (its replicas when its record
    /// let go of it), if it is queued.
    async fn queued_blob(&self, blob_id: &str) -> Result<Option<BlobRef>>;
    /// The blob as the record that owns it currently describes it.
    async fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>>;
    /// Referenced blobs in id order after `after`, at most `max`.
    async fn scan_blobs(&self, after: &str, max: usize) -> Result<Vec<(BlobOwner, BlobRef)>>;
    /// Rewrites the replica list of a blob, if its owner still references
    /// it; returns whether it did. Used by repair after a copy is durable.
    async fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool>;
    /// The blob as a job that has not ended pinned it, if one did.
    async fn pinned_blob(&self, blob_id: &str) -> Result<Option<BlobRef>>;
}

#[async_trait]
pub trait NodeStore: Send + Sync {
    async fn put_node(&self, rec: &NodeRecord) -> Result<()>;
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>>;
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>>;
    async fn set_node_draining(&self, id: &str, draining: bool) -> Result<bool>;
    /// Marks a node removed (a tombstone, so it cannot rejoin by heartbeat).
    async fn remove_node(&self, id: &str) -> Result<()>;
}

/// One atomic change to a job: its record, items added to its lists, and
/// the output objects it publishes, all applied together or not at all, so
/// an output is visible exactly when its task is recorded as done.
#[derive(Debug, Default)]
pub struct JobChange {
    pub(crate) writes: Vec<JobWrite>,
    pub(crate) objects: Vec<(BucketRecord, String, ObjectRecord)>,
    pub(crate) delete_objects: Vec<(String, String)>,
    /// The job's lease this change is made under: refused with `Fenced`
    /// unless the job's lease still has this owner and epoch.
    pub(crate) fence: Option<(String, String, u64)>,
    /// A new job's first lease: (owner, time to live in ms).
    pub(crate) new_lease: Option<(String, String, String, i64)>,
    /// The job has ended: its lease goes.
    pub(crate) release: Option<String>,
    /// (tenant, job): refused with `Conflict` unless that job exists and
    /// has not ended, checked atomically with the change.
    pub(crate) require_running: Option<(String, String)>,
}

/// The typed writes a job change can hold.
#[derive(Debug)]
pub(crate) enum JobWrite {
    Job(JobRecord),
    /// An input by sequence number; the catalog also remembers its name,
    /// so that `job_has_input` answers for it.
    Input(String, u64, InputRecord),
    FailedInput(String, u64, InputRecord),
    Task(String, u64, TaskRecord),
    /// A reducer, keyed by its phase and number.
    Reducer(String, TaskRecord),
    Piece(String, u32, u32, u64, PieceRecord),
    Output(String, u64, OutputRecord),
    Error(String, u64, ErrorRecord),
    /// A blob the job pins until its lease is released.
    Pin(String, BlobRef),
}

impl JobChange {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.objects.is_empty()
            && self.delete_objects.is_empty()
            && self.new_lease.is_none()
            && self.release.is_none()
    }
    /// Makes the change conditional on `owner` still holding the job's
    /// lease at `epoch` (the fencing token).
    pub fn fence(&mut self, job: &str, owner: &str, epoch: u64) {
        self.fence = Some((job.to_string(), owner.to_string(), epoch));
    }
    /// Gives a new job its first lease (epoch 1), owned by `owner` for
    /// `ttl_ms`.
    pub fn lease_new_job(&mut self, tenant: &str, job: &str, owner: &str, ttl_ms: i64) {
        self.new_lease = Some((tenant.into(), job.into(), owner.into(), ttl_ms));
    }
    /// Keeps a blob from garbage collection until the job's lease is
    /// released (its end): an input's version, read later whatever
    /// happens to its key.
    pub fn pin(&mut self, job: &str, blob: BlobRef) {
        self.writes.push(JobWrite::Pin(job.into(), blob));
    }
    /// Makes the change conditional on the job existing and not having
    /// ended: a pin made from outside the job's driver (a task's
    /// reference) can then never outlive the job's release.
    pub fn require_running(&mut self, tenant: &str, job: &str) {
        self.require_running = Some((tenant.to_string(), job.to_string()));
    }
    /// Ends the job's lease: nobody drives it any more. Its pins go too.
    pub fn release_lease(&mut self, job: &str) {
        self.release = Some(job.to_string());
    }
    /// Writes the job's record (creating the job, or replacing its state).
    pub fn put_job(&mut self, rec: &JobRecord) {
        self.writes.push(JobWrite::Job(rec.clone()));
    }
    pub fn add_input(&mut self, job: &str, seq: u64, rec: InputRecord) {
        self.writes.push(JobWrite::Input(job.into(), seq, rec));
    }
    pub fn add_failed_input(&mut self, job: &str, seq: u64, rec: InputRecord) {
        self.writes
            .push(JobWrite::FailedInput(job.into(), seq, rec));
    }
    /// Writes a map task under its sequence number.
    pub fn put_task(&mut self, job: &str, seq: u64, rec: TaskRecord) {
        self.writes.push(JobWrite::Task(job.into(), seq, rec));
    }
    /// Writes a reducer (a task with `reducer` set).
    pub fn put_reducer(&mut self, job: &str, rec: TaskRecord) {
        self.writes.push(JobWrite::Reducer(job.into(), rec));
    }
    pub fn add_piece(&mut self, job: &str, phase: u32, reducer: u32, seq: u64, rec: PieceRecord) {
        self.writes
            .push(JobWrite::Piece(job.into(), phase, reducer, seq, rec));
    }
    pub fn add_output(&mut self, job: &str, seq: u64, rec: OutputRecord) {
        self.writes.push(JobWrite::Output(job.into(), seq, rec));
    }
    pub fn add_error(&mut self, job: &str, seq: u64, rec: ErrorRecord) {
        self.writes.push(JobWrite::Error(job.into(), seq, rec));
    }
    /// Publishes an object into the very bucket record it was checked
    /// against; an older version's blob is queued for collection.
    pub fn put_object(&mut self, bucket: &BucketRecord, key: &str, rec: ObjectRecord) {
        self.objects.push((bucket.clone(), key.to_string(), rec));
    }
    /// Deletes an object if it exists.
    pub fn delete_object(&mut self, bucket: &str, key: &str) {
        self.delete_objects
            .push((bucket.to_string(), key.to_string()));
    }
    /// Appends another change, to commit both at once.
    pub fn merge(&mut self, other: JobChange) {
        self.writes.extend(other.writes);
        self.objects.extend(other.objects);
        self.delete_objects.extend(other.delete_objects);
        self.fence = self.fence.take().or(other.fence);
        self.new_lease = self.new_lease.take().or(other.new_lease);
        self.release = self.release.take().or(other.release);
        self.require_running = self.require_running.take().or(other.require_running);
    }
}

/// Which of a job's input lists to page through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputList {
    /// Every input added, in order.
    All,
    /// The inputs whose first-phase task failed.
    Failed,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>>;
    /// A tenant's jobs in id order after `after`, at most `limit`.
    async fn jobs(&self, tenant: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<JobRecord>>;
    /// Every tenant's jobs in (tenant, id) order after `after`.
    async fn all_jobs(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<JobRecord>>;
    /// Whether `input` (`bucket/key`) was already added to the job.
    async fn job_has_input(&self, job: &str, input: &str) -> Result<bool>;
    async fn job_inputs(
        &self,
        job: &str,
        list: InputList,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, InputRecord)>>;
    /// Map tasks in creation order after sequence number `after`.
    async fn job_tasks(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, TaskRecord)>>;
    async fn job_reducer(&self, job: &str, phase: u32, reducer: u32) -> Result<Option<TaskRecord>>;
    /// A reducer's input pieces in order after `after`.
    async fn job_pieces(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, PieceRecord)>>;
    async fn job_outputs(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutputRecord)>>;
    async fn job_errors(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, ErrorRecord)>>;
    /// Applies a job change atomically.
    async fn job_commit(&self, change: JobChange) -> Result<()>;
    /// Drops up to `max` of an ended job's pins, in one change; returns
    /// how many. A job with many inputs releases them in pages before
    /// the change that releases its lease (which drops any left).
    async fn release_pins(&self, job: &str, max: usize) -> Result<usize>;
}

/// Memoized tasks (`memoize`), per tenant, by fingerprint.
#[async_trait]
pub trait MemoStore: Send + Sync {
    async fn memo_get(&self, tenant: &str, fingerprint: &str) -> Result<Option<MemoRecord>>;
    /// Records (or replaces) an entry, then drops the tenant's oldest
    /// entries (by `created_ms`) past `cap`.
    async fn memo_put(
        &self,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
        cap: usize,
    ) -> Result<()>;
    /// Drops an entry (one whose outputs are gone); absent is fine. With
    /// `written_ms`, only the entry written then: one another gateway has
    /// written since stays.
    async fn memo_delete(
        &self,
        tenant: &str,
        fingerprint: &str,
        written_ms: Option<i64>,
    ) -> Result<()>;
    /// Drops every entry, of any tenant, that names `blob` among its
    /// outputs: called when the blob is collected (its object deleted or
    /// overwritten), so that entries follow their outputs. Returns how
    /// many went.
    async fn memo_forget_blob(&self, blob: &str) -> Result<usize>;
}

/// Every domain of the catalog, as one object a service holds.
pub trait Catalog:
    TenantStore
    + BucketStore
    + ObjectStore
    + MultipartStore
    + BlobIndex
    + NodeStore
    + JobStore
    + MemoStore
    + crate::control::ControlStore
    + Send
    + Sync
{
    /// The backend's name and location, for logs (`rocksdb:/path`).
    fn describe(&self) -> String;

    /// Memory the backend holds in this process, by kind (an embedded
    /// engine's caches and buffers), for the metrics; none for a server.
    fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
