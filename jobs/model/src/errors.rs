//! Job error codes (as in Manta) and spec validation errors.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The code of a job error record, or of a refused jobs-API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobErrorCode {
    UserTaskError,
    TaskKilledError,
    TaskTimeoutError,
    ResourceNotFoundError,
    AccessDeniedError,
    InvalidArgumentError,
    ImageNotFoundError,
    JobCancelledError,
    InternalError,
}

impl JobErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserTaskError => "UserTaskError",
            Self::TaskKilledError => "TaskKilledError",
            Self::TaskTimeoutError => "TaskTimeoutError",
            Self::ResourceNotFoundError => "ResourceNotFoundError",
            Self::AccessDeniedError => "AccessDeniedError",
            Self::InvalidArgumentError => "InvalidArgumentError",
            Self::ImageNotFoundError => "ImageNotFoundError",
            Self::JobCancelledError => "JobCancelledError",
            Self::InternalError => "InternalError",
        }
    }

    /// Internal failures are retried on another replica holder; a user's
    /// own failure is not.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::InternalError)
    }
}

/// A spec that cannot run. Always an `InvalidArgumentError`; the message
/// names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> JobErrorCode {
        JobErrorCode::InvalidArgumentError
    }
}
