//! The one error type every catalog backend answers with.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CatalogError {
    /// The backing store failed in a way that retrying will not fix.
    #[error("catalog store: {0}")]
    Db(String),
    /// The backing store cannot be reached now (a database that is down or
    /// failing over). Callers answer 503 and the client retries.
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    /// A concurrent writer won; the operation changed nothing and may be
    /// retried from the start.
    #[error("catalog write conflict: {0}")]
    Conflict(String),
    /// A catalog URL this build cannot open.
    #[error("{0}")]
    BadUrl(String),
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
    /// A job change made under a lease another gateway has taken since.
    #[error("job {0} is now driven by another gateway")]
    Fenced(String),
    /// A conditional write (`If-Match`) found no object under the key.
    #[error("no object under the key {0}")]
    NoSuchKey(String),
    #[error("a write precondition did not hold")]
    PreconditionFailed,
    /// The database was written by a newer insitu: refused untouched.
    #[error(
        "the catalog schema is version {found}, newer than this build's {known}; upgrade insitu"
    )]
    SchemaTooNew { found: i32, known: i32 },
}

impl CatalogError {
    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict(_))
    }
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
