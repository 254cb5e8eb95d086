//! The shared backend: PostgreSQL, for several gateways on one catalog.
//!
//! This module holds the connection pool and the versioned schema: the
//! migrations in `migrations/` are applied in order at start, under an
//! advisory lock so that gateways starting together apply each once, and a
//! database whose schema is newer than this build is refused untouched.
//! `ops.rs` and `jobs.rs` hold the domain operations, `catalog.rs` the
//! trait implementations.

mod catalog;
mod control;
mod jobs;
mod memo;
mod ops;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::{CatalogError, Result};

/// The schema, one migration per version, applied in order.
const MIGRATIONS: [(i32, &str); 5] = [
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_control.sql")),
    (3, include_str!("migrations/0003_pins.sql")),
    (4, include_str!("migrations/0004_memo.sql")),
    (5, include_str!("migrations/0005_memo_blobs.sql")),
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Any number taken for the migration's advisory lock; the same in every
/// build.
const MIGRATION_LOCK: i64 = 0x1_5175_0001;

pub struct PgCatalog {
    pool: Pool,
    url: String,
}

/// A connection error: the database is down, refusing, or failing over.
pub(super) fn pg_err(e: tokio_postgres::Error) -> CatalogError {
    if e.as_db_error().is_none() {
        // Lost or refused connections are the database being away; other
        // client-side errors (a value that does not convert) are bugs.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        return if e.is_closed() || io || e.to_string().contains("connect") {
            CatalogError::Unavailable(e.to_string())
        } else {
            CatalogError::Db(e.to_string())
        };
    }
    match e.code().map(|c| c.code()) {
        // serialization_failure, deadlock_detected: another writer won.
        // unique_violation: a concurrent insert of the same row.
        Some("40001") | Some("40P01") | Some("23505") => CatalogError::Conflict(e.to_string()),
        // admin_shutdown, crash_shutdown, cannot_connect_now, read-only
        // (a standby promoted meanwhile).
        Some("57P01") | Some("57P02") | Some("57P03") | Some("25006") => {
            CatalogError::Unavailable(e.to_string())
        }
        // The server's own words, not just "db error".
        _ => CatalogError::Db(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        }),
    }
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> CatalogError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => CatalogError::Unavailable(other.to_string()),
    }
}

impl PgCatalog {
    /// Connects to `url` (`postgresql://user[:password]@host:port/db`),
    /// brings the schema up to date, and keeps a pool of `max_connections`.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CatalogError::BadUrl(format!("bad catalog URL: {e}")))?;
        let described = redact(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| CatalogError::Db(e.to_string()))?;
        let catalog = Self {
            url: described,
            pool,
        };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// The schema version the database holds now.
    pub async fn schema_version(&self) -> Result<i32> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one("SELECT version FROM insitu_schema", &[])
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS insitu_schema (version integer NOT NULL);
             INSERT INTO insitu_schema (version)
                 SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM insitu_schema);",
        )
        .await
        .map_err(pg_err)?;
        let current: i32 = tx
            .query_one("SELECT version FROM insitu_schema", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(CatalogError::SchemaTooNew {
                found: current,
                known: SCHEMA_VERSION,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await.map_err(pg_err)?;
            tx.execute("UPDATE insitu_schema SET version = $1", &[version])
                .await
                .map_err(pg_err)?;
            tracing::info!(version, "catalog schema migrated");
        }
        tx.commit().await.map_err(pg_err)
    }

    /// Where the catalog is, without its password, for logs.
    pub fn describe(&self) -> String {
        self.url.clone()
    }
}

/// The catalog's location for logs, from the parsed URL: never its
/// password, wherever the URL gave it (`user:pw@` or `?password=`).
fn redact(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    fn described(url: &str) -> String {
        super::redact(&url.parse().unwrap())
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        let d = described("postgresql://u:p%40ss@127.0.0.1:5432/db");
        assert_eq!(d, "postgresql://u@127.0.0.1:5432/db");
        let d = described("postgresql://127.0.0.1/db?user=u&password=secret");
        assert!(!d.contains("secret"), "{d}");
        assert_eq!(d, "postgresql://u@127.0.0.1:5432/db");
    }
}
