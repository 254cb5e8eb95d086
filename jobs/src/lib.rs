//! Job model, planner and supervisor for insitu map/reduce jobs.
//!
//! Empty until the jobs issue lands: the object store comes first.
