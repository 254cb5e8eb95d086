//! The catalog: every piece of cluster metadata, in one embedded rocksdb.
//!
//! This crate owns rocksdb and its column families; nobody else opens them.
//! Each mutating call is one atomic, synced `WriteBatch`, so a crash leaves
//! either the old state or the new one, never a mix. Read-modify-write calls
//! (create bucket, put object, ...) are serialised by one mutex: the gateway
//! is the catalog's only writer.

mod records;

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use thiserror::Error;

pub use records::*;

pub const CF_TENANTS: &str = "tenants";
pub const CF_KEYS: &str = "access_keys";
pub const CF_BUCKETS: &str = "buckets";
pub const CF_OBJECTS: &str = "objects";
pub const CF_UPLOADS: &str = "uploads";
pub const CF_PARTS: &str = "parts";
pub const CF_GC: &str = "gc";
pub const CF_NODES: &str = "nodes";
pub const CF_BLOB_OWNERS: &str = "blob_owners";
/// Jobs, keyed `tenant \0 job_id`; their records are the jobs crate's.
pub const CF_JOBS: &str = "jobs";
/// A job's inputs, tasks, outputs and errors, keyed `job_id \0 kind \0 ...`.
pub const CF_JOB_ITEMS: &str = "job_items";
const ALL_CFS: [&str; 11] = [
    CF_JOBS,
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

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt catalog record: {0}")]
    Corrupt(String),
    #[error("tenant {0} already exists")]
    TenantExists(String),
    #[error("tenant {0} does not exist")]
    NoSuchTenant(String),
    #[error("access key {0} already exists")]
    KeyExists(String),
    #[error("bucket {0} already exists")]
    BucketAlreadyExists(String),
    #[error("bucket {0} is already owned by you")]
    BucketAlreadyOwnedByYou(String),
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    #[error("multipart upload {0} does not exist")]
    NoSuchUpload(String),
    #[error("a write precondition did not hold")]
    PreconditionFailed,
    #[error("internal lock poisoned")]
    Poisoned,
}

/// A condition checked atomically with a write (`If-None-Match: *`,
/// `If-Match` on PUT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCondition {
    None,
    /// Only if no object exists under the key.
    IfNoneMatchAny,
    /// Only if the current object has this ETag.
    IfMatch(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A raw rocksdb entry.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `bucket \0 key`: bucket names never contain NUL, so the split is unique and
/// the order is bucket first, then the key's UTF-8 bytes, as S3 lists them.
pub fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `bucket \0 key \0 upload_id`.
pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}

/// `upload_id \0 part_number(u32 big-endian)`, so parts sort numerically.
pub fn part_key(upload_id: &str, part_number: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(upload_id.len() + 5);
    k.extend_from_slice(upload_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&part_number.to_be_bytes());
    k
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

pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Exclusive: listing starts strictly after this key.
    pub start_after: Option<&'a str>,
    pub max: usize,
}

pub struct Catalog {
    db: DB,
    write_lock: Mutex<()>,
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self {
            db,
            write_lock: Mutex::new(()),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| CatalogError::Corrupt(format!("missing column family {name}")))
    }

    fn get<R: Record>(&self, cf: &str, key: &[u8]) -> Result<Option<R>> {
        match self.db.get_cf(self.cf(cf)?, key)? {
            Some(bytes) => Ok(Some(R::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every commit is synced: an acknowledged write survives power loss.
    fn commit(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.write_lock.lock().map_err(|_| CatalogError::Poisoned)
    }

    /// Unreferences a blob: it leaves the owner index and joins the GC queue
    /// in the same batch.
    fn queue_gc(&self, batch: &mut WriteBatch, blob: &BlobRef) -> Result<()> {
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

    pub fn create_tenant(&self, name: &str) -> Result<TenantRecord> {
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

    pub fn ensure_tenant(&self, name: &str) -> Result<()> {
        match self.create_tenant(name) {
            Ok(_) | Err(CatalogError::TenantExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.get(CF_TENANTS, name.as_bytes())
    }

    /// Replaces a tenant's policy; false if there is no such tenant.
    pub fn set_tenant_policy(&self, name: &str, policy: &TenantPolicy) -> Result<bool> {
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

    pub fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.scan_all(CF_TENANTS)
    }

    /// Adds a key for an existing tenant. Re-adding an identical key is a
    /// no-op so that root credentials from the environment can be installed
    /// at every start.
    pub fn put_access_key(&self, rec: &AccessKeyRecord) -> Result<()> {
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

    pub fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRecord>> {
        self.get(CF_KEYS, id.as_bytes())
    }

    // ---- buckets ----------------------------------------------------------

    pub fn create_bucket(&self, name: &str, owner: &str, acl: CannedAcl) -> Result<BucketRecord> {
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
        };
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_BUCKETS)?, name.as_bytes(), rec.encode());
        self.commit(b)?;
        Ok(rec)
    }

    pub fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        self.get(CF_BUCKETS, name.as_bytes())
    }

    pub fn set_bucket_acl(&self, name: &str, acl: CannedAcl) -> Result<()> {
        let _g = self.lock()?;
        let mut rec = self
            .get::<BucketRecord>(CF_BUCKETS, name.as_bytes())?
            .ok_or_else(|| CatalogError::NoSuchBucket(name.to_string()))?;
        rec.acl = acl;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_BUCKETS)?, name.as_bytes(), rec.encode());
        self.commit(b)
    }

    /// Deletes an empty bucket. Unfinished multipart uploads do not keep a
    /// bucket alive: they are aborted and their parts queued for collection.
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
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

    pub fn list_buckets(&self, owner: &str) -> Result<Vec<BucketRecord>> {
        Ok(self
            .scan_all::<BucketRecord>(CF_BUCKETS)?
            .into_iter()
            .filter(|b| b.owner == owner)
            .collect())
    }

    // ---- objects ----------------------------------------------------------

    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>> {
        self.get(CF_OBJECTS, &object_key(bucket, key))
    }

    /// Makes `rec` the visible version of `bucket/key`, atomically replacing
    /// any previous version, whose blob is queued for collection. The caller
    /// has already made `rec.blob` durable on every replica.
    pub fn put_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> Result<()> {
        let _g = self.lock()?;
        let mut b = WriteBatch::default();
        self.put_object_into(&mut b, bucket, key, rec, None, &WriteCondition::None)?;
        self.commit(b)
    }

    /// Like `put_object`, but only into the very bucket the caller was
    /// authorised for (a bucket deleted and re-created by someone else
    /// meanwhile is refused) and only if `cond` holds for the current object.
    pub fn put_object_checked(
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

    fn put_object_into(
        &self,
        b: &mut WriteBatch,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        expected: Option<&BucketRecord>,
        cond: &WriteCondition,
    ) -> Result<()> {
        let current = self.get::<BucketRecord>(CF_BUCKETS, bucket.as_bytes())?;
        let same = match (&current, expected) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(c), Some(e)) => c.owner == e.owner && c.created_ms == e.created_ms,
        };
        if !same {
            return Err(CatalogError::NoSuchBucket(bucket.to_string()));
        }
        let existing = self.get::<ObjectRecord>(CF_OBJECTS, &object_key(bucket, key))?;
        let holds = match (cond, &existing) {
            (WriteCondition::None, _) => true,
            (WriteCondition::IfNoneMatchAny, e) => e.is_none(),
            (WriteCondition::IfMatch(etag), Some(e)) => e.etag == *etag,
            (WriteCondition::IfMatch(_), None) => false,
        };
        if !holds {
            return Err(CatalogError::PreconditionFailed);
        }
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
    pub fn set_object_acl(&self, bucket: &str, key: &str, acl: CannedAcl) -> Result<bool> {
        let _g = self.lock()?;
        let k = object_key(bucket, key);
        let Some(mut rec) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? else {
            return Ok(false);
        };
        rec.acl = acl;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_OBJECTS)?, &k, rec.encode());
        self.commit(b)?;
        Ok(true)
    }

    /// Removes an object; returns whether it existed.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
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

    /// Lists keys of `bucket` in byte order, grouping by `delimiter` after
    /// `prefix`. A whole common prefix is skipped with one seek, so a listing
    /// with a delimiter never scans the keys it hides.
    pub fn list_objects(&self, bucket: &str, q: &ListQuery<'_>) -> Result<ObjectPage> {
        let base = object_key(bucket, "");
        let mut page = ObjectPage::default();
        let mut seek = object_key(bucket, q.prefix);
        if let Some(after) = q.start_after {
            if after.as_bytes() >= q.prefix.as_bytes() {
                seek = object_key(bucket, after);
                seek.push(0);
            }
            // Resuming after a rolled-up common prefix: every key under it
            // was already reported as that prefix, so skip them all.
            if let (Some(d), Some(rest)) = (
                q.delimiter.filter(|d| !d.is_empty()),
                after.strip_prefix(q.prefix),
            ) {
                if let Some(pos) = rest.find(d) {
                    let cp = &after[..q.prefix.len() + pos + d.len()];
                    seek = object_key(bucket, cp);
                    increment(&mut seek);
                }
            }
        }
        let cf = self.cf(CF_OBJECTS)?;
        'outer: loop {
            let iter = self
                .db
                .iterator_cf(cf, IteratorMode::From(&seek, Direction::Forward));
            for item in iter {
                let (k, v) = item?;
                if !k.starts_with(&base) {
                    break 'outer;
                }
                let key_bytes = &k[base.len()..];
                if !key_bytes.starts_with(q.prefix.as_bytes()) {
                    break 'outer;
                }
                let key = String::from_utf8(key_bytes.to_vec())
                    .map_err(|_| CatalogError::Corrupt("non-UTF-8 object key".into()))?;
                if let Some(after) = q.start_after {
                    if key.as_str() <= after {
                        continue;
                    }
                }
                if page.objects.len() + page.common_prefixes.len() >= q.max {
                    page.is_truncated = true;
                    break 'outer;
                }
                if let Some(d) = q.delimiter.filter(|d| !d.is_empty()) {
                    if let Some(pos) = key[q.prefix.len()..].find(d) {
                        let cp = key[..q.prefix.len() + pos + d.len()].to_string();
                        // Seek past every key that shares this common prefix.
                        seek = object_key(bucket, &cp);
                        increment(&mut seek);
                        page.last = Some(cp.clone());
                        page.common_prefixes.push(cp);
                        continue 'outer;
                    }
                }
                page.last = Some(key.clone());
                page.objects.push((key, ObjectRecord::decode(&v)?));
            }
            break;
        }
        Ok(page)
    }

    // ---- multipart uploads -------------------------------------------------

    pub fn create_upload(&self, rec: &UploadRecord) -> Result<()> {
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

    pub fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<UploadRecord>> {
        self.get(CF_UPLOADS, &upload_key(bucket, key, upload_id))
    }

    /// Records a durable part; a part uploaded again under the same number
    /// replaces the old one, whose blob is collected.
    pub fn put_part(
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
    pub fn list_parts(
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
            let (k, v) = item?;
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

    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
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
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &ObjectRecord,
    ) -> Result<()> {
        let _g = self.lock()?;
        let uk = upload_key(bucket, key, upload_id);
        if self.get::<UploadRecord>(CF_UPLOADS, &uk)?.is_none() {
            return Err(CatalogError::NoSuchUpload(upload_id.to_string()));
        }
        let mut b = WriteBatch::default();
        self.put_object_into(&mut b, bucket, key, rec, None, &WriteCondition::None)?;
        self.abort_into(&mut b, upload_id)?;
        b.delete_cf(self.cf(CF_UPLOADS)?, uk);
        self.commit(b)
    }

    /// Lists uploads of `bucket` in (key, upload id) order after the markers.
    pub fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        upload_id_marker: Option<&str>,
        max: usize,
    ) -> Result<UploadPage> {
        let base = object_key(bucket, "");
        let mut page = UploadPage::default();
        let start = object_key(bucket, prefix);
        let iter = self.prefix_iter(CF_UPLOADS, &start)?;
        for item in iter {
            let (_, v) = item?;
            let up = UploadRecord::decode(&v)?;
            debug_assert!(upload_key(bucket, &up.key, &up.upload_id).starts_with(&base));
            // The scan's byte prefix can match keys shorter than the
            // requested prefix (one holding a NUL, say): only keys that
            // really start with it are listed.
            if !up.key.starts_with(prefix) {
                continue;
            }
            if let Some(km) = key_marker {
                // Resuming after a rolled-up common prefix skips everything
                // under it.
                if let (Some(d), Some(rest)) =
                    (delimiter.filter(|d| !d.is_empty()), km.strip_prefix(prefix))
                {
                    if let Some(pos) = rest.find(d) {
                        if up.key.starts_with(&km[..prefix.len() + pos + d.len()]) {
                            continue;
                        }
                    }
                }
                let after_marker = match upload_id_marker {
                    Some(um) => (up.key.as_str(), up.upload_id.as_str()) > (km, um),
                    None => up.key.as_str() > km,
                };
                if !after_marker {
                    continue;
                }
            }
            if let Some(d) = delimiter.filter(|d| !d.is_empty()) {
                if let Some(pos) = up.key[prefix.len()..].find(d) {
                    let cp = up.key[..prefix.len() + pos + d.len()].to_string();
                    if page.common_prefixes.last() != Some(&cp) {
                        if page.uploads.len() + page.common_prefixes.len() >= max {
                            page.is_truncated = true;
                            break;
                        }
                        page.next_key_marker = Some(cp.clone());
                        page.next_upload_id_marker = None;
                        page.common_prefixes.push(cp);
                    }
                    continue;
                }
            }
            if page.uploads.len() + page.common_prefixes.len() >= max {
                page.is_truncated = true;
                break;
            }
            page.next_key_marker = Some(up.key.clone());
            page.next_upload_id_marker = Some(up.upload_id.clone());
            page.uploads.push(up);
        }
        Ok(page)
    }

    // ---- garbage collection and nodes ---------------------------------------

    /// Queued blobs with ids after `after`, at most `max`.
    pub fn list_gc_after(&self, after: &str, max: usize) -> Result<Vec<GcRecord>> {
        let mut start = after.as_bytes().to_vec();
        if !after.is_empty() {
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_GC)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (_, v) = item?;
            out.push(GcRecord::decode(&v)?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    pub fn list_gc(&self, max: usize) -> Result<Vec<GcRecord>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            let (_, v) = item?;
            out.push(GcRecord::decode(&v)?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    pub fn remove_gc(&self, blob_id: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_GC)?, blob_id.as_bytes());
        self.commit(b)
    }

    pub fn put_node(&self, rec: &NodeRecord) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_NODES)?, rec.id.as_bytes(), rec.encode());
        self.commit(b)
    }

    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        self.scan_all(CF_NODES)
    }

    pub fn set_node_draining(&self, id: &str, draining: bool) -> Result<bool> {
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
    pub fn remove_node(&self, id: &str) -> Result<()> {
        let _g = self.lock()?;
        let Some(mut rec) = self.get::<NodeRecord>(CF_NODES, id.as_bytes())? else {
            return Ok(());
        };
        rec.removed = true;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_NODES)?, id.as_bytes(), rec.encode());
        self.commit(b)
    }

    pub fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        self.get(CF_NODES, id.as_bytes())
    }

    // ---- the blob owner index: repair and orphan sweeps ---------------------

    pub fn is_gc_queued(&self, blob_id: &str) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_GC)?, blob_id.as_bytes())?
            .is_some())
    }

    /// The blob as the record that owns it currently describes it.
    pub fn owned_blob(&self, blob_id: &str) -> Result<Option<(BlobOwner, BlobRef)>> {
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
    pub fn scan_blobs(&self, after: &str, max: usize) -> Result<Vec<(BlobOwner, BlobRef)>> {
        let mut start = after.as_bytes().to_vec();
        start.push(0);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_BLOB_OWNERS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
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
    pub fn set_replicas(&self, blob_id: &str, replicas: &[String]) -> Result<bool> {
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

    // ---- jobs -----------------------------------------------------------------
    //
    // The catalog stores job records as opaque bytes (the jobs crate owns
    // their format) and gives the supervisor one thing it cannot do itself:
    // committing a task's output objects together with the job's own state
    // in one atomic batch, so an output is visible exactly when its task is
    // recorded as done.

    pub fn job_get(&self, cf: JobCf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf.name())?, key)?)
    }

    /// Entries of a job column family that start with `prefix`, strictly
    /// after `after` (or from the start of the prefix), at most `max`.
    pub fn job_scan(
        &self,
        cf: JobCf,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<KeyValue>> {
        let mut start = prefix.to_vec();
        if let Some(a) = after {
            if a >= prefix {
                start = a.to_vec();
                start.push(0);
            }
        }
        let iter = self.db.iterator_cf(
            self.cf(cf.name())?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= max {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    /// Applies a job step atomically: its job-state writes, plus any output
    /// objects it commits (each into the very bucket record it was checked
    /// against) and object deletions.
    pub fn job_commit(&self, step: JobStep) -> Result<()> {
        let _g = self.lock()?;
        let mut b = WriteBatch::default();
        for (bucket, key, rec) in &step.objects {
            self.put_object_into(
                &mut b,
                &bucket.name,
                key,
                rec,
                Some(bucket),
                &WriteCondition::None,
            )?;
        }
        for (bucket, key) in &step.delete_objects {
            let k = object_key(bucket, key);
            if let Some(old) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? {
                self.queue_gc(&mut b, &old.blob)?;
                b.delete_cf(self.cf(CF_OBJECTS)?, &k);
            }
        }
        for (cf, key, value) in &step.writes {
            match value {
                Some(v) => b.put_cf(self.cf(cf.name())?, key, v),
                None => b.delete_cf(self.cf(cf.name())?, key),
            }
        }
        self.commit(b)
    }

    // ---- iteration helpers --------------------------------------------------

    fn scan_all<R: Record>(&self, cf: &str) -> Result<Vec<R>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (_, v) = item?;
            out.push(R::decode(&v)?);
        }
        Ok(out)
    }

    fn prefix_iter<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Result<KeyValue>> + 'a> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(prefix, Direction::Forward));
        Ok(iter
            .map(|r| r.map_err(CatalogError::from))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            }))
    }
}

/// The column families that hold job state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCf {
    Jobs,
    Items,
}

impl JobCf {
    fn name(self) -> &'static str {
        match self {
            Self::Jobs => CF_JOBS,
            Self::Items => CF_JOB_ITEMS,
        }
    }
}

/// One atomic job step: see `Catalog::job_commit`.
#[derive(Debug, Default)]
pub struct JobStep {
    pub writes: Vec<(JobCf, Vec<u8>, Option<Vec<u8>>)>,
    pub objects: Vec<(BucketRecord, String, ObjectRecord)>,
    pub delete_objects: Vec<(String, String)>,
}

impl JobStep {
    pub fn put(&mut self, cf: JobCf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((cf, key, Some(value)));
    }
    pub fn delete(&mut self, cf: JobCf, key: Vec<u8>) {
        self.writes.push((cf, key, None));
    }
}

/// Turns `key` into the smallest byte string greater than every string that
/// starts with `key`.
fn increment(key: &mut Vec<u8>) {
    while let Some(last) = key.pop() {
        if last < 0xff {
            key.push(last + 1);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: &str) -> ObjectRecord {
        ObjectRecord {
            size: 1,
            etag: "x".into(),
            last_modified_ms: 0,
            owner: "t".into(),
            headers: ObjectHeaders::default(),
            acl: CannedAcl::Private,
            blob: BlobRef {
                id: id.into(),
                size: 1,
                replicas: vec!["node-0".into()],
            },
            parts_count: 0,
            part_sizes: vec![],
        }
    }

    #[test]
    fn list_groups_common_prefixes_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        c.create_tenant("t").unwrap();
        c.create_bucket("b", "t", CannedAcl::Private).unwrap();
        for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d"] {
            c.put_object("b", k, &obj(k)).unwrap();
        }
        let q = ListQuery {
            prefix: "",
            delimiter: Some("/"),
            start_after: None,
            max: 1000,
        };
        let p = c.list_objects("b", &q).unwrap();
        let keys: Vec<_> = p.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "d"]);
        assert_eq!(p.common_prefixes, ["a/", "c/"]);

        let q = ListQuery {
            prefix: "",
            delimiter: Some("/"),
            start_after: None,
            max: 2,
        };
        let p = c.list_objects("b", &q).unwrap();
        assert!(p.is_truncated);
        assert_eq!(p.last.as_deref(), Some("b"));
        let q = ListQuery {
            prefix: "",
            delimiter: Some("/"),
            start_after: Some("b"),
            max: 2,
        };
        let p = c.list_objects("b", &q).unwrap();
        assert_eq!(p.common_prefixes, ["c/"]);
        assert_eq!(p.objects.len(), 1);
        assert!(!p.is_truncated);

        let q = ListQuery {
            prefix: "c/",
            delimiter: None,
            start_after: None,
            max: 10,
        };
        let p = c.list_objects("b", &q).unwrap();
        assert_eq!(p.objects.len(), 2);
    }

    #[test]
    fn overwrite_and_delete_queue_old_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        c.create_tenant("t").unwrap();
        c.create_bucket("b", "t", CannedAcl::Private).unwrap();
        c.put_object("b", "k", &obj("one")).unwrap();
        c.put_object("b", "k", &obj("two")).unwrap();
        assert_eq!(c.list_gc(10).unwrap()[0].blob.id, "one");
        assert!(matches!(
            c.delete_bucket("b"),
            Err(CatalogError::BucketNotEmpty(_))
        ));
        assert!(c.delete_object("b", "k").unwrap());
        assert_eq!(c.list_gc(10).unwrap().len(), 2);
        c.delete_bucket("b").unwrap();
        assert!(matches!(
            c.create_bucket("b", "t", CannedAcl::Private)
                .and_then(|_| c.create_bucket("b", "u", CannedAcl::Private)),
            Err(CatalogError::BucketAlreadyExists(_))
        ));
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            c.create_tenant("t").unwrap();
            c.create_bucket("b", "t", CannedAcl::PublicRead).unwrap();
            c.put_object("b", "k", &obj("one")).unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            c.get_bucket("b").unwrap().unwrap().acl,
            CannedAcl::PublicRead
        );
        assert_eq!(c.get_object("b", "k").unwrap().unwrap().blob.id, "one");
    }
}
