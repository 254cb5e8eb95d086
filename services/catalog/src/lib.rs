//! The catalog: every piece of cluster metadata, behind one typed, async
//! interface (`api`), with the backends that keep it.
//!
//! Callers hold an `Arc<dyn Catalog>`. They see domain records and one
//! error enum; each backend owns its key layout, its transactions and the
//! derived indexes (the blob owner index and the GC queue), which it keeps
//! in the same atomic write as the change that implies them.

mod acl;
mod api;
mod control;
mod error;
mod listing;
mod pg;
mod records;
mod rocks;
#[doc(hidden)]
pub mod testing;

use std::path::Path;
use std::sync::Arc;

pub use acl::{access, Acl, Grant, Grantee, Permission, Requester};
pub use api::*;
pub use control::*;
pub use error::{CatalogError, Result};
pub use pg::{PgCatalog, SCHEMA_VERSION};
pub use records::*;
pub use rocks::RocksCatalog;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Opens the catalog a URL names: `rocksdb:PATH` (the embedded backend)
/// or `postgresql://user[:password]@host:port/db` (the shared one, with a
/// pool of `pool_size` connections; its schema is migrated first).
pub async fn open(url: &str, pool_size: usize) -> Result<Arc<dyn Catalog>> {
    if let Some(path) = url.strip_prefix("rocksdb:") {
        if path.is_empty() {
            return Err(CatalogError::BadUrl("rocksdb: needs a path".into()));
        }
        let path = std::path::PathBuf::from(path);
        return tokio::task::spawn_blocking(move || open_rocksdb(&path))
            .await
            .map_err(|e| CatalogError::Db(e.to_string()))?;
    }
    if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        return Ok(Arc::new(PgCatalog::connect(url, pool_size).await?));
    }
    Err(CatalogError::BadUrl(format!(
        "catalog URL must be rocksdb:PATH or postgresql://user@host:port/db, got {:?}",
        url.split_once("://").map_or(url, |(scheme, _)| scheme)
    )))
}

/// Opens the embedded rocksdb catalog at `path`.
pub fn open_rocksdb(path: &Path) -> Result<Arc<dyn Catalog>> {
    Ok(Arc::new(RocksCatalog::open(path)?))
}
