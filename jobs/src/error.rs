//! The supervisor's errors, which the jobs API maps to its JSON codes in
//! one place.

use insitu_catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error("job {0} does not exist")]
    NotFound(String),
    /// An object the job names (an asset) does not exist.
    #[error("{0}")]
    MissingObject(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("the tenant already has {0} jobs that have not ended (the limit)")]
    TooManyJobs(u32),
    /// Not now: the job changes hands, or the catalog is away.
    #[error("{0}")]
    Unavailable(String),
    /// The job is driven by a peer gateway at this address; the API
    /// forwards the call there.
    #[error("job is driven by the gateway at {0}")]
    Elsewhere(String),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

/// A commit refused because another gateway took the job meanwhile.
pub(crate) fn lost(e: CatalogError) -> JobError {
    match e {
        CatalogError::Fenced(id) => {
            JobError::Unavailable(format!("job {id} moved to another gateway; retry"))
        }
        e => JobError::Catalog(e),
    }
}
