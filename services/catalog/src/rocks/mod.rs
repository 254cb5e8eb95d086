//! The embedded backend: one rocksdb in the gateway's data directory, for
//! `insitu dev` and a single gateway. Every call runs its rocksdb work
//! (reads, and synced writes that wait on an fsync) on tokio's blocking
//! pool, never on an async worker, with one exception: a point read of a
//! tenant, an access key or a bucket that rocksdb can answer from memory
//! (a few microseconds, no I/O) is answered on the calling task. Every S3
//! request makes two of those, and each trip to the blocking pool costs
//! two thread wake-ups. Objects are not read this way: a catalog of many
//! objects mostly misses its cache, and a miss would then cost the lookup
//! twice (measured with `catalogscale`).

mod control;
mod core;
mod jobs;
mod memo;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use insitu_job_model::records::{
    ErrorRecord, InputRecord, JobRecord, MemoRecord, OutputRecord, PieceRecord, TaskRecord,
};

use self::core::{RocksCore, CF_BUCKETS, CF_KEYS, CF_TENANTS};
use self::jobs::ItemKind;
use crate::api::*;
use crate::records::*;
use crate::{CatalogError, Result};

pub struct RocksCatalog {
    core: Arc<RocksCore>,
    path: PathBuf,
    control: control::Control,
}

impl RocksCatalog {
    /// Opens (or creates) the catalog at `path`. Blocking: call it before
    /// serving, or from a blocking context.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            core: Arc::new(RocksCore::open(path)?),
            path: path.to_path_buf(),
            control: Default::default(),
        })
    }

    /// A point read: from memory on the calling task when rocksdb has the
    /// answer there, else on the blocking pool.
    async fn point<R: Record + Send + 'static>(
        &self,
        cf: &'static str,
        key: Vec<u8>,
    ) -> Result<Option<R>> {
        if let Some(hit) = self.core.get_cached(cf, &key)? {
            return Ok(hit);
        }
        self.run(move |c| c.get(cf, &key)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RocksCore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| CatalogError::Db(format!("catalog worker: {e}")))?
    }
}

/// Runs a core call on the blocking pool, with the named arguments turned
/// into owned values first.
macro_rules! blocking {
    ($self:ident, $method:ident($($arg:ident),*)) => {{
        $(let $arg = $arg.to_owned();)*
        $self.run(move |c| c.$method($(&$arg),*)).await
    }};
}

#[async_trait]
impl TenantStore for RocksCatalog {
    async fn create_tenant(&self, name: &str) -> Result<TenantRecord> {
        blocking!(self, create_tenant(name))
    }
    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.point(CF_TENANTS, name.as_bytes().to_vec()).await
    }
    async fn set_tenant_policy(&self, name: &str, policy: &TenantPolicy) -> Result<bool> {
        blocking!(self, set_tenant_policy(name, policy))
    }
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.run(|c| c.list_tenants()).await
    }
    async fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()> {
        blocking!(self, put_access_key(rec))
    }
    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRecord>> {
        self.point(CF_KEYS, id.as_bytes().to_vec()).await
    }
}

#[async_trait]
impl BucketStore for RocksCatalog {
    async fn create_bucket(&self, name: &str, owner: &str, acl: Acl) -> Result<BucketRecord> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.run(move |c| c.create_bucket(&name, &owner, acl)).await
    }
    async fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        self.point(CF_BUCKETS, name.as_bytes().to_vec()).await
    }
    async fn update_bucket(&self, bucket: &BucketRecord, update: BucketUpdate) -> Result<()> {
        let bucket = bucket.clone();
        self.run(move |c| c.update_bucket(&bucket, update)).await
    }
    async fn delete_bucket(&self, name: &str) -> Result<()> {
        blocking!(self, delete_bucket(name))
    }
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketRecord>> {
        blocking!(self, list_buckets(owner))
    }
}

#[async_trait]
impl ObjectStore for RocksCatalog {
    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>> {
        blocking!(self, get_object(bucket, key))
    }
    async fn put_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> Result<()> {
        blocking!(self, put_object(bucket, key, rec))
    }
    async fn put_object_checked(
        &self,
        bucket: &BucketRecord,
        key: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        blocking!(self, put_object_checked(bucket, key, rec, cond))
    }
    async fn set_object_acl(
        &self,
        bucket: &BucketRecord,
        key: &str,
        blob_id: &str,
        acl: Acl,
    ) -> Result<bool> {
        let (bucket, key, blob_id) = (bucket.clone(), key.to_owned(), blob_id.to_owned());
        self.run(move |c| c.set_object_acl(&bucket, &key, &blob_id, acl))
            .await
    }
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        blocking!(self, delete_object(bucket, key))
    }
    async fn list_objects(&self, bucket: &str, q: &ListQuery) -> Result<ObjectPage> {
        blocking!(self, list_objects(bucket, q))
    }
}

#[async_trait]
impl MultipartStore for RocksCatalog {
    async fn create_upload(&self, rec: &UploadRecord) -> Result<()> {
        blocking!(self, create_upload(rec))
    }
    async fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>> {
        blocking!(self, get_upload(bucket, key, upload_id))
    }
    async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: &PartRecord,
    ) -> Result<()> {
        blocking!(self, put_part(bucket, key, upload_id, part))
    }
    async fn list_parts(
        &self,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(Vec<PartRecord>, bool)> {
        let upload_id = upload_id.to_owned();
        self.run(move |c| c.list_parts(&upload_id, marker, max))
            .await
    }
    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        blocking!(self, abort_upload(bucket, key, upload_id))
    }
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        blocking!(self, complete_upload(bucket, key, upload_id, rec, cond))
    }
    async fn list_uploads(&self, bucket: &str, q: &UploadQuery) -> Result<UploadPage> {
        blocking!(self, list_uploads(bucket, q))
    }
}

#[async_trait]
impl BlobIndex for RocksCatalog {
    async fn list_gc_after(&self, after: &str, max: usize) -> Result<Vec<GcRecord>> {
        let after = after.to_owned();
        self.run(move |c| c.list_gc_after(&after, max)).await
    }
    async fn remove_gc(&self, blob_id: &str) -> Result<()> {
        blocking!(self, remove_gc(blob_id))
    }
    async fn queued_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        blocking!(self, queued_blob(blob_id))
    }
    async fn is_gc_queued(&self, blob_id: &str) -> Result<bool> {
        blocking!(self, is_gc_queued(blob_id))
    }
    async fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>> {
        blocking!(self, owned_blob(blob_id))
    }
    async fn scan_blobs(&self, after: &str, max: usize) -> Result<Vec<(BlobOwner, BlobRef)>> {
        let after = after.to_owned();
        self.run(move |c| c.scan_blobs(&after, max)).await
    }
    async fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool> {
        blocking!(self, set_replicas(blob_id, replicas))
    }
    async fn pinned_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        blocking!(self, pinned_blob(blob_id))
    }
}

#[async_trait]
impl MemoStore for RocksCatalog {
    async fn memo_get(&self, tenant: &str, fingerprint: &str) -> Result<Option<MemoRecord>> {
        blocking!(self, memo_get(tenant, fingerprint))
    }
    async fn memo_put(
        &self,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
        cap: usize,
    ) -> Result<()> {
        let (tenant, fingerprint, rec) = (tenant.to_owned(), fingerprint.to_owned(), rec.clone());
        self.run(move |c| c.memo_put(&tenant, &fingerprint, &rec, cap))
            .await
    }
    async fn memo_delete(
        &self,
        tenant: &str,
        fingerprint: &str,
        written_ms: Option<i64>,
    ) -> Result<()> {
        let (tenant, fingerprint) = (tenant.to_owned(), fingerprint.to_owned());
        self.run(move |c| c.memo_delete(&tenant, &fingerprint, written_ms))
            .await
    }
    async fn memo_forget_blob(&self, blob: &str) -> Result<usize> {
        blocking!(self, memo_forget_blob(blob))
    }
}

#[async_trait]
impl NodeStore for RocksCatalog {
    async fn put_node(&self, rec: &NodeRecord) -> Result<()> {
        blocking!(self, put_node(rec))
    }
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        blocking!(self, get_node(id))
    }
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        self.run(|c| c.list_nodes()).await
    }
    async fn set_node_draining(&self, id: &str, draining: bool) -> Result<bool> {
        let id = id.to_owned();
        self.run(move |c| c.set_node_draining(&id, draining)).await
    }
    async fn remove_node(&self, id: &str) -> Result<()> {
        blocking!(self, remove_node(id))
    }
}

#[async_trait]
impl JobStore for RocksCatalog {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>> {
        blocking!(self, job(tenant, id))
    }
    async fn jobs(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let tenant = tenant.to_owned();
        let after = after.map(str::to_owned);
        self.run(move |c| {
            let after = after.as_deref().map(|a| (tenant.as_str(), a));
            c.jobs(Some(&tenant), after, limit)
        })
        .await
    }
    async fn all_jobs(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<JobRecord>> {
        let after = after.map(|(t, j)| (t.to_owned(), j.to_owned()));
        self.run(move |c| {
            let after = after.as_ref().map(|(t, j)| (t.as_str(), j.as_str()));
            c.jobs(None, after, limit)
        })
        .await
    }
    async fn job_has_input(&self, job: &str, input: &str) -> Result<bool> {
        blocking!(self, job_has_input(job, input))
    }
    async fn job_inputs(
        &self,
        job: &str,
        list: InputList,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, InputRecord)>> {
        let kind = match list {
            InputList::All => ItemKind::Input,
            InputList::Failed => ItemKind::FailedInput,
        };
        let job = job.to_owned();
        self.run(move |c| c.job_list(&job, kind, after, limit))
            .await
    }
    async fn job_tasks(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, TaskRecord)>> {
        let job = job.to_owned();
        self.run(move |c| c.job_list(&job, ItemKind::Task, after, limit))
            .await
    }
    async fn job_reducer(&self, job: &str, phase: u32, reducer: u32) -> Result<Option<TaskRecord>> {
        let job = job.to_owned();
        self.run(move |c| c.job_reducer(&job, phase, reducer)).await
    }
    async fn job_pieces(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, PieceRecord)>> {
        let job = job.to_owned();
        self.run(move |c| c.job_pieces(&job, phase, reducer, after, limit))
            .await
    }
    async fn job_outputs(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutputRecord)>> {
        let job = job.to_owned();
        self.run(move |c| c.job_list(&job, ItemKind::Output, after, limit))
            .await
    }
    async fn job_errors(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, ErrorRecord)>> {
        let job = job.to_owned();
        self.run(move |c| c.job_list(&job, ItemKind::Error, after, limit))
            .await
    }
    async fn release_pins(&self, job: &str, max: usize) -> Result<usize> {
        let job = job.to_owned();
        self.run(move |c| c.release_pins(&job, max)).await
    }
    async fn job_commit(&self, change: JobChange) -> Result<()> {
        self.control.check(&change)?;
        let leases = JobChange {
            new_lease: change.new_lease.clone(),
            release: change.release.clone(),
            ..Default::default()
        };
        self.run(move |c| c.job_commit(change)).await?;
        self.control.applied(&leases)
    }
}

impl Catalog for RocksCatalog {
    fn describe(&self) -> String {
        format!("rocksdb:{}", self.path.display())
    }

    fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        self.core.memory_usage()
    }
}
