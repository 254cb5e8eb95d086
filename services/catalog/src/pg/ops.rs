//! The catalog's domain operations on PostgreSQL. Every read-check-write
//! runs in one transaction (`in_tx!`), retried from the start when
//! PostgreSQL reports that a concurrent writer won; the derived indexes
//! (blob owners, GC queue) are written in the same transaction.
//!
//! Most run SERIALIZABLE. Object writes and bucket deletion, the hot and
//! contended path (many writers of different keys in one bucket, whose
//! reads of absent keys would make SERIALIZABLE abort each other), run
//! READ COMMITTED with explicit row locks instead: a writer holds the
//! bucket row `FOR SHARE` and the object row `FOR UPDATE`; a new key is a
//! plain INSERT, so a concurrent creator of the same key fails with a
//! unique violation and the whole write is retried; bucket deletion takes
//! the bucket row `FOR UPDATE` before it looks for objects and uploads.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{pg_err, pool_err, PgCatalog};
use crate::api::{ListQuery, ObjectPage, UploadPage, UploadQuery, WriteCondition};
use crate::listing::{increment, list_start, Listed, Lister, UploadLister};
use crate::records::*;
use crate::{now_ms, CatalogError, Result};

/// How often a transaction that lost to a concurrent writer is retried.
pub(super) const MAX_ATTEMPTS: u32 = 12;

/// Runs `$body` in a serializable transaction named `$tx` and commits it,
/// retrying the whole of it on a serialization conflict.
macro_rules! in_tx {
    ($self:expr, |$tx:ident| $body:block) => {
        in_tx!($self, Serializable, |$tx| $body)
    };
    ($self:expr, $level:ident, |$tx:ident| $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $self.pool.get().await.map_err(super::pool_err)?;
            let $tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::$level)
                .start()
                .await
                .map_err(super::pg_err)?;
            let result: crate::Result<_> = async { $body }.await;
            let result = match result {
                Ok(v) => $tx.commit().await.map_err(super::pg_err).map(|()| v),
                Err(e) => Err(e),
            };
            match result {
                Err(crate::CatalogError::Conflict(_)) if attempt < crate::pg::ops::MAX_ATTEMPTS => {
                    let ms = 2u64.pow(attempt.min(6)) + rand::random::<u64>() % 8;
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                other => break other,
            }
        }
    }};
}
pub(super) use in_tx;

type Param<'a> = &'a (dyn ToSql + Sync);

async fn one<R: Record, C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Option<R>> {
    match c.query_opt(sql, params).await.map_err(pg_err)? {
        Some(row) => Ok(Some(R::decode(row.get::<_, &[u8]>(0))?)),
        None => Ok(None),
    }
}

async fn many<R: Record, C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<R>> {
    c.query(sql, params)
        .await
        .map_err(pg_err)?
        .iter()
        .map(|row| R::decode(row.get::<_, &[u8]>(0)))
        .collect()
}

async fn exec<C: GenericClient + Sync>(c: &C, sql: &str, params: &[Param<'_>]) -> Result<u64> {
    c.execute(sql, params).await.map_err(pg_err)
}

/// Unreferences a blob: it leaves the owner index and joins the GC queue.
async fn queue_gc<C: GenericClient + Sync>(c: &C, blob: &BlobRef) -> Result<()> {
    // The database's clock, which every gateway's GC judges by.
    let queued_ms: i64 = c
        .query_one("SELECT insitu_now_ms()", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let rec = GcRecord {
        blob: blob.clone(),
        queued_ms,
    };
    exec(
        c,
        "INSERT INTO gc_queue (blob_id, rec) VALUES ($1, $2)
         ON CONFLICT (blob_id) DO UPDATE SET rec = EXCLUDED.rec",
        &[&blob.id, &rec.encode()],
    )
    .await?;
    exec(c, "DELETE FROM blob_owners WHERE blob_id = $1", &[&blob.id]).await?;
    Ok(())
}

async fn index_blob<C: GenericClient + Sync>(
    c: &C,
    blob: &BlobRef,
    owner: &BlobOwner,
) -> Result<()> {
    exec(
        c,
        "INSERT INTO blob_owners (blob_id, rec) VALUES ($1, $2)
         ON CONFLICT (blob_id) DO UPDATE SET rec = EXCLUDED.rec",
        &[&blob.id, &owner.encode()],
    )
    .await?;
    Ok(())
}

pub(super) async fn get_bucket<C: GenericClient + Sync>(
    c: &C,
    name: &str,
) -> Result<Option<BucketRecord>> {
    one(c, "SELECT rec FROM buckets WHERE name = $1", &[&name]).await
}

/// The bucket, held `FOR SHARE` until the transaction ends: it cannot be
/// deleted meanwhile (see the module notes).
async fn lock_bucket_shared<C: GenericClient + Sync>(
    c: &C,
    name: &str,
) -> Result<Option<BucketRecord>> {
    one(
        c,
        "SELECT rec FROM buckets WHERE name = $1 FOR SHARE",
        &[&name],
    )
    .await
}

/// The bucket, held `FOR UPDATE` until the transaction ends: a change of
/// its settings.
async fn lock_bucket<C: GenericClient + Sync>(c: &C, name: &str) -> Result<Option<BucketRecord>> {
    one(
        c,
        "SELECT rec FROM buckets WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
}

/// The object, held `FOR UPDATE` until the transaction ends.
async fn lock_object<C: GenericClient + Sync>(
    c: &C,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectRecord>> {
    one(
        c,
        "SELECT rec FROM objects WHERE bucket = $1 AND key = $2 FOR UPDATE",
        &[&bucket, &key.as_bytes()],
    )
    .await
}

pub(super) async fn get_object<C: GenericClient + Sync>(
    c: &C,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectRecord>> {
    one(
        c,
        "SELECT rec FROM objects WHERE bucket = $1 AND key = $2",
        &[&bucket, &key.as_bytes()],
    )
    .await
}

async fn get_upload<C: GenericClient + Sync>(
    c: &C,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Option<UploadRecord>> {
    one(
        c,
        "SELECT rec FROM uploads WHERE bucket = $1 AND key = $2 AND upload_id = $3",
        &[&bucket, &key.as_bytes(), &upload_id],
    )
    .await
}

async fn get_part<C: GenericClient + Sync>(
    c: &C,
    upload_id: &str,
    n: u32,
) -> Result<Option<PartRecord>> {
    one(
        c,
        "SELECT rec FROM parts WHERE upload_id = $1 AND part_number = $2",
        &[&upload_id, &(n as i32)],
    )
    .await
}

/// Writes `rec` under `bucket/key`, as the embedded backend's
/// `put_object_into`: only into the expected bucket, only if `cond` holds,
/// queueing the replaced blob.
pub(super) async fn put_object_into<C: GenericClient + Sync>(
    c: &C,
    bucket: &str,
    key: &str,
    rec: &ObjectRecord,
    expected: Option<&BucketRecord>,
    cond: &WriteCondition,
) -> Result<()> {
    let current = lock_bucket_shared(c, bucket).await?;
    if !crate::api::is_expected_bucket(current.as_ref(), expected) {
        return Err(CatalogError::NoSuchBucket(bucket.to_string()));
    }
    let existing = lock_object(c, bucket, key).await?;
    cond.check(key, existing.as_ref())?;
    if let Some(old) = &existing {
        if old.blob.id != rec.blob.id {
            queue_gc(c, &old.blob).await?;
        }
    }
    let owner = BlobOwner::Object {
        bucket: bucket.to_string(),
        key: key.to_string(),
    };
    index_blob(c, &rec.blob, &owner).await?;
    // A plain INSERT for a new key: a concurrent creator of the same key
    // makes it fail (unique violation), and the write is retried against
    // the object that won.
    let sql = if existing.is_some() {
        "UPDATE objects SET rec = $3 WHERE bucket = $1 AND key = $2"
    } else {
        "INSERT INTO objects (bucket, key, rec) VALUES ($1, $2, $3)"
    };
    exec(c, sql, &[&bucket, &key.as_bytes(), &rec.encode()]).await?;
    Ok(())
}

pub(super) async fn delete_object_in<C: GenericClient + Sync>(
    c: &C,
    bucket: &str,
    key: &str,
) -> Result<bool> {
    let Some(old) = lock_object(c, bucket, key).await? else {
        return Ok(false);
    };
    queue_gc(c, &old.blob).await?;
    exec(
        c,
        "DELETE FROM objects WHERE bucket = $1 AND key = $2",
        &[&bucket, &key.as_bytes()],
    )
    .await?;
    Ok(true)
}

async fn abort_into<C: GenericClient + Sync>(c: &C, upload_id: &str) -> Result<()> {
    let parts: Vec<PartRecord> = many(
        c,
        "SELECT rec FROM parts WHERE upload_id = $1",
        &[&upload_id],
    )
    .await?;
    for p in &parts {
        queue_gc(c, &p.blob).await?;
    }
    exec(c, "DELETE FROM parts WHERE upload_id = $1", &[&upload_id]).await?;
    Ok(())
}

async fn owned_blob<C: GenericClient + Sync>(
    c: &C,
    blob_id: &str,
) -> Result<Option<(BlobOwner, BlobRef)>> {
    let Some(owner) = one::<BlobOwner, _>(
        c,
        "SELECT rec FROM blob_owners WHERE blob_id = $1",
        &[&blob_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let blob = match &owner {
        BlobOwner::Object { bucket, key } => get_object(c, bucket, key).await?.map(|o| o.blob),
        BlobOwner::Part {
            upload_id,
            part_number,
            ..
        } => get_part(c, upload_id, *part_number).await?.map(|p| p.blob),
    };
    Ok(blob.filter(|b| b.id == blob_id).map(|b| (owner, b)))
}

impl PgCatalog {
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    pub(super) async fn read_one<R: Record>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<R>> {
        one(&self.client().await?, sql, params).await
    }

    pub(super) async fn read_many<R: Record>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<R>> {
        many(&self.client().await?, sql, params).await
    }

    pub(super) async fn write(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        exec(&self.client().await?, sql, params).await
    }

    // ---- tenants and keys ---------------------------------------------------

    pub(super) async fn create_tenant(&self, name: &str) -> Result<TenantRecord> {
        in_tx!(self, |tx| {
            if one::<TenantRecord, _>(&tx, "SELECT rec FROM tenants WHERE name = $1", &[&name])
                .await?
                .is_some()
            {
                return Err(CatalogError::TenantExists(name.to_string()));
            }
            let rec = TenantRecord {
                name: name.to_string(),
                created_ms: now_ms(),
                policy: TenantPolicy::default(),
            };
            exec(
                &tx,
                "INSERT INTO tenants (name, rec) VALUES ($1, $2)",
                &[&name, &rec.encode()],
            )
            .await?;
            Ok(rec)
        })
    }

    pub(super) async fn set_tenant_policy(
        &self,
        name: &str,
        policy: &TenantPolicy,
    ) -> Result<bool> {
        in_tx!(self, |tx| {
            let Some(mut rec) =
                one::<TenantRecord, _>(&tx, "SELECT rec FROM tenants WHERE name = $1", &[&name])
                    .await?
            else {
                return Ok(false);
            };
            rec.policy = policy.clone();
            exec(
                &tx,
                "UPDATE tenants SET rec = $2 WHERE name = $1",
                &[&name, &rec.encode()],
            )
            .await?;
            Ok(true)
        })
    }

    pub(super) async fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()> {
        in_tx!(self, |tx| {
            if one::<TenantRecord, _>(
                &tx,
                "SELECT rec FROM tenants WHERE name = $1",
                &[&rec.tenant],
            )
            .await?
            .is_none()
            {
                return Err(CatalogError::NoSuchTenant(rec.tenant.clone()));
            }
            let old: Option<AccessKeyRecord> = one(
                &tx,
                "SELECT rec FROM access_keys WHERE id = $1",
                &[&rec.access_key_id],
            )
            .await?;
            if let Some(old) = old {
                if old.secret_access_key == rec.secret_access_key && old.tenant == rec.tenant {
                    return Ok(());
                }
                return Err(CatalogError::KeyExists(rec.access_key_id.clone()));
            }
            exec(
                &tx,
                "INSERT INTO access_keys (id, tenant, rec) VALUES ($1, $2, $3)",
                &[&rec.access_key_id, &rec.tenant, &rec.encode()],
            )
            .await?;
            Ok(())
        })
    }

    // ---- buckets --------------------------------------------------------------

    pub(super) async fn create_bucket(
        &self,
        name: &str,
        owner: &str,
        acl: Acl,
    ) -> Result<BucketRecord> {
        in_tx!(self, |tx| {
            if let Some(existing) = get_bucket(&tx, name).await? {
                return Err(if existing.owner == owner {
                    CatalogError::BucketAlreadyOwnedByYou(name.to_string())
                } else {
                    CatalogError::BucketAlreadyExists(name.to_string())
                });
            }
            let rec = BucketRecord {
                name: name.to_string(),
                owner: owner.to_string(),
                created_ms: now_ms(),
                acl: acl.clone(),
                cors: None,
            };
            exec(
                &tx,
                "INSERT INTO buckets (name, owner, rec) VALUES ($1, $2, $3)",
                &[&name, &owner, &rec.encode()],
            )
            .await?;
            Ok(rec)
        })
    }

    pub(super) async fn update_bucket(
        &self,
        bucket: &BucketRecord,
        update: BucketUpdate,
    ) -> Result<()> {
        let name = bucket.name.as_str();
        in_tx!(self, |tx| {
            let current = lock_bucket(&tx, name).await?;
            let mut rec = current
                .filter(|c| crate::api::is_expected_bucket(Some(c), Some(bucket)))
                .ok_or_else(|| CatalogError::NoSuchBucket(name.to_string()))?;
            update.clone().apply(&mut rec);
            exec(
                &tx,
                "UPDATE buckets SET rec = $2 WHERE name = $1",
                &[&name, &rec.encode()],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn delete_bucket(&self, name: &str) -> Result<()> {
        // READ COMMITTED: each statement below sees what writers that held
        // the bucket row before this lock committed.
        in_tx!(self, ReadCommitted, |tx| {
            let locked = one::<BucketRecord, _>(
                &tx,
                "SELECT rec FROM buckets WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
            if locked.is_none() {
                return Err(CatalogError::NoSuchBucket(name.to_string()));
            }
            let any = tx
                .query_opt("SELECT 1 FROM objects WHERE bucket = $1 LIMIT 1", &[&name])
                .await
                .map_err(pg_err)?;
            if any.is_some() {
                return Err(CatalogError::BucketNotEmpty(name.to_string()));
            }
            let uploads: Vec<UploadRecord> =
                many(&tx, "SELECT rec FROM uploads WHERE bucket = $1", &[&name]).await?;
            for up in &uploads {
                abort_into(&tx, &up.upload_id).await?;
            }
            exec(&tx, "DELETE FROM uploads WHERE bucket = $1", &[&name]).await?;
            exec(&tx, "DELETE FROM buckets WHERE name = $1", &[&name]).await?;
            Ok(())
        })
    }

    // ---- objects ----------------------------------------------------------------

    pub(super) async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        expected: Option<&BucketRecord>,
        cond: &WriteCondition,
    ) -> Result<()> {
        in_tx!(self, ReadCommitted, |tx| {
            put_object_into(&tx, bucket, key, rec, expected, cond).await
        })
    }

    pub(super) async fn set_object_acl(
        &self,
        bucket: &BucketRecord,
        key: &str,
        blob_id: &str,
        acl: Acl,
    ) -> Result<bool> {
        in_tx!(self, |tx| {
            let current = lock_bucket_shared(&tx, &bucket.name).await?;
            if !crate::api::is_expected_bucket(current.as_ref(), Some(bucket)) {
                return Ok(false);
            }
            let Some(mut rec) = lock_object(&tx, &bucket.name, key).await? else {
                return Ok(false);
            };
            if rec.blob.id != blob_id {
                return Ok(false);
            }
            rec.acl = acl.clone();
            exec(
                &tx,
                "UPDATE objects SET rec = $3 WHERE bucket = $1 AND key = $2",
                &[&bucket.name, &key.as_bytes(), &rec.encode()],
            )
            .await?;
            Ok(true)
        })
    }

    pub(super) async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        in_tx!(self, ReadCommitted, |tx| {
            delete_object_in(&tx, bucket, key).await
        })
    }

    /// An index range scan from the listing's start, in batches, with a
    /// new scan after each common prefix.
    pub(super) async fn list_objects(&self, bucket: &str, q: &ListQuery) -> Result<ObjectPage> {
        let client = self.client().await?;
        let mut lister = Lister::new(q);
        let mut seek = list_start(q);
        let batch = (q.max as i64).clamp(1, 1000) + 1;
        'outer: loop {
            let rows = client
                .query(
                    "SELECT key, rec FROM objects WHERE bucket = $1 AND key >= $2
                     ORDER BY key LIMIT $3",
                    &[&bucket, &seek, &batch],
                )
                .await
                .map_err(pg_err)?;
            let full = rows.len() as i64 == batch;
            let mut last: Option<Vec<u8>> = None;
            for row in &rows {
                let key_bytes: &[u8] = row.get(0);
                last = Some(key_bytes.to_vec());
                let key = String::from_utf8(key_bytes.to_vec())
                    .map_err(|_| CatalogError::Corrupt("non-UTF-8 object key".into()))?;
                match lister.offer(key, ObjectRecord::decode(row.get::<_, &[u8]>(1))?) {
                    Listed::More => {}
                    Listed::Seek(next) => {
                        seek = next;
                        continue 'outer;
                    }
                    Listed::Done => break 'outer,
                }
            }
            match (full, last) {
                (true, Some(mut l)) => {
                    l.push(0);
                    seek = l;
                }
                _ => break,
            }
        }
        Ok(lister.finish())
    }

    // ---- multipart ----------------------------------------------------------------

    pub(super) async fn create_upload(&self, rec: &UploadRecord) -> Result<()> {
        in_tx!(self, |tx| {
            if lock_bucket_shared(&tx, &rec.bucket).await?.is_none() {
                return Err(CatalogError::NoSuchBucket(rec.bucket.clone()));
            }
            exec(
                &tx,
                "INSERT INTO uploads (bucket, key, upload_id, rec) VALUES ($1, $2, $3, $4)",
                &[
                    &rec.bucket,
                    &rec.key.as_bytes(),
                    &rec.upload_id,
                    &rec.encode(),
                ],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>> {
        get_upload(&self.client().await?, bucket, key, upload_id).await
    }

    pub(super) async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: &PartRecord,
    ) -> Result<()> {
        in_tx!(self, |tx| {
            // Held: an abort (or the bucket's deletion) waits, or this fails.
            let held = one::<UploadRecord, _>(
                &tx,
                "SELECT rec FROM uploads WHERE bucket = $1 AND key = $2 AND upload_id = $3
                 FOR SHARE",
                &[&bucket, &key.as_bytes(), &upload_id],
            )
            .await?;
            if held.is_none() {
                return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
            }
            if let Some(old) = get_part(&tx, upload_id, part.part_number).await? {
                queue_gc(&tx, &old.blob).await?;
            }
            let owner = BlobOwner::Part {
                bucket: bucket.to_string(),
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                part_number: part.part_number,
            };
            index_blob(&tx, &part.blob, &owner).await?;
            exec(
                &tx,
                "INSERT INTO parts (upload_id, part_number, rec) VALUES ($1, $2, $3)
                 ON CONFLICT (upload_id, part_number) DO UPDATE SET rec = EXCLUDED.rec",
                &[&upload_id, &(part.part_number as i32), &part.encode()],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn list_parts(
        &self,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(Vec<PartRecord>, bool)> {
        let limit = max as i64 + 1;
        let marker = i32::try_from(marker).unwrap_or(i32::MAX);
        let mut parts: Vec<PartRecord> = self
            .read_many(
                "SELECT rec FROM parts WHERE upload_id = $1 AND part_number > $2
                 ORDER BY part_number LIMIT $3",
                &[&upload_id, &marker, &limit],
            )
            .await?;
        let more = parts.len() > max;
        parts.truncate(max);
        Ok((parts, more))
    }

    pub(super) async fn finish_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        publish: Option<(&ObjectRecord, &WriteCondition)>,
    ) -> Result<()> {
        in_tx!(self, |tx| {
            if get_upload(&tx, bucket, key, upload_id).await?.is_none() {
                return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
            }
            if let Some((rec, cond)) = publish {
                put_object_into(&tx, bucket, key, rec, None, cond).await?;
            }
            abort_into(&tx, upload_id).await?;
            exec(
                &tx,
                "DELETE FROM uploads WHERE bucket = $1 AND key = $2 AND upload_id = $3",
                &[&bucket, &key.as_bytes(), &upload_id],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn list_uploads(&self, bucket: &str, q: &UploadQuery) -> Result<UploadPage> {
        let client = self.client().await?;
        let mut lister = UploadLister::new(q);
        let mut after: (Vec<u8>, String) = (q.prefix.as_bytes().to_vec(), String::new());
        let mut end = q.prefix.as_bytes().to_vec();
        increment(&mut end);
        loop {
            let rows = client
                .query(
                    "SELECT key, upload_id, rec FROM uploads
                     WHERE bucket = $1 AND (key, upload_id) > ($2, $3)
                       AND ($4::bytea = '' OR key < $4)
                     ORDER BY key, upload_id LIMIT 1000",
                    &[&bucket, &after.0, &after.1, &end],
                )
                .await
                .map_err(pg_err)?;
            let n = rows.len();
            for row in &rows {
                after = (row.get::<_, Vec<u8>>(0), row.get::<_, String>(1));
                if !lister.offer(UploadRecord::decode(row.get::<_, &[u8]>(2))?) {
                    return Ok(lister.finish());
                }
            }
            if n < 1000 {
                return Ok(lister.finish());
            }
        }
    }

    // ---- blob index ------------------------------------------------------------------

    pub(super) async fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>> {
        owned_blob(&self.client().await?, blob_id).await
    }

    pub(super) async fn scan_blobs(
        &self,
        after: &str,
        max: usize,
    ) -> Result<Vec<(BlobOwner, BlobRef)>> {
        let client = self.client().await?;
        let mut cursor = after.to_string();
        let mut out = Vec::new();
        let batch = (max as i64).clamp(1, 1000);
        loop {
            let rows = client
                .query(
                    "SELECT blob_id FROM blob_owners WHERE blob_id > $1 ORDER BY blob_id LIMIT $2",
                    &[&cursor, &batch],
                )
                .await
                .map_err(pg_err)?;
            for row in &rows {
                cursor = row.get(0);
                if let Some(found) = owned_blob(&client, &cursor).await? {
                    out.push(found);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
            if (rows.len() as i64) < batch {
                return Ok(out);
            }
        }
    }

    pub(super) async fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool> {
        in_tx!(self, |tx| {
            let Some((owner, _)) = owned_blob(&tx, blob_id).await? else {
                return Ok(false);
            };
            match owner {
                BlobOwner::Object { bucket, key } => {
                    let Some(mut rec) = get_object(&tx, &bucket, &key).await? else {
                        return Ok(false);
                    };
                    rec.blob.replicas = replicas.to_vec();
                    exec(
                        &tx,
                        "UPDATE objects SET rec = $3 WHERE bucket = $1 AND key = $2",
                        &[&bucket, &key.as_bytes(), &rec.encode()],
                    )
                    .await?;
                }
                BlobOwner::Part {
                    bucket,
                    key,
                    upload_id,
                    part_number,
                } => {
                    let Some(mut rec) = get_part(&tx, &upload_id, part_number).await? else {
                        return Ok(false);
                    };
                    let old = rec.blob.replicas.clone();
                    rec.blob.replicas = replicas.to_vec();
                    exec(
                        &tx,
                        "UPDATE parts SET rec = $3 WHERE upload_id = $1 AND part_number = $2",
                        &[&upload_id, &(part_number as i32), &rec.encode()],
                    )
                    .await?;
                    // Later parts go where the earlier ones now are.
                    if let Some(mut up) = get_upload(&tx, &bucket, &key, &upload_id).await? {
                        if up.nodes == old {
                            up.nodes = replicas.to_vec();
                            exec(
                                &tx,
                                "UPDATE uploads SET rec = $4
                                 WHERE bucket = $1 AND key = $2 AND upload_id = $3",
                                &[&bucket, &key.as_bytes(), &upload_id, &up.encode()],
                            )
                            .await?;
                        }
                    }
                }
            }
            Ok(true)
        })
    }

    // ---- nodes -------------------------------------------------------------------------

    pub(super) async fn update_node(
        &self,
        id: &str,
        change: impl Fn(&mut NodeRecord) + Send + Sync,
    ) -> Result<bool> {
        in_tx!(self, |tx| {
            let Some(mut rec) =
                one::<NodeRecord, _>(&tx, "SELECT rec FROM nodes WHERE id = $1", &[&id]).await?
            else {
                return Ok(false);
            };
            change(&mut rec);
            exec(
                &tx,
                "UPDATE nodes SET rec = $2 WHERE id = $1",
                &[&id, &rec.encode()],
            )
            .await?;
            Ok(true)
        })
    }
}
