//! The job model for insitu map/reduce jobs: the spec a tenant submits and
//! its validation, the durable records a job keeps in the catalog, and the
//! planning decisions (placement, routing to reducers, output names).
//!
//! It is its own crate because the catalog stores these records and the
//! storage node routes by the same plan, while the supervisor (`insitu-jobs`,
//! which re-exports this crate) drives jobs over the catalog.

pub mod errors;
pub mod limits;
pub mod plan;
pub mod records;
pub mod spec;

pub use errors::{JobErrorCode, SpecError};
pub use spec::{ImageRef, JobSpec, Partition, PhaseKind, PhaseSpec};
