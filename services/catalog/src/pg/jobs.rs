//! Job state on PostgreSQL: the `jobs` table, and each job's lists in
//! `job_items`, keyed by kind and an order key (a big-endian sequence
//! number, or phase and reducer numbers).

use insitu_job_model::records::{JobRecord, TaskRecord};

use super::ops::{delete_object_in, in_tx, put_object_into};
use super::{pg_err, PgCatalog};
use crate::api::{JobChange, JobWrite};
use crate::listing::increment;
use crate::records::{PinRecord, Record};
use crate::{CatalogError, Result, WriteCondition};

pub(super) const INPUT: i8 = b'i' as i8;
pub(super) const FAILED_INPUT: i8 = b'f' as i8;
pub(super) const TASK: i8 = b't' as i8;
pub(super) const REDUCER: i8 = b'R' as i8;
pub(super) const PIECE: i8 = b'p' as i8;
pub(super) const OUTPUT: i8 = b'o' as i8;
pub(super) const ERROR: i8 = b'e' as i8;

fn seq(s: u64) -> Vec<u8> {
    s.to_be_bytes().to_vec()
}

fn reducer_k(phase: u32, reducer: u32) -> Vec<u8> {
    let mut k = phase.to_be_bytes().to_vec();
    k.extend_from_slice(&reducer.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Result<u64> {
    k.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| CatalogError::Corrupt("job list key without a sequence number".into()))
}

impl PgCatalog {
    /// One page of a job list under `prefix` after sequence `after`.
    pub(super) async fn job_list<R: Record>(
        &self,
        job: &str,
        kind: i8,
        prefix: Vec<u8>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, R)>> {
        let from = match after {
            Some(s) => {
                let mut k = prefix.clone();
                k.extend_from_slice(&s.to_be_bytes());
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut end = prefix;
        increment(&mut end);
        let limit = limit as i64;
        let client = self.pool.get().await.map_err(super::pool_err)?;
        let rows = client
            .query(
                "SELECT k, rec FROM job_items
                 WHERE job = $1 AND kind = $2 AND k >= $3 AND ($4::bytea = '' OR k < $4)
                 ORDER BY k LIMIT $5",
                &[&job, &kind, &from, &end, &limit],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    seq_of(row.get::<_, &[u8]>(0))?,
                    R::decode(row.get::<_, &[u8]>(1))?,
                ))
            })
            .collect()
    }

    pub(super) async fn job_reducer(
        &self,
        job: &str,
        phase: u32,
        reducer: u32,
    ) -> Result<Option<TaskRecord>> {
        self.read_one(
            "SELECT rec FROM job_items WHERE job = $1 AND kind = $2 AND k = $3",
            &[&job, &REDUCER, &reducer_k(phase, reducer)],
        )
        .await
    }

    pub(super) fn piece_prefix(phase: u32, reducer: u32) -> Vec<u8> {
        reducer_k(phase, reducer)
    }

    pub(super) async fn jobs_after(
        &self,
        tenant: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let limit = limit as i64;
        let (t, j) = after.unwrap_or(("", ""));
        match tenant {
            Some(tenant) => {
                self.read_many(
                    "SELECT rec FROM jobs WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
                    &[&tenant, &j, &limit],
                )
                .await
            }
            None if after.is_none() => {
                self.read_many("SELECT rec FROM jobs ORDER BY tenant, id LIMIT $1", &[&limit])
                    .await
            }
            None => {
                self.read_many(
                    "SELECT rec FROM jobs WHERE (tenant, id) > ($1, $2) ORDER BY tenant, id LIMIT $3",
                    &[&t, &j, &limit],
                )
                .await
            }
        }
    }

    /// Drops up to `max` of the job's pins.
    pub(super) async fn release_pins(&self, job: &str, max: usize) -> Result<usize> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM job_pins WHERE (blob_id, job) IN
                   (SELECT blob_id, job FROM job_pins WHERE job = $1 LIMIT $2)",
                &[&job, &(max as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(n as usize)
    }

    /// READ COMMITTED with row locks, like every object write (see
    /// `ops.rs`): a job's own rows have one writer, its fenced owner.
    pub(super) async fn job_commit(&self, change: JobChange) -> Result<()> {
        in_tx!(self, ReadCommitted, |tx| {
            if let Some((tenant, job)) = &change.require_running {
                // FOR SHARE: the change that ends the job (an UPDATE of
                // this row) waits for this one, or this sees it ended.
                let row = tx
                    .query_opt(
                        "SELECT rec FROM jobs WHERE tenant = $1 AND id = $2 FOR SHARE",
                        &[tenant, job],
                    )
                    .await
                    .map_err(pg_err)?;
                let running = match row {
                    Some(r) => !JobRecord::decode(r.get::<_, &[u8]>(0))?.state.is_final(),
                    None => false,
                };
                if !running {
                    return Err(CatalogError::Conflict(format!("job {job} has ended")));
                }
            }
            if let Some((job, owner, epoch)) = &change.fence {
                // FOR SHARE: a taker's UPDATE waits for this commit, or
                // this waits for the taker and then sees its epoch.
                let row = tx
                    .query_opt(
                        "SELECT owner, epoch FROM job_leases WHERE job = $1 FOR SHARE",
                        &[job],
                    )
                    .await
                    .map_err(pg_err)?;
                let holds = row.is_some_and(|r| {
                    r.get::<_, &str>(0) == owner && r.get::<_, i64>(1) as u64 == *epoch
                });
                if !holds {
                    return Err(CatalogError::Fenced(job.clone()));
                }
            }
            if let Some((tenant, job, owner, ttl_ms)) = &change.new_lease {
                tx.execute(
                    "INSERT INTO job_leases (job, tenant, owner, epoch, expires_ms)
                     VALUES ($1, $2, $3, 1, insitu_now_ms() + $4)",
                    &[job, tenant, owner, ttl_ms],
                )
                .await
                .map_err(pg_err)?;
            }
            if let Some(job) = &change.release {
                tx.execute("DELETE FROM job_leases WHERE job = $1", &[job])
                    .await
                    .map_err(pg_err)?;
            }
            for (bucket, key, rec) in &change.objects {
                put_object_into(
                    &tx,
                    &bucket.name,
                    key,
                    rec,
                    Some(bucket),
                    &WriteCondition::None,
                )
                .await?;
            }
            for (bucket, key) in &change.delete_objects {
                delete_object_in(&tx, bucket, key).await?;
            }
            for w in &change.writes {
                let (job, kind, k, rec) = match w {
                    JobWrite::Job(rec) => {
                        tx.execute(
                            "INSERT INTO jobs (tenant, id, rec) VALUES ($1, $2, $3)
                             ON CONFLICT (tenant, id) DO UPDATE SET rec = EXCLUDED.rec",
                            &[&rec.tenant, &rec.id, &rec.encode()],
                        )
                        .await
                        .map_err(pg_err)?;
                        continue;
                    }
                    JobWrite::Input(job, s, rec) => {
                        tx.execute(
                            "INSERT INTO job_inputs_seen (job, input) VALUES ($1, $2)
                             ON CONFLICT DO NOTHING",
                            &[job, &rec.input.as_bytes()],
                        )
                        .await
                        .map_err(pg_err)?;
                        (job, INPUT, seq(*s), rec.encode())
                    }
                    JobWrite::FailedInput(job, s, rec) => {
                        (job, FAILED_INPUT, seq(*s), rec.encode())
                    }
                    JobWrite::Task(job, s, rec) => (job, TASK, seq(*s), rec.encode()),
                    JobWrite::Reducer(job, rec) => {
                        let r = rec.reducer.ok_or_else(|| {
                            CatalogError::Corrupt(format!(
                                "reducer task {} without a number",
                                rec.id
                            ))
                        })?;
                        (job, REDUCER, reducer_k(rec.phase, r), rec.encode())
                    }
                    JobWrite::Piece(job, phase, reducer, s, rec) => {
                        let mut k = reducer_k(*phase, *reducer);
                        k.extend_from_slice(&s.to_be_bytes());
                        (job, PIECE, k, rec.encode())
                    }
                    JobWrite::Output(job, s, rec) => (job, OUTPUT, seq(*s), rec.encode()),
                    JobWrite::Error(job, s, rec) => (job, ERROR, seq(*s), rec.encode()),
                    JobWrite::Pin(job, blob) => {
                        let rec = PinRecord { blob: blob.clone() }.encode();
                        tx.execute(
                            "INSERT INTO job_pins (blob_id, job, rec) VALUES ($1, $2, $3)
                             ON CONFLICT (blob_id, job) DO NOTHING",
                            &[&blob.id, job, &rec],
                        )
                        .await
                        .map_err(pg_err)?;
                        continue;
                    }
                };
                tx.execute(
                    "INSERT INTO job_items (job, kind, k, rec) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (job, kind, k) DO UPDATE SET rec = EXCLUDED.rec",
                    &[job, &kind, &k, &rec],
                )
                .await
                .map_err(pg_err)?;
            }
            // An ended job's pins go with its lease.
            if let Some(job) = &change.release {
                tx.execute("DELETE FROM job_pins WHERE job = $1", &[job])
                    .await
                    .map_err(pg_err)?;
            }
            Ok(())
        })
    }
}
