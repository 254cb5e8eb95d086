//! The embedded backend's synchronous core: rocksdb column families, raw
//! keys and `WriteBatch`es. Each mutating call is one atomic, synced batch,
//! so a crash leaves either the old state or the new one, never a mix.
//! Read-modify-write calls are serialised by one mutex: an embedded catalog
//! has exactly one process writing it.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, ReadTier, WriteBatch,
    WriteOptions, DB,
};

use crate::api::{ListQuery, ObjectPage, UploadPage, UploadQuery, WriteCondition};
use crate::listing::{list_start, Listed, Lister, UploadLister};
use crate::records::*;
use crate::{now_ms, CatalogError, Result};

pub(super) const CF_TENANTS: &str = "tenants";
pub(super) const CF_KEYS: &str = "access_keys";
pub(super) const CF_BUCKETS: &str = "buckets";
pub(super) const CF_OBJECTS: &str = "objects";
pub(super) const CF_UPLOADS: &str = "uploads";
pub(super) const CF_PARTS: &str = "parts";
pub(super) const CF_GC: &str = "gc";
pub(super) const CF_NODES: &str = "nodes";
pub(super) const CF_BLOB_OWNERS: &str = "blob_owners";
/// Jobs, keyed `tenant \0 job_id`.
pub(super) const CF_JOBS: &str = "jobs";
/// A job's inputs, tasks, outputs and errors, keyed `job_id \0 kind \0 ...`
/// (see `jobs.rs`).
pub(super) const CF_JOB_ITEMS: &str = "job_items";
/// Blobs pinned by jobs, keyed `blob_id \0 job_id` (a job's own index of
/// them is in `CF_JOB_ITEMS`).
pub(super) const CF_PINS: &str = "pins";
/// Memoized tasks (see `memo.rs`).
pub(super) const CF_MEMO: &str = "memo";
pub(super) const CF_MEMO_AGE: &str = "memo_age";
pub(super) const CF_MEMO_BLOB: &str = "memo_blob";
const ALL_CFS: [&str; 15] = [
    CF_JOBS,
    CF_PINS,
    CF_MEMO,
    CF_MEMO_AGE,
    CF_MEMO_BLOB,
    CF_JOB_ITEMS,
    CF_BLOB_OWNERS,
    CF_TENANTS,
    CF_KEYS,
    CF_BUCKETS,
    CF_OBJECTS,
    CF_UPLOADS,
    CF_PARTS,
    CF_GC,
    CF_NODES,
];

/// A raw rocksdb entry.
pub(super) type KeyValue = (Box<[u8]>, Box<[u8]>);

pub(super) fn db_err(e: rocksdb::Error) -> CatalogError {
    CatalogError::Db(e.to_string())
}

/// `bucket \0 key`: bucket names never contain NUL, so the split is unique and
/// the order is bucket first, then the key's UTF-8 bytes, as S3 lists them.
pub(super) fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `bucket \0 key \0 upload_id`.
pub(super) fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}

/// `upload_id \0 part_number(u32 big-endian)`, so parts sort numerically.
pub(super) fn part_key(upload_id: &str, part_number: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(upload_id.len() + 5);
    k.extend_from_slice(upload_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&part_number.to_be_bytes());
    k
}

/// What the embedded catalog's memtables may hold, all together.
const MEMTABLE_BYTES: usize = 32 << 20;
/// The embedded catalog's block cache, index and filter blocks included.
const BLOCK_CACHE_BYTES: usize = 32 << 20;

pub(super) struct RocksCore {
    pub(super) db: DB,
    cache: rocksdb::Cache,
    write_lock: Mutex<()>,
}

impl RocksCore {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Memtables of all column families together stay within
        // MEMTABLE_BYTES (by default each of them could take 2 x 64 MiB):
        // the gateway's memory does not grow with the number of writes.
        opts.set_db_write_buffer_size(MEMTABLE_BYTES);
        // One block cache for every column family, holding the index and
        // filter blocks too (by default those sit outside any cache and
        // grow with the files on disk).
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(MEMTABLE_BYTES / 4);
            o.set_block_based_table_factory(&table);
            o
        };
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(db_err)?;
        Ok(Self {
            db,
            cache,
            write_lock: Mutex::new(()),
        })
    }

    /// What rocksdb holds in memory: the shared block cache (index and
    /// filter blocks included), every memtable, and the table readers
    /// outside the cache.
    pub(super) fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        let mut memtables = 0;
        let mut readers = 0;
        for name in ALL_CFS {
            let Ok(cf) = self.cf(name) else { continue };
            let int = |p: &str| self.db.property_int_value_cf(cf, p).ok().flatten();
            memtables += int("rocksdb.size-all-mem-tables").unwrap_or(0);
            readers += int("rocksdb.estimate-table-readers-mem").unwrap_or(0);
        }
        vec![
            ("block_cache", self.cache.get_usage() as u64),
            ("memtables", memtables),
            ("table_readers", readers),
        ]
    }

    pub(super) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| CatalogError::Corrupt(format!("missing column family {name}")))
    }

    pub(super) fn get<R: Record>(&self, cf: &str, key: &[u8]) -> Result<Option<R>> {
        match self.db.get_cf(self.cf(cf)?, key).map_err(db_err)? {
            Some(bytes) => Ok(Some(R::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// `get`, answered from memory only (the memtables and the block
    /// cache): `None` when the answer would need a read from disk.
    pub(super) fn get_cached<R: Record>(&self, cf: &str, key: &[u8]) -> Result<Option<Option<R>>> {
        let mut ro = ReadOptions::default();
        ro.set_read_tier(ReadTier::BlockCache);
        match self.db.get_cf_opt(self.cf(cf)?, key, &ro) {
            Ok(Some(bytes)) => Ok(Some(Some(R::decode(&bytes)?))),
            Ok(None) => Ok(Some(None)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Every commit is synced: an acknowledged write survives power loss.
    pub(super) fn commit(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(db_err)?;
        Ok(())
    }

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.write_lock
            .lock()
            .map_err(|_| CatalogError::Db("catalog lock poisoned".into()))
    }

    /// Unreferences a blob: it leaves the owner index and joins the GC queue
    /// in the same batch.
    pub(super) fn queue_gc(&self, batch: &mut WriteBatch, blob: &BlobRef) -> Result<()> {
        let rec = GcRecord {
            blob: blob.clone(),
            queued_ms: now_ms(),
        };
        batch.put_cf(self.cf(CF_GC)?, blob.id.as_bytes(), rec.encode());
        batch.delete_cf(self.cf(CF_BLOB_OWNERS)?, blob.id.as_bytes());
        Ok(())
    }

    fn index_blob(&self, batch: &mut WriteBatch, blob: &BlobRef, owner: &BlobOwner) -> Result<()> {
        batch.put_cf(self.cf(CF_BLOB_OWNERS)?, blob.id.as_bytes(), owner.encode());
        Ok(())
    }

    // ---- tenants and keys -------------------------------------------------

    pub(super) fn create_tenant(&self, name: &str) -> Result<TenantRecord> {
        let _g = self.lock()?;
        if self
            .get::<TenantRecord>(CF_TENANTS, name.as_bytes())?
            .is_some()
        {
            return Err(CatalogError::TenantExists(name.to_string()));
        }
        let rec = TenantRecord {
            name: name.to_string(),
            created_ms: now_ms(),
            policy: TenantPolicy::default(),
        };
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_TENANTS)?, name.as_bytes(), rec.encode());
        self.commit(b)?;
        Ok(rec)
    }

    /// Replaces a tenant's policy; false if there is no such tenant.
    pub(super) fn set_tenant_policy(&self, name: &str, policy: &TenantPolicy) -> Result<bool> {
        let _g = self.lock()?;
        let Some(mut rec) = self.get::<TenantRecord>(CF_TENANTS, name.as_bytes())? else {
            return Ok(false);
        };
        rec.policy = policy.clone();
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_TENANTS)?, name.as_bytes(), rec.encode());
        self.commit(b)?;
        Ok(true)
    }

    pub(super) fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.scan_all(CF_TENANTS)
    }

    /// Adds a key for an existing tenant. Re-adding an identical key is a
    /// no-op so that root credentials from the environment can be installed
    /// at every start.
    pub(super) fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()> {
        let _g = self.lock()?;
        if self
            .get::<TenantRecord>(CF_TENANTS, rec.tenant.as_bytes())?
            .is_none()
        {
            return Err(CatalogError::NoSuchTenant(rec.tenant.clone()));
        }
        if let Some(old) = self.get::<AccessKeyRecord>(CF_KEYS, rec.access_key_id.as_bytes())? {
            if old.secret_access_key == rec.secret_access_key && old.tenant == rec.tenant {
                return Ok(());
            }
            return Err(CatalogError::KeyExists(rec.access_key_id.clone()));
        }
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_KEYS)?,
            rec.access_key_id.as_bytes(),
            rec.encode(),
        );
        self.commit(b)
    }

    // ---- buckets ----------------------------------------------------------

    pub(super) fn create_bucket(&self, name: &str, owner: &str, acl: Acl) -> Result<BucketRecord> {
        let _g = self.lock()?;
        if let Some(existing) = self.get::<BucketRecord>(CF_BUCKETS, name.as_bytes())? {
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
            acl,
            cors: None,
        };
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_BUCKETS)?, name.as_bytes(), rec.encode());
        self.commit(b)?;
        Ok(rec)
    }

    pub(super) fn update_bucket(&self, bucket: &BucketRecord, update: BucketUpdate) -> Result<()> {
        let _g = self.lock()?;
        let name = bucket.name.as_str();
        let current = self.get::<BucketRecord>(CF_BUCKETS, name.as_bytes())?;
        let mut rec = current
            .filter(|c| crate::api::is_expected_bucket(Some(c), Some(bucket)))
            .ok_or_else(|| CatalogError::NoSuchBucket(name.to_string()))?;
        update.apply(&mut rec);
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_BUCKETS)?, name.as_bytes(), rec.encode());
        self.commit(b)
    }

    /// Deletes an empty bucket. Unfinished multipart uploads do not keep a
    /// bucket alive: they are aborted and their parts queued for collection.
    pub(super) fn delete_bucket(&self, name: &str) -> Result<()> {
        let _g = self.lock()?;
        if self
            .get::<BucketRecord>(CF_BUCKETS, name.as_bytes())?
            .is_none()
        {
            return Err(CatalogError::NoSuchBucket(name.to_string()));
        }
        let prefix = object_key(name, "");
        if self.prefix_iter(CF_OBJECTS, &prefix)?.next().is_some() {
            return Err(CatalogError::BucketNotEmpty(name.to_string()));
        }
        let mut b = WriteBatch::default();
        for item in self.prefix_iter(CF_UPLOADS, &prefix)? {
            let (k, v) = item?;
            let up = UploadRecord::decode(&v)?;
            self.abort_into(&mut b, &up.upload_id)?;
            b.delete_cf(self.cf(CF_UPLOADS)?, k);
        }
        b.delete_cf(self.cf(CF_BUCKETS)?, name.as_bytes());
        self.commit(b)
    }

    pub(super) fn list_buckets(&self, owner: &str) -> Result<Vec<BucketRecord>> {
        Ok(self
            .scan_all::<BucketRecord>(CF_BUCKETS)?
            .into_iter()
            .filter(|b| b.owner == owner)
            .collect())
    }

    // ---- objects ----------------------------------------------------------

    pub(super) fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>> {
        self.get(CF_OBJECTS, &object_key(bucket, key))
    }

    /// Makes `rec` the visible version of `bucket/key`, atomically replacing
    /// any previous version, whose blob is queued for collection. The caller
    /// has already made `rec.blob` durable on every replica.
    pub(super) fn put_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> Result<()> {
        let _g = self.lock()?;
        let mut b = WriteBatch::default();
        self.put_object_into(&mut b, bucket, key, rec, None, &WriteCondition::None)?;
        self.commit(b)
    }

    /// Like `put_object`, but only into the very bucket the caller was
    /// authorised for (a bucket deleted and re-created by someone else
    /// meanwhile is refused) and only if `cond` holds for the current object.
    pub(super) fn put_object_checked(
        &self,
        bucket: &BucketRecord,
        key: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        let _g = self.lock()?;
        let mut b = WriteBatch::default();
        self.put_object_into(&mut b, &bucket.name, key, rec, Some(bucket), cond)?;
        self.commit(b)
    }

    pub(super) fn put_object_into(
        &self,
        b: &mut WriteBatch,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        expected: Option<&BucketRecord>,
        cond: &WriteCondition,
    ) -> Result<()> {
        let current = self.get::<BucketRecord>(CF_BUCKETS, bucket.as_bytes())?;
        if !crate::api::is_expected_bucket(current.as_ref(), expected) {
            return Err(CatalogError::NoSuchBucket(bucket.to_string()));
        }
        let existing = self.get::<ObjectRecord>(CF_OBJECTS, &object_key(bucket, key))?;
        cond.check(key, existing.as_ref())?;
        let k = object_key(bucket, key);
        if let Some(old) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? {
            if old.blob.id != rec.blob.id {
                self.queue_gc(b, &old.blob)?;
            }
        }
        self.index_blob(
            b,
            &rec.blob,
            &BlobOwner::Object {
                bucket: bucket.to_string(),
                key: key.to_string(),
            },
        )?;
        b.put_cf(self.cf(CF_OBJECTS)?, &k, rec.encode());
        Ok(())
    }

    /// Replaces only the ACL of an existing object.
    pub(super) fn set_object_acl(
        &self,
        bucket: &BucketRecord,
        key: &str,
        blob_id: &str,
        acl: Acl,
    ) -> Result<bool> {
        let _g = self.lock()?;
        let current = self.get::<BucketRecord>(CF_BUCKETS, bucket.name.as_bytes())?;
        if !crate::api::is_expected_bucket(current.as_ref(), Some(bucket)) {
            return Ok(false);
        }
        let k = object_key(&bucket.name, key);
        let Some(mut rec) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? else {
            return Ok(false);
        };
        if rec.blob.id != blob_id {
            return Ok(false);
        }
        rec.acl = acl;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_OBJECTS)?, &k, rec.encode());
        self.commit(b)?;
        Ok(true)
    }

    /// Removes an object; returns whether it existed.
    pub(super) fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        let _g = self.lock()?;
        let k = object_key(bucket, key);
        let Some(old) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? else {
            return Ok(false);
        };
        let mut b = WriteBatch::default();
        self.queue_gc(&mut b, &old.blob)?;
        b.delete_cf(self.cf(CF_OBJECTS)?, &k);
        self.commit(b)?;
        Ok(true)
    }

    pub(super) fn list_objects(&self, bucket: &str, q: &ListQuery) -> Result<ObjectPage> {
        let base = object_key(bucket, "");
        let mut lister = Lister::new(q);
        let mut seek = list_start(q);
        let cf = self.cf(CF_OBJECTS)?;
        'outer: loop {
            let mut from = base.clone();
            from.extend_from_slice(&seek);
            let iter = self
                .db
                .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
            for item in iter {
                let (k, v) = item.map_err(db_err)?;
                let Some(key_bytes) = k.strip_prefix(base.as_slice()) else {
                    break 'outer;
                };
                let key = String::from_utf8(key_bytes.to_vec())
                    .map_err(|_| CatalogError::Corrupt("non-UTF-8 object key".into()))?;
                match lister.offer(key, ObjectRecord::decode(&v)?) {
                    Listed::More => {}
                    Listed::Seek(next) => {
                        seek = next;
                        continue 'outer;
                    }
                    Listed::Done => break 'outer,
                }
            }
            break;
        }
        Ok(lister.finish())
    }

    // ---- multipart uploads -------------------------------------------------

    pub(super) fn create_upload(&self, rec: &UploadRecord) -> Result<()> {
        let _g = self.lock()?;
        if self
            .get::<BucketRecord>(CF_BUCKETS, rec.bucket.as_bytes())?
            .is_none()
        {
            return Err(CatalogError::NoSuchBucket(rec.bucket.clone()));
        }
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_UPLOADS)?,
            upload_key(&rec.bucket, &rec.key, &rec.upload_id),
            rec.encode(),
        );
        self.commit(b)
    }

    pub(super) fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>> {
        self.get(CF_UPLOADS, &upload_key(bucket, key, upload_id))
    }

    /// Records a durable part; a part uploaded again under the same number
    /// replaces the old one, whose blob is collected.
    pub(super) fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: &PartRecord,
    ) -> Result<()> {
        let _g = self.lock()?;
        if self
            .get::<UploadRecord>(CF_UPLOADS, &upload_key(bucket, key, upload_id))?
            .is_none()
        {
            return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
        }
        let pk = part_key(upload_id, part.part_number);
        let mut b = WriteBatch::default();
        if let Some(old) = self.get::<PartRecord>(CF_PARTS, &pk)? {
            self.queue_gc(&mut b, &old.blob)?;
        }
        let owner = BlobOwner::Part {
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            part_number: part.part_number,
        };
        self.index_blob(&mut b, &part.blob, &owner)?;
        b.put_cf(self.cf(CF_PARTS)?, pk, part.encode());
        self.commit(b)
    }

    /// Parts in number order, starting after `marker`, at most `max`.
    pub(super) fn list_parts(
        &self,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(Vec<PartRecord>, bool)> {
        let mut prefix = upload_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        let start = part_key(upload_id, marker.saturating_add(1));
        let iter = self.db.iterator_cf(
            self.cf(CF_PARTS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            if out.len() >= max {
                return Ok((out, true));
            }
            out.push(PartRecord::decode(&v)?);
        }
        Ok((out, false))
    }

    fn abort_into(&self, b: &mut WriteBatch, upload_id: &str) -> Result<()> {
        let mut prefix = upload_id.as_bytes().to_vec();
        prefix.push(0);
        for item in self.prefix_iter(CF_PARTS, &prefix)? {
            let (k, v) = item?;
            self.queue_gc(b, &PartRecord::decode(&v)?.blob)?;
            b.delete_cf(self.cf(CF_PARTS)?, k);
        }
        Ok(())
    }

    pub(super) fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let _g = self.lock()?;
        let uk = upload_key(bucket, key, upload_id);
        if self.get::<UploadRecord>(CF_UPLOADS, &uk)?.is_none() {
            return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
        }
        let mut b = WriteBatch::default();
        self.abort_into(&mut b, upload_id)?;
        b.delete_cf(self.cf(CF_UPLOADS)?, uk);
        self.commit(b)
    }

    /// Atomically publishes the assembled object and forgets the upload. All
    /// part blobs are queued for collection: the object has its own blob.
    pub(super) fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &ObjectRecord,
        cond: &WriteCondition,
    ) -> Result<()> {
        let _g = self.lock()?;
        let uk = upload_key(bucket, key, upload_id);
        if self.get::<UploadRecord>(CF_UPLOADS, &uk)?.is_none() {
            return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
        }
        let mut b = WriteBatch::default();
        self.put_object_into(&mut b, bucket, key, rec, None, cond)?;
        self.abort_into(&mut b, upload_id)?;
        b.delete_cf(self.cf(CF_UPLOADS)?, uk);
        self.commit(b)
    }

    pub(super) fn list_uploads(&self, bucket: &str, q: &UploadQuery) -> Result<UploadPage> {
        let start = object_key(bucket, &q.prefix);
        let mut lister = UploadLister::new(q);
        for item in self.prefix_iter(CF_UPLOADS, &start)? {
            let (_, v) = item?;
            if !lister.offer(UploadRecord::decode(&v)?) {
                break;
            }
        }
        Ok(lister.finish())
    }

    // ---- garbage collection and nodes ---------------------------------------

    /// Queued blobs with ids after `after`, at most `max`.
    pub(super) fn list_gc_after(&self, after: &str, max: usize) -> Result<Vec<GcRecord>> {
        let mut start = after.as_bytes().to_vec();
        if !after.is_empty() {
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_GC)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (_, v) = item.map_err(db_err)?;
            out.push(GcRecord::decode(&v)?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    pub(super) fn remove_gc(&self, blob_id: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_GC)?, blob_id.as_bytes());
        self.commit(b)
    }

    pub(super) fn put_node(&self, rec: &NodeRecord) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_NODES)?, rec.id.as_bytes(), rec.encode());
        self.commit(b)
    }

    pub(super) fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        self.scan_all(CF_NODES)
    }

    pub(super) fn set_node_draining(&self, id: &str, draining: bool) -> Result<bool> {
        let _g = self.lock()?;
        let Some(mut rec) = self.get::<NodeRecord>(CF_NODES, id.as_bytes())? else {
            return Ok(false);
        };
        rec.draining = draining;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_NODES)?, id.as_bytes(), rec.encode());
        self.commit(b)?;
        Ok(true)
    }

    /// Marks a node removed (a tombstone, so it cannot rejoin by heartbeat).
    pub(super) fn remove_node(&self, id: &str) -> Result<()> {
        let _g = self.lock()?;
        let Some(mut rec) = self.get::<NodeRecord>(CF_NODES, id.as_bytes())? else {
            return Ok(());
        };
        rec.removed = true;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_NODES)?, id.as_bytes(), rec.encode());
        self.commit(b)
    }

    pub(super) fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        self.get(CF_NODES, id.as_bytes())
    }

    // ---- the blob owner index: repair and orphan sweeps ---------------------

    /// The blob as a job pinned it, if one that has not ended did.
    pub(super) fn pinned_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        let mut prefix = blob_id.as_bytes().to_vec();
        prefix.push(0);
        let found = self.scan_prefix(CF_PINS, &prefix, None, 1)?;
        match found.first() {
            Some((_, v)) => Ok(Some(PinRecord::decode(v)?.blob)),
            None => Ok(None),
        }
    }

    pub(super) fn queued_blob(&self, blob_id: &str) -> Result<Option<BlobRef>> {
        Ok(self
            .get::<GcRecord>(CF_GC, blob_id.as_bytes())?
            .map(|r| r.blob))
    }

    pub(super) fn is_gc_queued(&self, blob_id: &str) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_GC)?, blob_id.as_bytes())
            .map_err(db_err)?
            .is_some())
    }

    /// The blob as the record that owns it currently describes it.
    pub(super) fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>> {
        let Some(owner) = self.get::<BlobOwner>(CF_BLOB_OWNERS, blob_id.as_bytes())? else {
            return Ok(None);
        };
        let blob = match &owner {
            BlobOwner::Object { bucket, key } => self
                .get::<ObjectRecord>(CF_OBJECTS, &object_key(bucket, key))?
                .map(|o| o.blob),
            BlobOwner::Part {
                upload_id,
                part_number,
                ..
            } => self
                .get::<PartRecord>(CF_PARTS, &part_key(upload_id, *part_number))?
                .map(|p| p.blob),
        };
        Ok(blob.filter(|b| b.id == blob_id).map(|b| (owner, b)))
    }

    /// Referenced blobs in id order after `after`, at most `max`.
    pub(super) fn scan_blobs(&self, after: &str, max: usize) -> Result<Vec<(BlobOwner, BlobRef)>> {
        let mut start = after.as_bytes().to_vec();
        start.push(0);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_BLOB_OWNERS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item.map_err(db_err)?;
            let id = String::from_utf8_lossy(&k).into_owned();
            if let Some(found) = self.owned_blob(&id)? {
                out.push(found);
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Rewrites the replica list of a blob, if its owner still references
    /// it; returns whether it did. Used by repair after a copy is durable.
    pub(super) fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool> {
        let _g = self.lock()?;
        let Some((owner, _)) = self.owned_blob(blob_id)? else {
            return Ok(false);
        };
        let mut b = WriteBatch::default();
        match owner {
            BlobOwner::Object { bucket, key } => {
                let k = object_key(&bucket, &key);
                let Some(mut rec) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? else {
                    return Ok(false);
                };
                rec.blob.replicas = replicas.to_vec();
                b.put_cf(self.cf(CF_OBJECTS)?, &k, rec.encode());
            }
            BlobOwner::Part {
                bucket,
                key,
                upload_id,
                part_number,
            } => {
                let pk = part_key(&upload_id, part_number);
                let Some(mut rec) = self.get::<PartRecord>(CF_PARTS, &pk)? else {
                    return Ok(false);
                };
                let old = rec.blob.replicas.clone();
                rec.blob.replicas = replicas.to_vec();
                b.put_cf(self.cf(CF_PARTS)?, &pk, rec.encode());
                // Later parts go where the earlier ones now are.
                let uk = upload_key(&bucket, &key, &upload_id);
                if let Some(mut up) = self.get::<UploadRecord>(CF_UPLOADS, &uk)? {
                    if up.nodes == old {
                        up.nodes = replicas.to_vec();
                        b.put_cf(self.cf(CF_UPLOADS)?, &uk, up.encode());
                    }
                }
            }
        }
        self.commit(b)?;
        Ok(true)
    }

    // ---- iteration helpers --------------------------------------------------

    fn scan_all<R: Record>(&self, cf: &str) -> Result<Vec<R>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            out.push(R::decode(&v)?);
        }
        Ok(out)
    }

    pub(super) fn prefix_iter<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Result<KeyValue>> + 'a> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(prefix, Direction::Forward));
        Ok(iter
            .map(|r| r.map_err(db_err))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that memory cannot answer says so (and the full read then
    /// answers it); a read that memory can answer gives the record, or
    /// that there is none.
    #[test]
    fn cached_reads_answer_from_memory_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        {
            let core = RocksCore::open(dir.path()).unwrap();
            core.create_tenant("t").unwrap();
            core.db.flush_cf(core.cf(CF_TENANTS).unwrap()).unwrap();
        }
        // Reopened: the record is in a table file, none of it cached yet.
        let core = RocksCore::open(dir.path()).unwrap();
        assert!(core
            .get_cached::<TenantRecord>(CF_TENANTS, b"t")
            .unwrap()
            .is_none());
        let full: Option<TenantRecord> = core.get(CF_TENANTS, b"t").unwrap();
        assert_eq!(full.as_ref().map(|t| t.name.as_str()), Some("t"));
        // The full read brought its block into the cache.
        let cached = core.get_cached::<TenantRecord>(CF_TENANTS, b"t").unwrap();
        assert_eq!(cached.flatten().map(|t| t.name), Some("t".to_string()));
        core.create_tenant("u").unwrap();
        let fresh = core.get_cached::<TenantRecord>(CF_TENANTS, b"u").unwrap();
        assert!(fresh.flatten().is_some(), "a memtable entry is in memory");
        // Sorting before every key of the one table file, it is known
        // absent without reading a data block.
        assert!(matches!(
            core.get_cached::<TenantRecord>(CF_TENANTS, b"nobody"),
            Ok(Some(None))
        ));
    }
}
