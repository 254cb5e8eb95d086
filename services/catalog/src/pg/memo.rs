//! Memoized tasks on PostgreSQL: `job_memo` (one row per tenant and
//! fingerprint), `job_memo_counts` (each tenant's number of rows) and
//! `job_memo_blobs` (the output blobs each entry names).

use insitu_job_model::records::MemoRecord;

use super::ops::in_tx;
use super::{pg_err, PgCatalog};
use crate::records::Record;
use crate::Result;

impl PgCatalog {
    pub(super) async fn memo_get(
        &self,
        tenant: &str,
        fingerprint: &str,
    ) -> Result<Option<MemoRecord>> {
        self.read_one(
            "SELECT rec FROM job_memo WHERE tenant = $1 AND fingerprint = $2",
            &[&tenant, &fingerprint],
        )
        .await
    }

    pub(super) async fn memo_put(
        &self,
        tenant: &str,
        fingerprint: &str,
        rec: &MemoRecord,
        cap: usize,
    ) -> Result<()> {
        let bytes = rec.encode();
        let blobs: Vec<String> = rec.outputs.iter().map(|o| o.blob.clone()).collect();
        let cap = cap.min(i64::MAX as usize) as i64;
        // READ COMMITTED with row locks, the tenant's count row first in
        // every change (here and in `memo_delete`), so that concurrent
        // changes of one tenant queue on it instead of conflicting.
        in_tx!(self, ReadCommitted, |tx| {
            tx.execute(
                "INSERT INTO job_memo_counts (tenant, n) VALUES ($1, 0)
                 ON CONFLICT (tenant) DO UPDATE SET n = job_memo_counts.n",
                &[&tenant],
            )
            .await
            .map_err(pg_err)?;
            let inserted: bool = tx
                .query_one(
                    "INSERT INTO job_memo (tenant, fingerprint, created_ms, rec)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant, fingerprint)
                     DO UPDATE SET created_ms = EXCLUDED.created_ms, rec = EXCLUDED.rec
                     RETURNING (xmax = 0)",
                    &[&tenant, &fingerprint, &rec.created_ms, &bytes],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            // The entry's output blobs, indexed anew.
            tx.execute(
                "DELETE FROM job_memo_blobs WHERE tenant = $1 AND fingerprint = $2",
                &[&tenant, &fingerprint],
            )
            .await
            .map_err(pg_err)?;
            tx.execute(
                "INSERT INTO job_memo_blobs (blob, tenant, fingerprint)
                 SELECT b, $2, $3 FROM unnest($1::text[]) AS b
                 ON CONFLICT DO NOTHING",
                &[&blobs, &tenant, &fingerprint],
            )
            .await
            .map_err(pg_err)?;
            if inserted {
                let n: i64 = tx
                    .query_one(
                        "INSERT INTO job_memo_counts (tenant, n) VALUES ($1, 1)
                         ON CONFLICT (tenant) DO UPDATE SET n = job_memo_counts.n + 1
                         RETURNING n",
                        &[&tenant],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0);
                if n > cap {
                    // The oldest go, never the one just written.
                    let gone = tx
                        .execute(
                            "DELETE FROM job_memo WHERE (tenant, fingerprint) IN
                               (SELECT tenant, fingerprint FROM job_memo
                                WHERE tenant = $1 AND fingerprint <> $2
                                ORDER BY created_ms, fingerprint LIMIT $3)",
                            &[&tenant, &fingerprint, &(n - cap)],
                        )
                        .await
                        .map_err(pg_err)? as i64;
                    tx.execute(
                        "UPDATE job_memo_counts SET n = n - $2 WHERE tenant = $1",
                        &[&tenant, &gone],
                    )
                    .await
                    .map_err(pg_err)?;
                }
            }
            Ok(())
        })
    }

    pub(super) async fn memo_delete(
        &self,
        tenant: &str,
        fingerprint: &str,
        written_ms: Option<i64>,
    ) -> Result<()> {
        self.drop_counted(
            tenant,
            "DELETE FROM job_memo WHERE tenant = $1 AND fingerprint = $2
               AND ($3::bigint IS NULL OR created_ms = $3)",
            &[&tenant, &fingerprint, &written_ms],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn memo_forget_blob(&self, blob: &str) -> Result<usize> {
        let tenants: Vec<String> = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT tenant FROM job_memo_blobs WHERE blob = $1",
                &[&blob],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = 0usize;
        for tenant in &tenants {
            dropped += self
                .drop_counted(
                    tenant,
                    "DELETE FROM job_memo WHERE tenant = $1 AND fingerprint IN
                       (SELECT fingerprint FROM job_memo_blobs
                        WHERE blob = $2 AND tenant = $1)",
                    &[&tenant, &blob],
                )
                .await? as usize;
        }
        Ok(dropped)
    }

    /// Deletes a tenant's entries with `delete` (its `$1` the tenant) and
    /// lowers the tenant's count by as many, in one transaction that, as
    /// every change of a tenant's entries, locks its count row first.
    /// Returns how many went.
    async fn drop_counted(
        &self,
        tenant: &str,
        delete: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<i64> {
        in_tx!(self, ReadCommitted, |tx| {
            tx.execute(
                "SELECT n FROM job_memo_counts WHERE tenant = $1 FOR UPDATE",
                &[&tenant],
            )
            .await
            .map_err(pg_err)?;
            let gone = tx.execute(delete, params).await.map_err(pg_err)? as i64;
            if gone > 0 {
                tx.execute(
                    "UPDATE job_memo_counts SET n = n - $2 WHERE tenant = $1",
                    &[&tenant, &gone],
                )
                .await
                .map_err(pg_err)?;
            }
            Ok(gone)
        })
    }
}
