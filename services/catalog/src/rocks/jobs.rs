//! Job state in the embedded backend.
//!
//! Keys (column family `jobs`): `tenant \0 job_id` → `JobRecord`.
//! Keys (column family `job_items`), all starting `job_id \0 kind \0`:
//!
//! | kind | rest of the key                 | value             |
//! |------|---------------------------------|-------------------|
//! | `i`  | seq (u64 BE)                    | `InputRecord`     |
//! | `t`  | seq (u64 BE)                    | `TaskRecord` (map tasks, in creation order) |
//! | `R`  | phase (u32 BE), reducer (u32 BE)| `TaskRecord` (reducers) |
//! | `p`  | phase, reducer (u32 BE), seq    | `PieceRecord` (a reducer's inputs) |
//! | `o`  | seq                             | `OutputRecord`    |
//! | `e`  | seq                             | `ErrorRecord`     |
//! | `f`  | seq                             | `InputRecord` (inputs whose task failed) |
//! | `x`  | `bucket/key`                    | empty: the input is in the job |

use insitu_job_model::records::{JobRecord, TaskRecord};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::core::{db_err, object_key, RocksCore, CF_JOBS, CF_JOB_ITEMS, CF_OBJECTS, CF_PINS};
use crate::api::{JobChange, JobWrite};
use crate::records::{ObjectRecord, PinRecord, Record};
use crate::{CatalogError, Result, WriteCondition};

fn job_key(tenant: &str, job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + job.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

/// The list kinds under a job in `job_items`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ItemKind {
    Input,
    Task,
    Reducer,
    Piece,
    Output,
    Error,
    FailedInput,
    /// Inputs by name, to add each once.
    Seen,
    /// Blobs the job pinned, by id (the other half of `CF_PINS`).
    Pin,
}

impl ItemKind {
    fn byte(self) -> u8 {
        match self {
            Self::Input => b'i',
            Self::Task => b't',
            Self::Reducer => b'R',
            Self::Piece => b'p',
            Self::Output => b'o',
            Self::Error => b'e',
            Self::FailedInput => b'f',
            Self::Seen => b'x',
            Self::Pin => b'P',
        }
    }
}

/// `job_id \0 kind \0`: the prefix of one of a job's lists.
fn item_prefix(job: &str, kind: ItemKind) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.len() + 3);
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.push(kind.byte());
    k.push(0);
    k
}

fn seq_key(job: &str, kind: ItemKind, seq: u64) -> Vec<u8> {
    let mut k = item_prefix(job, kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn pin_key(blob: &str, job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(blob.len() + job.len() + 1);
    k.extend_from_slice(blob.as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

fn seen_key(job: &str, input: &str) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Seen);
    k.extend_from_slice(input.as_bytes());
    k
}

fn reducer_key(job: &str, phase: u32, reducer: u32) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Reducer);
    k.extend_from_slice(&phase.to_be_bytes());
    k.extend_from_slice(&reducer.to_be_bytes());
    k
}

fn piece_prefix(job: &str, phase: u32, reducer: u32) -> Vec<u8> {
    let mut k = item_prefix(job, ItemKind::Piece);
    k.extend_from_slice(&phase.to_be_bytes());
    k.extend_from_slice(&reducer.to_be_bytes());
    k
}

/// The sequence number at the end of a list key.
fn seq_of(key: &[u8]) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| CatalogError::Corrupt("job list key without a sequence number".into()))
}

impl RocksCore {
    /// Entries under `prefix` strictly after `after` (a full key), at most
    /// `max`.
    pub(super) fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        after: Option<Vec<u8>>,
        max: usize,
    ) -> Result<Vec<super::core::KeyValue>> {
        let start = match after {
            Some(mut a) if a.as_slice() >= prefix => {
                a.push(0);
                a
            }
            _ => prefix.to_vec(),
        };
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(&start, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || out.len() >= max {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    pub(super) fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>> {
        self.get(CF_JOBS, &job_key(tenant, id))
    }

    pub(super) fn jobs(
        &self,
        tenant: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let prefix = tenant.map(|t| job_key(t, "")).unwrap_or_default();
        let after = after.map(|(t, j)| job_key(t, j));
        self.scan_prefix(CF_JOBS, &prefix, after, limit)?
            .into_iter()
            .map(|(_, v)| JobRecord::decode(&v))
            .collect()
    }

    pub(super) fn job_has_input(&self, job: &str, input: &str) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_JOB_ITEMS)?, seen_key(job, input))
            .map_err(db_err)?
            .is_some())
    }

    /// One page of a job list kept by sequence number.
    pub(super) fn job_list<R: Record>(
        &self,
        job: &str,
        kind: ItemKind,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, R)>> {
        let prefix = item_prefix(job, kind);
        let after = after.map(|s| seq_key(job, kind, s));
        self.scan_prefix(CF_JOB_ITEMS, &prefix, after, limit)?
            .into_iter()
            .map(|(k, v)| Ok((seq_of(&k)?, R::decode(&v)?)))
            .collect()
    }

    pub(super) fn job_reducer(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
    ) -> Result<Option<TaskRecord>> {
        self.get(CF_JOB_ITEMS, &reducer_key(job, phase, reducer))
    }

    pub(super) fn job_pieces<R: Record>(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, R)>> {
        let prefix = piece_prefix(job, phase, reducer);
        let after = after.map(|s| {
            let mut k = prefix.clone();
            k.extend_from_slice(&s.to_be_bytes());
            k
        });
        self.scan_prefix(CF_JOB_ITEMS, &prefix, after, limit)?
            .into_iter()
            .map(|(k, v)| Ok((seq_of(&k)?, R::decode(&v)?)))
            .collect()
    }

    /// Drops up to `max` of the job's pins in one synced batch.
    pub(super) fn release_pins(&self, job: &str, max: usize) -> Result<usize> {
        let _g = self.lock()?;
        let prefix = item_prefix(job, ItemKind::Pin);
        let page = self.scan_prefix(CF_JOB_ITEMS, &prefix, None, max)?;
        let mut b = WriteBatch::default();
        for (k, _) in &page {
            let blob = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            b.delete_cf(self.cf(CF_JOB_ITEMS)?, k);
            b.delete_cf(self.cf(CF_PINS)?, pin_key(&blob, job));
        }
        if !page.is_empty() {
            self.commit(b)?;
        }
        Ok(page.len())
    }

    /// Whether the job still pins any blob.
    pub(super) fn job_has_pins(&self, job: &str) -> Result<bool> {
        let prefix = item_prefix(job, ItemKind::Pin);
        Ok(!self.scan_prefix(CF_JOB_ITEMS, &prefix, None, 1)?.is_empty())
    }

    /// Applies a job change as one synced batch: its job-state writes, the
    /// output objects it publishes (each into the very bucket record it was
    /// checked against) and object deletions.
    pub(super) fn job_commit(&self, change: JobChange) -> Result<()> {
        let _g = self.lock()?;
        if let Some((tenant, job)) = &change.require_running {
            // Under the lock every job change takes: its end cannot slip
            // in between.
            if self.job(tenant, job)?.is_none_or(|r| r.state.is_final()) {
                return Err(CatalogError::Conflict(format!("job {job} has ended")));
            }
        }
        let mut b = WriteBatch::default();
        for (bucket, key, rec) in &change.objects {
            self.put_object_into(
                &mut b,
                &bucket.name,
                key,
                rec,
                Some(bucket),
                &WriteCondition::None,
            )?;
        }
        for (bucket, key) in &change.delete_objects {
            let k = object_key(bucket, key);
            if let Some(old) = self.get::<ObjectRecord>(CF_OBJECTS, &k)? {
                self.queue_gc(&mut b, &old.blob)?;
                b.delete_cf(self.cf(CF_OBJECTS)?, &k);
            }
        }
        let items = self.cf(CF_JOB_ITEMS)?;
        for w in &change.writes {
            match w {
                JobWrite::Job(rec) => b.put_cf(
                    self.cf(CF_JOBS)?,
                    job_key(&rec.tenant, &rec.id),
                    rec.encode(),
                ),
                JobWrite::Input(job, seq, rec) => {
                    b.put_cf(items, seen_key(job, &rec.input), []);
                    b.put_cf(items, seq_key(job, ItemKind::Input, *seq), rec.encode());
                }
                JobWrite::FailedInput(job, seq, rec) => b.put_cf(
                    items,
                    seq_key(job, ItemKind::FailedInput, *seq),
                    rec.encode(),
                ),
                JobWrite::Task(job, seq, rec) => {
                    b.put_cf(items, seq_key(job, ItemKind::Task, *seq), rec.encode())
                }
                JobWrite::Reducer(job, rec) => {
                    let r = rec.reducer.ok_or_else(|| {
                        CatalogError::Corrupt(format!("reducer task {} without a number", rec.id))
                    })?;
                    b.put_cf(items, reducer_key(job, rec.phase, r), rec.encode())
                }
                JobWrite::Piece(job, phase, reducer, seq, rec) => {
                    let mut k = piece_prefix(job, *phase, *reducer);
                    k.extend_from_slice(&seq.to_be_bytes());
                    b.put_cf(items, k, rec.encode())
                }
                JobWrite::Output(job, seq, rec) => {
                    b.put_cf(items, seq_key(job, ItemKind::Output, *seq), rec.encode())
                }
                JobWrite::Error(job, seq, rec) => {
                    b.put_cf(items, seq_key(job, ItemKind::Error, *seq), rec.encode())
                }
                // Released in this very change: nothing to keep.
                JobWrite::Pin(job, _) if change.release.as_ref() == Some(job) => {}
                JobWrite::Pin(job, blob) => {
                    let mut k = item_prefix(job, ItemKind::Pin);
                    k.extend_from_slice(blob.id.as_bytes());
                    b.put_cf(items, k, []);
                    b.put_cf(
                        self.cf(CF_PINS)?,
                        pin_key(&blob.id, job),
                        PinRecord { blob: blob.clone() }.encode(),
                    );
                }
            }
        }
        // An ended job's pins go with its lease.
        if let Some(job) = &change.release {
            let prefix = item_prefix(job, ItemKind::Pin);
            let mut after = None;
            loop {
                let page = self.scan_prefix(CF_JOB_ITEMS, &prefix, after.clone(), 1024)?;
                for (k, _) in &page {
                    let blob = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                    b.delete_cf(items, k);
                    b.delete_cf(self.cf(CF_PINS)?, pin_key(&blob, job));
                }
                match page.last() {
                    Some((k, _)) if page.len() == 1024 => after = Some(k.to_vec()),
                    _ => break,
                }
            }
        }
        self.commit(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys_sort_by_sequence_and_stay_inside_their_job() {
        let a = seq_key("j1", ItemKind::Task, 2);
        let b = seq_key("j1", ItemKind::Task, 10);
        assert!(a < b);
        assert!(a.starts_with(&item_prefix("j1", ItemKind::Task)));
        assert!(!a.starts_with(&item_prefix("j1", ItemKind::Input)));
        assert!(!seq_key("j10", ItemKind::Task, 0).starts_with(&item_prefix("j1", ItemKind::Task)));
        assert_eq!(seq_of(&b).unwrap(), 10);
    }
}
