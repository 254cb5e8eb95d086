//! The catalog: every piece of cluster metadata, behind one typed, async
//! interface (`api`), with the backends that keep it.
//!
//! Callers hold an `Arc<dyn Catalog>`. They see domain records and one
//! error enum; each backend owns its key layout, its transactions and the
//! derived indexes (the blob owner index and the GC queue), which it keeps
//! in the same atomic write as the change that implies them.

mod api;
mod error;
mod listing;
mod pg;
mod records;
mod rocks;
#[doc(hidden)]
pub mod testing;

use std::path::Path;
use std::sync::Arc;

pub use api::*;
pub use error::{CatalogError, Result};
pub use pg::{PgCatalog, SCHEMA_VERSION};
pub use records::*;
pub use rocks::RocksCatalog;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Opens the embedded rocksdb catalog at `path`.
pub fn open_rocksdb(path: &Path) -> Result<Arc<dyn Catalog>> {
    Ok(Arc::new(RocksCatalog::open(path)?))
}
