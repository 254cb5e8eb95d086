//! The job model for insitu map/reduce jobs: the spec a tenant submits and
//! its validation, the durable records a job keeps in the catalog, and the
//! planning decisions (placement, routing to reducers, output names).
//!
//! The supervisor that drives jobs with these lives in the gateway, next to
//! the node set it dispatches to (see docs/ARCHITECTURE.md).

pub mod errors;
pub mod limits;
pub mod plan;
pub mod records;
pub mod spec;

pub use errors::{JobErrorCode, SpecError};
pub use spec::{ImageRef, JobSpec, Partition, PhaseKind, PhaseSpec};
