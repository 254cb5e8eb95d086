//! The job model for insitu map/reduce jobs: the spec a tenant submits,
//! its validation, and the error records jobs report.
//!
//! The planner and supervisor (which place map tasks on nodes holding
//! their inputs) build on this; they are not written yet.

pub mod errors;
pub mod limits;
pub mod spec;

pub use errors::{JobErrorCode, SpecError};
pub use spec::{ImageRef, JobSpec, Partition, PhaseKind, PhaseSpec};
