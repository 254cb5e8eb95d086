//! Memoized tasks in the embedded backend.
//!
//! Keys (column family `memo`): `tenant \0 fingerprint` → `MemoRecord`,
//! and `tenant \1` → the tenant's entry count (u64 BE). Column family
//! `memo_age`: `tenant \0 created_ms (u64 BE) \0 fingerprint` → empty,
//! so a tenant's oldest entries come first. Column family `memo_blob`:
//! `blob \0 tenant \0 fingerprint` → empty, for each output blob an entry
//! names, so that entries go when their outputs' blobs are collected.

use std::collections::HashMap;

use insitu_job_model::records::MemoRecord;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::core::{db_err, RocksCore, CF_MEMO, CF_MEMO_AGE, CF_MEMO_BLOB};
use crate::records::Record;
use crate::{CatalogError, Result};

fn memo_key(tenant: &str, fingerprint: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + fingerprint.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(fingerprint.as_bytes());
    k
}

fn count_key(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(1);
    k
}

fn age_key(tenant: &str, created_ms: i64, fingerprint: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 10 + fingerprint.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&(created_ms.max(0) as u64).to_be_bytes());
    k.push(0);
    k.extend_from_slice(fingerprint.as_bytes());
    k
}

fn blob_key(blob: &str, tenant: &str, fingerprint: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(blob.len() + tenant.len() + 2 + fingerprint.len());
    k.extend_from_slice(blob.as_bytes());
    k.push(0);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(fingerprint.as_bytes());
    k
}

impl RocksCore {
    /// Drops `rec`'s rows in the blob index.
    fn unindex(
        &self,
        batch: &mut WriteBatch,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
    ) -> Result<()> {
        for o in &rec.outputs {
            batch.delete_cf(
                self.cf(CF_MEMO_BLOB)?,
                blob_key(&o.blob, tenant, fingerprint),
            );
        }
        Ok(())
    }

    /// Drops an entry read as `old`, with its age and blob index rows (the
    /// count is the caller's).
    fn drop_entry(
        &self,
        batch: &mut WriteBatch,
        tenant: &str,
        fingerprint: &str,
        old: &MemoRecord,
    ) -> Result<()> {
        batch.delete_cf(self.cf(CF_MEMO)?, memo_key(tenant, fingerprint));
        batch.delete_cf(
            self.cf(CF_MEMO_AGE)?,
            age_key(tenant, old.created_ms, fingerprint),
        );
        self.unindex(batch, tenant, fingerprint, old)
    }

    pub(super) fn memo_get(&self, tenant: &str, fingerprint: &str) -> Result<Option<MemoRecord>> {
        self.get(CF_MEMO, &memo_key(tenant, fingerprint))
    }

    fn memo_count(&self, tenant: &str) -> Result<u64> {
        let v = self
            .db
            .get_cf(self.cf(CF_MEMO)?, count_key(tenant))
            .map_err(db_err)?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    pub(super) fn memo_put(
        &self,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
        cap: usize,
    ) -> Result<()> {
        let _g = self.lock()?;
        let mut batch = WriteBatch::default();
        let mut count = self.memo_count(tenant)?;
        match self.memo_get(tenant, fingerprint)? {
            Some(old) => {
                batch.delete_cf(
                    self.cf(CF_MEMO_AGE)?,
                    age_key(tenant, old.created_ms, fingerprint),
                );
                self.unindex(&mut batch, tenant, fingerprint, &old)?;
            }
            None => count += 1,
        }
        batch.put_cf(
            self.cf(CF_MEMO)?,
            memo_key(tenant, fingerprint),
            rec.encode(),
        );
        for o in &rec.outputs {
            batch.put_cf(
                self.cf(CF_MEMO_BLOB)?,
                blob_key(&o.blob, tenant, fingerprint),
                [],
            );
        }
        batch.put_cf(
            self.cf(CF_MEMO_AGE)?,
            age_key(tenant, rec.created_ms, fingerprint),
            [],
        );
        if count > cap as u64 {
            // The oldest go, never the one just written.
            let mut prefix = tenant.as_bytes().to_vec();
            prefix.push(0);
            let iter = self.db.iterator_cf(
                self.cf(CF_MEMO_AGE)?,
                IteratorMode::From(&prefix, Direction::Forward),
            );
            for item in iter {
                if count <= cap as u64 {
                    break;
                }
                let (k, _) = item.map_err(db_err)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                // `tenant \0 ms(8) \0 fingerprint`
                let Some(fp) = k.get(prefix.len() + 9..) else {
                    continue;
                };
                let fp = String::from_utf8_lossy(fp).into_owned();
                if fp == fingerprint {
                    continue;
                }
                batch.delete_cf(self.cf(CF_MEMO_AGE)?, &k);
                batch.delete_cf(self.cf(CF_MEMO)?, memo_key(tenant, &fp));
                if let Some(old) = self.memo_get(tenant, &fp)? {
                    self.unindex(&mut batch, tenant, &fp, &old)?;
                }
                count -= 1;
            }
        }
        batch.put_cf(self.cf(CF_MEMO)?, count_key(tenant), count.to_be_bytes());
        self.commit(batch)
    }

    pub(super) fn memo_delete(
        &self,
        tenant: &str,
        fingerprint: &str,
        written_ms: Option<i64>,
    ) -> Result<()> {
        let _g = self.lock()?;
        let Some(old) = self.memo_get(tenant, fingerprint)? else {
            return Ok(());
        };
        if written_ms.is_some_and(|ms| ms != old.created_ms) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.drop_entry(&mut batch, tenant, fingerprint, &old)?;
        let count = self.memo_count(tenant)?.saturating_sub(1);
        batch.put_cf(self.cf(CF_MEMO)?, count_key(tenant), count.to_be_bytes());
        self.commit(batch)
    }

    pub(super) fn memo_forget_blob(&self, blob: &str) -> Result<usize> {
        let _g = self.lock()?;
        let mut prefix = blob.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = WriteBatch::default();
        let mut gone: HashMap<String, u64> = HashMap::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_MEMO_BLOB)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item.map_err(db_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            batch.delete_cf(self.cf(CF_MEMO_BLOB)?, &k);
            // `blob \0 tenant \0 fingerprint`
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some((tenant, fp)) = rest.split_once('\0') else {
                continue;
            };
            match self.memo_get(tenant, fp) {
                Ok(Some(old)) if old.outputs.iter().any(|o| o.blob == blob) => {
                    self.drop_entry(&mut batch, tenant, fp, &old)?;
                    *gone.entry(tenant.to_string()).or_default() += 1;
                }
                // An entry this build cannot read is left to its lookup
                // (which drops it); collection goes on.
                Ok(_) | Err(CatalogError::Corrupt(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for (tenant, n) in &gone {
            let count = self.memo_count(tenant)?.saturating_sub(*n);
            batch.put_cf(self.cf(CF_MEMO)?, count_key(tenant), count.to_be_bytes());
        }
        self.commit(batch)?;
        Ok(gone.values().sum::<u64>() as usize)
    }
}
