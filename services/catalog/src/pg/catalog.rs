//! `PgCatalog` as the catalog's domain traits.

use async_trait::async_trait;
use insitu_job_model::records::{
    ErrorRecord, InputRecord, JobRecord, MemoRecord, OutputRecord, PieceRecord, TaskRecord,
};

use super::jobs::{ERROR, FAILED_INPUT, INPUT, OUTPUT, PIECE, TASK};
use super::PgCatalog;
use crate::api::*;
use crate::records::*;
use crate::Result;

#[async_trait]
impl TenantStore for PgCatalog {
    async fn create_tenant(&self, name: &str) -> Result<TenantRecord> {
        PgCatalog::create_tenant(self, name).await
    }
    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.read_one("SELECT rec FROM tenants WHERE name = $1", &[&name])
            .await
    }
    async fn set_tenant_policy(&self, name: &str, policy: &TenantPolicy) -> Result<bool> {
        PgCatalog::set_tenant_policy(self, name, policy).await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.read_many("SELECT rec FROM tenants ORDER BY name", &[])
            .await
    }
    async fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()> {
        PgCatalog::put_access_key(self, rec).await
    }
    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRecord>> {
        self.read_one("SELECT rec FROM access_keys WHERE id = $1", &[&id])
            .await
    }
}

#[async_trait]
impl BucketStore for PgCatalog {
    async fn create_bucket(&self, name: &str, owner: &str, acl: Acl) -> Result<BucketRecord> {
        PgCatalog::create_bucket(self, name, owner, acl).await
    }
    async fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        self.read_one("SELECT rec FROM buckets WHERE name = $1", &[&name])
            .await
    }
    async fn update_bucket(&self, bucket: &BucketRecord, update: BucketUpdate) -> Result<()> {
        PgCatalog::update_bucket(self, bucket, update).await
    }
    async fn delete_bucket(&self, name: &str) -> Result<()> {
        PgCatalog::delete_bucket(self, name).await
    }
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketRecord>> {
        self.read_many(
            "SELECT rec FROM buckets WHERE owner = $1 ORDER BY name",
            &[&owner],
        )
        .await
    }
}

#[async_trait]
impl ObjectStore for PgCatalog {
    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>> {
        self.read_one(
            "SELECT rec FROM objects WHERE bucket = $1 AND key = $2",
            &[&bucket, &key.as_bytes()],
        )
        .await
    }
    async fn put_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> Result<()> {
        PgCatalog::put_object(self, bucket, key, rec, None, &WriteCondition::None).await
    }
    async fn put_object_checked(
        &self,
        bucket: &BucketRecord,
        key: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        PgCatalog::put_object(self, &bucket.name, key, rec, Some(bucket), cond).await
    }
    async fn set_object_acl(
        &self,
        bucket: &BucketRecord,
        key: &str,
        blob_id: &str,
        acl: Acl,
    ) -> Result<bool> {
        PgCatalog::set_object_acl(self, bucket, key, blob_id, acl).await
    }
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        PgCatalog::delete_object(self, bucket, key).await
    }
    async fn list_objects(&self, bucket: &str, q: &ListQuery) -> Result<ObjectPage> {
        PgCatalog::list_objects(self, bucket, q).await
    }
}

#[async_trait]
impl MultipartStore for PgCatalog {
    async fn create_upload(&self, rec: &UploadRecord) -> Result<()> {
        PgCatalog::create_upload(self, rec).await
    }
    async fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>> {
        PgCatalog::get_upload(self, bucket, key, upload_id).await
    }
    async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: &PartRecord,
    ) -> Result<()> {
        PgCatalog::put_part(self, bucket, key, upload_id, part).await
    }
    async fn list_parts(
        &self,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(Vec<PartRecord>, bool)> {
        PgCatalog::list_parts(self, upload_id, marker, max).await
    }
    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.finish_upload(bucket, key, upload_id, None).await
    }
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        self.finish_upload(bucket, key, upload_id, Some((rec, cond)))
            .await
    }
    async fn list_uploads(&self, bucket: &str, q: &UploadQuery) -> Result<UploadPage> {
        PgCatalog::list_uploads(self, bucket, q).await
    }
}

#[async_trait]
impl BlobIndex for PgCatalog {
    async fn list_gc_after(&self, after: &str, max: usize) -> Result<Vec<GcRecord>> {
        let max = max as i64;
        self.read_many(
            "SELECT rec FROM gc_queue WHERE blob_id > $1 ORDER BY blob_id LIMIT $2",
            &[&after, &max],
        )
        .await
    }
    async fn remove_gc(&self, blob_id: &str) -> Result<()> {
        self.write("DELETE FROM gc_queue WHERE blob_id = $1", &[&blob_id])
            .await
            .map(|_| ())
    }
    async fn pinned_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        let found: Option<PinRecord> = self
            .read_one(
                "SELECT rec FROM job_pins WHERE blob_id = $1 LIMIT 1",
                &[&blob_id],
            )
            .await?;
        Ok(found.map(|p| p.blob))
    }
    async fn queued_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        let found: Option<GcRecord> = self
            .read_one("SELECT rec FROM gc_queue WHERE blob_id = $1", &[&blob_id])
            .await?;
        Ok(found.map(|r| r.blob))
    }
    async fn is_gc_queued(&self, blob_id: &str) -> Result<bool> {
        let found: Option<GcRecord> = self
            .read_one("SELECT rec FROM gc_queue WHERE blob_id = $1", &[&blob_id])
            .await?;
        Ok(found.is_some())
    }
    async fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>> {
        PgCatalog::owned_blob(self, blob_id).await
    }
    async fn scan_blobs(&self, after: &str, max: usize) -> Result<Vec<(BlobOwner, BlobRef)>> {
        PgCatalog::scan_blobs(self, after, max).await
    }
    async fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool> {
        PgCatalog::set_replicas(self, blob_id, replicas).await
    }
}

#[async_trait]
impl NodeStore for PgCatalog {
    async fn put_node(&self, rec: &NodeRecord) -> Result<()> {
        self.write(
            "INSERT INTO nodes (id, rec) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET rec = EXCLUDED.rec",
            &[&rec.id, &rec.encode()],
        )
        .await
        .map(|_| ())
    }
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        self.read_one("SELECT rec FROM nodes WHERE id = $1", &[&id])
            .await
    }
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        self.read_many("SELECT rec FROM nodes ORDER BY id", &[])
            .await
    }
    async fn set_node_draining(&self, id: &str, draining: bool) -> Result<bool> {
        self.update_node(id, |n| n.draining = draining).await
    }
    async fn remove_node(&self, id: &str) -> Result<()> {
        self.update_node(id, |n| n.removed = true).await.map(|_| ())
    }
}

#[async_trait]
impl JobStore for PgCatalog {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>> {
        self.read_one(
            "SELECT rec FROM jobs WHERE tenant = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await
    }
    async fn jobs(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        self.jobs_after(Some(tenant), after.map(|a| (tenant, a)), limit)
            .await
    }
    async fn all_jobs(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<JobRecord>> {
        self.jobs_after(None, after, limit).await
    }
    async fn job_has_input(&self, job: &str, input: &str) -> Result<bool> {
        let client = self.pool.get().await.map_err(super::pool_err)?;
        let row = client
            .query_opt(
                "SELECT 1 FROM job_inputs_seen WHERE job = $1 AND input = $2",
                &[&job, &input.as_bytes()],
            )
            .await
            .map_err(super::pg_err)?;
        Ok(row.is_some())
    }
    async fn job_inputs(
        &self,
        job: &str,
        list: InputList,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, InputRecord)>> {
        let kind = match list {
            InputList::All => INPUT,
            InputList::Failed => FAILED_INPUT,
        };
        self.job_list(job, kind, Vec::new(), after, limit).await
    }
    async fn job_tasks(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, TaskRecord)>> {
        self.job_list(job, TASK, Vec::new(), after, limit).await
    }
    async fn job_reducer(&self, job: &str, phase: u32, reducer: u32) -> Result<Option<TaskRecord>> {
        PgCatalog::job_reducer(self, job, phase, reducer).await
    }
    async fn job_pieces(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, PieceRecord)>> {
        let prefix = PgCatalog::piece_prefix(phase, reducer);
        self.job_list(job, PIECE, prefix, after, limit).await
    }
    async fn job_outputs(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutputRecord)>> {
        self.job_list(job, OUTPUT, Vec::new(), after, limit).await
    }
    async fn job_errors(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, ErrorRecord)>> {
        self.job_list(job, ERROR, Vec::new(), after, limit).await
    }
    async fn release_pins(&self, job: &str, max: usize) -> Result<usize> {
        PgCatalog::release_pins(self, job, max).await
    }
    async fn job_commit(&self, change: JobChange) -> Result<()> {
        PgCatalog::job_commit(self, change).await
    }
}

#[async_trait]
impl MemoStore for PgCatalog {
    async fn memo_get(&self, tenant: &str, fingerprint: &str) -> Result<Option<MemoRecord>> {
        PgCatalog::memo_get(self, tenant, fingerprint).await
    }
    async fn memo_put(
        &self,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
        cap: usize,
    ) -> Result<()> {
        PgCatalog::memo_put(self, tenant, fingerprint, rec, cap).await
    }
    async fn memo_delete(
        &self,
        tenant: &str,
        fingerprint: &str,
        written_ms: Option<i64>,
    ) -> Result<()> {
        PgCatalog::memo_delete(self, tenant, fingerprint, written_ms).await
    }
    async fn memo_forget_blob(&self, blob: &str) -> Result<usize> {
        PgCatalog::memo_forget_blob(self, blob).await
    }
}

impl Catalog for PgCatalog {
    fn describe(&self) -> String {
        PgCatalog::describe(self)
    }
}
