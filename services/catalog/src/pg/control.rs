//! Coordination between gateways on PostgreSQL (`ControlStore`). Each
//! operation is one statement; expiries use the database's clock. Taking
//! a job lease updates (locks) its row, and every fenced job commit reads
//! the row `FOR SHARE` first: a taking and a commit are ordered, and a
//! commit after a taking sees the raised epoch and is refused.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{pg_err, PgCatalog};
use crate::control::*;
use crate::{CatalogError, Result};

fn lease(row: &Row) -> JobLease {
    JobLease {
        tenant: row.get(0),
        job: row.get(1),
        owner: row.get(2),
        epoch: row.get::<_, i64>(3) as u64,
    }
}

#[async_trait]
impl ControlStore for PgCatalog {
    fn is_shared(&self) -> bool {
        true
    }

    async fn now_ms(&self) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_one("SELECT insitu_now_ms()", &[])
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    async fn gateway_beat(&self, beat: &GatewayBeat) -> Result<()> {
        let load =
            serde_json::to_string(&beat.load).map_err(|e| CatalogError::Db(e.to_string()))?;
        self.write(
            "INSERT INTO gateways (id, addr, seen_ms, load) VALUES ($1, $2, insitu_now_ms(), $3)
             ON CONFLICT (id) DO UPDATE
                 SET addr = EXCLUDED.addr, seen_ms = EXCLUDED.seen_ms, load = EXCLUDED.load",
            &[&beat.id, &beat.addr, &load],
        )
        .await?;
        Ok(())
    }

    async fn gateways(&self, within_ms: i64) -> Result<Vec<GatewayInfo>> {
        let client = self.client().await?;
        // Gateways silent for a day are gone for good, and the intents of
        // gateways that died holding them have expired.
        for sql in [
            "DELETE FROM gateways WHERE seen_ms < insitu_now_ms() - 86400000",
            "DELETE FROM blob_intents WHERE expires_ms < insitu_now_ms()",
        ] {
            client.execute(sql, &[]).await.map_err(pg_err)?;
        }
        let rows = client
            .query(
                "SELECT id, addr, insitu_now_ms() - seen_ms, load FROM gateways
                 WHERE seen_ms >= insitu_now_ms() - $1 ORDER BY id",
                &[&within_ms],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| GatewayInfo {
                id: r.get(0),
                addr: r.get(1),
                age_ms: r.get(2),
                // A load this build cannot read counts as none.
                load: serde_json::from_str(r.get(3)).unwrap_or_default(),
            })
            .collect())
    }

    async fn gateway_gone(&self, id: &str) -> Result<()> {
        let client = self.client().await?;
        for sql in [
            "UPDATE job_leases SET expires_ms = 0 WHERE owner = $1",
            "DELETE FROM leases WHERE holder = $1",
            "DELETE FROM blob_intents WHERE holder = $1",
            "DELETE FROM gateways WHERE id = $1",
        ] {
            client.execute(sql, &[&id]).await.map_err(pg_err)?;
        }
        Ok(())
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<u64>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "INSERT INTO leases (name, holder, epoch, expires_ms)
                     VALUES ($1, $2, 1, insitu_now_ms() + $3)
                 ON CONFLICT (name) DO UPDATE
                     SET holder = EXCLUDED.holder,
                         expires_ms = EXCLUDED.expires_ms,
                         epoch = CASE WHEN leases.holder = EXCLUDED.holder
                                      THEN leases.epoch ELSE leases.epoch + 1 END
                     WHERE leases.holder = EXCLUDED.holder
                        OR leases.expires_ms < insitu_now_ms()
                 RETURNING epoch",
                &[&name, &holder, &ttl_ms],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn renew_job_leases(&self, owner: &str, ttl_ms: i64) -> Result<Vec<JobLease>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE job_leases SET expires_ms = insitu_now_ms() + $2 WHERE owner = $1
                 RETURNING tenant, job, owner, epoch",
                &[&owner, &ttl_ms],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(lease).collect())
    }

    async fn claim_jobs(&self, owner: &str, ttl_ms: i64, limit: usize) -> Result<Vec<JobLease>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE job_leases SET owner = $1, epoch = epoch + 1,
                                       expires_ms = insitu_now_ms() + $2
                 WHERE job IN (SELECT job FROM job_leases
                               WHERE expires_ms < insitu_now_ms()
                               ORDER BY expires_ms LIMIT $3
                               FOR UPDATE SKIP LOCKED)
                   AND expires_ms < insitu_now_ms()
                 RETURNING tenant, job, owner, epoch",
                &[&owner, &ttl_ms, &(limit.min(100_000) as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(lease).collect())
    }

    async fn job_lease(&self, job: &str) -> Result<Option<(JobLease, bool)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT tenant, job, owner, epoch, expires_ms < insitu_now_ms()
                 FROM job_leases WHERE job = $1",
                &[&job],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| (lease(&r), r.get(4))))
    }

    async fn hold_intents(&self, holder: &str, ids: &[String], ttl_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(
            "INSERT INTO blob_intents (blob_id, holder, expires_ms)
                 SELECT id, $2, insitu_now_ms() + $3 FROM unnest($1::text[]) AS id
             ON CONFLICT (blob_id, holder) DO UPDATE SET expires_ms = EXCLUDED.expires_ms",
            &[&ids, &holder, &ttl_ms],
        )
        .await?;
        Ok(())
    }

    async fn release_intents(&self, holder: &str, ids: &[String]) -> Result<()> {
        let client = self.client().await?;
        if !ids.is_empty() {
            client
                .execute(
                    "DELETE FROM blob_intents WHERE holder = $2 AND blob_id = ANY($1::text[])",
                    &[&ids, &holder],
                )
                .await
                .map_err(pg_err)?;
        }
        Ok(())
    }

    async fn has_intent(&self, blob_id: &str) -> Result<bool> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM blob_intents WHERE blob_id = $1 AND expires_ms >= insitu_now_ms()
                 LIMIT 1",
                &[&blob_id],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.is_some())
    }

    async fn node_seen(&self, id: &str, report: &str) -> Result<()> {
        self.write(
            "INSERT INTO node_seen (id, seen_ms, report) VALUES ($1, insitu_now_ms(), $2)
             ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms, report = EXCLUDED.report",
            &[&id, &report],
        )
        .await?;
        Ok(())
    }

    async fn node_reports(&self) -> Result<Vec<NodeReport>> {
        let client = self.client().await?;
        // Nodes silent for a day are gone (or removed).
        client
            .execute(
                "DELETE FROM node_seen WHERE seen_ms < insitu_now_ms() - 86400000",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(
                "SELECT id, insitu_now_ms() - seen_ms, report FROM node_seen ORDER BY id",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| NodeReport {
                id: r.get(0),
                age_ms: r.get(1),
                report: r.get(2),
            })
            .collect())
    }
}
