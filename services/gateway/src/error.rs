//! S3 errors, and the one place where every failure becomes an S3 XML body.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use insitu_catalog::CatalogError;

/// The standard S3 error codes this gateway returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3ErrorCode {
    AccessDenied,
    AccessForbidden,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    BadDigest,
    BadRequest,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    EntityTooLarge,
    EntityTooSmall,
    IncompleteBody,
    InternalError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidBucketName,
    InvalidDigest,
    InvalidPart,
    InvalidPartOrder,
    InvalidPolicyDocument,
    InvalidRange,
    InvalidRequest,
    KeyTooLongError,
    MalformedAclError,
    MalformedPostRequest,
    MalformedXml,
    MetadataTooLarge,
    MethodNotAllowed,
    MissingContentLength,
    NoSuchBucket,
    NoSuchCorsConfiguration,
    NoSuchKey,
    NoSuchUpload,
    NoSuchVersion,
    UnresolvableGrantByEmailAddress,
    NotImplemented,
    OperationAborted,
    PreconditionFailed,
    RequestTimeTooSkewed,
    ServiceUnavailable,
    SignatureDoesNotMatch,
    SlowDown,
    XAmzContentSha256Mismatch,
}

impl S3ErrorCode {
    pub fn as_str(self) -> &'static str {
        use S3ErrorCode::*;
        match self {
            AccessDenied => "AccessDenied",
            AccessForbidden => "AccessForbidden",
            AuthorizationHeaderMalformed => "AuthorizationHeaderMalformed",
            AuthorizationQueryParametersError => "AuthorizationQueryParametersError",
            BadDigest => "BadDigest",
            BadRequest => "BadRequest",
            BucketAlreadyExists => "BucketAlreadyExists",
            BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            BucketNotEmpty => "BucketNotEmpty",
            EntityTooLarge => "EntityTooLarge",
            EntityTooSmall => "EntityTooSmall",
            IncompleteBody => "IncompleteBody",
            InternalError => "InternalError",
            InvalidAccessKeyId => "InvalidAccessKeyId",
            InvalidArgument => "InvalidArgument",
            InvalidBucketName => "InvalidBucketName",
            InvalidDigest => "InvalidDigest",
            InvalidPart => "InvalidPart",
            InvalidPartOrder => "InvalidPartOrder",
            InvalidPolicyDocument => "InvalidPolicyDocument",
            InvalidRange => "InvalidRange",
            InvalidRequest => "InvalidRequest",
            KeyTooLongError => "KeyTooLongError",
            MalformedAclError => "MalformedACLError",
            MalformedPostRequest => "MalformedPOSTRequest",
            MalformedXml => "MalformedXML",
            MetadataTooLarge => "MetadataTooLarge",
            MethodNotAllowed => "MethodNotAllowed",
            MissingContentLength => "MissingContentLength",
            NoSuchBucket => "NoSuchBucket",
            NoSuchCorsConfiguration => "NoSuchCORSConfiguration",
            NoSuchKey => "NoSuchKey",
            NoSuchUpload => "NoSuchUpload",
            NoSuchVersion => "NoSuchVersion",
            UnresolvableGrantByEmailAddress => "UnresolvableGrantByEmailAddress",
            NotImplemented => "NotImplemented",
            OperationAborted => "OperationAborted",
            PreconditionFailed => "PreconditionFailed",
            RequestTimeTooSkewed => "RequestTimeTooSkewed",
            ServiceUnavailable => "ServiceUnavailable",
            SignatureDoesNotMatch => "SignatureDoesNotMatch",
            SlowDown => "SlowDown",
            XAmzContentSha256Mismatch => "XAmzContentSHA256Mismatch",
        }
    }

    pub fn status(self) -> StatusCode {
        use S3ErrorCode::*;
        match self {
            AccessDenied
            | AccessForbidden
            | InvalidAccessKeyId
            | RequestTimeTooSkewed
            | SignatureDoesNotMatch => StatusCode::FORBIDDEN,
            BucketAlreadyExists | BucketAlreadyOwnedByYou | BucketNotEmpty | OperationAborted => {
                StatusCode::CONFLICT
            }
            NoSuchBucket | NoSuchCorsConfiguration | NoSuchKey | NoSuchUpload | NoSuchVersion => {
                StatusCode::NOT_FOUND
            }
            InvalidRange => StatusCode::RANGE_NOT_SATISFIABLE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            MissingContentLength => StatusCode::LENGTH_REQUIRED,
            PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            NotImplemented => StatusCode::NOT_IMPLEMENTED,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceUnavailable | SlowDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct S3Error {
    pub code: S3ErrorCode,
    pub message: String,
    pub resource: Option<String>,
}

impl S3Error {
    pub fn new(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            resource: None,
        }
    }

    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            S3ErrorCode::InternalError,
            "We encountered an internal error. Please try again.",
        )
    }

    pub fn access_denied() -> Self {
        Self::new(S3ErrorCode::AccessDenied, "Access Denied")
    }

    pub fn no_such_key(key: &str) -> Self {
        Self::new(S3ErrorCode::NoSuchKey, "The specified key does not exist.").with_resource(key)
    }

    pub fn no_such_bucket(bucket: &str) -> Self {
        Self::new(
            S3ErrorCode::NoSuchBucket,
            "The specified bucket does not exist",
        )
        .with_resource(bucket)
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(S3ErrorCode::InvalidArgument, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(S3ErrorCode::InvalidRequest, message)
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            S3ErrorCode::NotImplemented,
            format!("{what} is not implemented by insitu"),
        )
    }
}

impl From<CatalogError> for S3Error {
    fn from(e: CatalogError) -> Self {
        use S3ErrorCode::*;
        match e {
            CatalogError::BucketAlreadyExists(b) => S3Error::new(
                BucketAlreadyExists,
                "The requested bucket name is not available. The bucket namespace is shared by all users of the system.",
            )
            .with_resource(b),
            CatalogError::BucketAlreadyOwnedByYou(b) => S3Error::new(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it.",
            )
            .with_resource(b),
            CatalogError::NoSuchBucket(b) => S3Error::no_such_bucket(&b),
            CatalogError::BucketNotEmpty(b) => {
                S3Error::new(BucketNotEmpty, "The bucket you tried to delete is not empty").with_resource(b)
            }
            CatalogError::NoSuchUpload(u) => S3Error::new(
                NoSuchUpload,
                "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
            )
            .with_resource(u),
            CatalogError::NoSuchKey(k) => S3Error::no_such_key(&k),
            CatalogError::PreconditionFailed => {
                S3Error::new(PreconditionFailed, "At least one of the pre-conditions you specified did not hold")
            }
            // The database is down or failing over, or a writer kept
            // losing to concurrent ones: nothing changed, retry.
            e @ (CatalogError::Unavailable(_) | CatalogError::Conflict(_)) => {
                tracing::warn!(error = %e, "catalog unavailable");
                S3Error::new(
                    ServiceUnavailable,
                    "The service is unavailable. Please retry.",
                )
            }
            other => S3Error::internal(other),
        }
    }
}

/// An S3 error body.
#[derive(serde::Serialize)]
#[serde(rename = "Error")]
struct ErrorXml<'a> {
    #[serde(rename = "Code")]
    code: &'static str,
    #[serde(rename = "Message")]
    message: &'a str,
    #[serde(rename = "Resource", skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    #[serde(rename = "RequestId")]
    request_id: &'a str,
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let wire = ErrorXml {
            code: self.code.as_str(),
            message: &self.message,
            resource: self.resource.as_deref(),
            request_id: &request_id,
        };
        // Strings always serialise; were that ever not so, the answer
        // still names its code.
        let body = match quick_xml::se::to_string(&wire) {
            Ok(x) => format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{x}"),
            Err(_) => format!("<Error><Code>{}</Code></Error>", self.code.as_str()),
        };
        (
            status,
            [
                (header::CONTENT_TYPE, "application/xml".to_string()),
                (
                    header::HeaderName::from_static("x-amz-request-id"),
                    request_id,
                ),
            ],
            body,
        )
            .into_response()
    }
}

pub type S3Result<T> = Result<T, S3Error>;
