//! The S3 protocol: parse, authorize, call into the catalog and nodes.
//! One file per family of operations; this file routes.

pub(crate) mod access;
mod acl;
mod attributes;
mod bucket;
mod copy;
pub mod cors;
#[doc(hidden)]
pub mod fuzz;
mod get;
mod list;
mod multipart;
mod post_object;
pub(crate) mod put;
mod versioning;
pub mod xml;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::auth::chunked::{ChunkedDecoder, Trailers};
use crate::auth::{Authenticated, PayloadCheck, Principal};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::Gateway;

/// A parsed, authenticated S3 request.
pub struct S3Request {
    pub method: Method,
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub auth: Authenticated,
    /// In a mutex only so that `&S3Request` is `Sync` and can be held
    /// across awaits; the body is taken exactly once.
    pub body: std::sync::Mutex<Option<Body>>,
    /// Trailer headers of an aws-chunked body, filled in as it is decoded.
    pub trailers: Trailers,
}

impl S3Request {
    pub fn principal(&self) -> &Principal {
        &self.auth.principal
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn has_query(&self, name: &str) -> bool {
        self.query.contains_key(name)
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn bucket(&self) -> S3Result<&str> {
        self.bucket
            .as_deref()
            .ok_or_else(|| S3Error::new(S3ErrorCode::InvalidRequest, "A bucket is required."))
    }

    pub fn key(&self) -> S3Result<&str> {
        self.key
            .as_deref()
            .ok_or_else(|| S3Error::new(S3ErrorCode::InvalidRequest, "A key is required."))
    }

    /// The decoded body: aws-chunked framing removed and chunk signatures
    /// verified. Length and digest checks are added by `body::verify`.
    pub fn take_body(&mut self) -> BoxStream<'static, Result<Bytes, S3Error>> {
        let raw = self
            .take_raw_body()
            .into_data_stream()
            .map_err(|e| {
                S3Error::new(
                    S3ErrorCode::IncompleteBody,
                    format!("The request body could not be read: {e}"),
                )
            })
            .boxed();
        match &self.auth.payload {
            PayloadCheck::Chunked { signing, trailer } => {
                ChunkedDecoder::new(raw, signing.clone(), *trailer, self.trailers.clone())
                    .into_stream()
            }
            _ => raw,
        }
    }

    /// Reads a small body (XML requests) whole, with the same checks as an
    /// object body: signed SHA-256, Content-MD5, length, checksums.
    pub async fn read_verified_body(&mut self, max: usize) -> S3Result<Vec<u8>> {
        let expect = put::body_expectations(self, max as u64)?;
        self.read_checked(expect).await
    }

    /// A CompleteMultipartUpload body: its `x-amz-checksum-*` headers are
    /// the object's checksum, not the XML's.
    pub async fn read_complete_body(&mut self, max: usize) -> S3Result<Vec<u8>> {
        let mut expect = put::body_expectations(self, max as u64)?;
        if !expect.trailers_declared() {
            expect.checksum = None;
        }
        self.read_checked(expect).await
    }

    async fn read_checked(&mut self, expect: crate::body::BodyExpectations) -> S3Result<Vec<u8>> {
        let (mut stream, outcome) = crate::body::verify(self.take_body(), expect);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => {
                    let e = outcome.lock().ok().and_then(|mut o| o.error.take());
                    return Err(e.unwrap_or_else(|| {
                        S3Error::new(
                            S3ErrorCode::IncompleteBody,
                            "The request body was incomplete.",
                        )
                    }));
                }
            }
        }
        Ok(out)
    }

    pub fn take_raw_body(&mut self) -> Body {
        self.body
            .get_mut()
            .ok()
            .and_then(Option::take)
            .unwrap_or_default()
    }

    /// `versionId` is accepted only as `null`: buckets are unversioned.
    pub fn check_version_id(&self) -> S3Result<()> {
        match self.query("versionId") {
            None | Some("null") => Ok(()),
            Some(_) => Err(S3Error::new(
                S3ErrorCode::NoSuchVersion,
                "The specified version does not exist.",
            )),
        }
    }
}

/// A response the builder refused (a header that cannot be sent) is an
/// InternalError: never an empty 200 in its place.
pub fn built_error(e: http::Error) -> S3Error {
    tracing::error!(error = %e, "a response could not be built");
    S3Error::new(
        S3ErrorCode::InternalError,
        "The response could not be formed.",
    )
}

pub fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/xml")],
        body,
    )
        .into_response()
}

pub fn empty_response(status: StatusCode) -> Response {
    status.into_response()
}

/// Routes an authenticated S3 request to its operation.
pub async fn dispatch(gw: Arc<Gateway>, req: S3Request) -> Response {
    let op = operation_name(&req);
    let span = tracing::info_span!(
        "s3",
        op,
        tenant = req.principal().tenant().unwrap_or("-"),
        bucket = req.bucket.as_deref().unwrap_or("-")
    );
    let _ = span.enter();
    let result = route(&gw, req).await;
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(op, code = e.code.as_str(), message = %e.message, "request failed");
            e.into_response()
        }
    }
}

fn operation_name(req: &S3Request) -> &'static str {
    match (&req.method, req.bucket.is_some(), req.key.is_some()) {
        (&Method::GET, false, _) => "ListBuckets",
        (_, true, false) => "Bucket",
        (&Method::GET, true, true) => "GetObject",
        (&Method::PUT, true, true) => "PutObject",
        _ => "Object",
    }
}

/// `x-amz-expected-bucket-owner`: a request made on the belief that the
/// bucket is someone's fails if it is not (a bucket deleted and created
/// again by another tenant gets none of the caller's data).
async fn check_expected_owner(gw: &Gateway, req: &S3Request) -> S3Result<()> {
    let Some(expected) = req.header("x-amz-expected-bucket-owner") else {
        return Ok(());
    };
    let owner = gw.catalog.get_bucket(req.bucket()?).await?.map(|b| b.owner);
    match owner {
        // The message any refusal gives: it tells nobody who the owner is.
        Some(owner) if owner != expected => Err(S3Error::access_denied()),
        _ => Ok(()),
    }
}

async fn route(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let has_key = req.key.is_some();
    let has_bucket = req.bucket.is_some();
    let m = req.method.clone();
    if !has_bucket {
        return match m {
            Method::GET => bucket::list_buckets(gw, &req).await,
            _ => Err(S3Error::new(
                S3ErrorCode::MethodNotAllowed,
                "The specified method is not allowed against this resource.",
            )),
        };
    }
    check_expected_owner(gw, &req).await?;
    if !has_key {
        return match m {
            Method::PUT if req.has_query("acl") => acl::put_bucket_acl(gw, req).await,
            Method::PUT if req.has_query("cors") => cors::put_bucket_cors(gw, req).await,
            Method::PUT if req.has_query("versioning") => {
                Err(S3Error::not_implemented("Bucket versioning"))
            }
            Method::PUT if unsupported_subresource(&req) => {
                Err(S3Error::not_implemented(subresource(&req)))
            }
            Method::PUT => bucket::create_bucket(gw, req).await,
            Method::GET if req.has_query("acl") => acl::get_bucket_acl(gw, &req).await,
            Method::GET if req.has_query("cors") => cors::get_bucket_cors(gw, &req).await,
            Method::GET if req.has_query("location") => bucket::get_location(gw, &req).await,
            Method::GET if req.has_query("versioning") => {
                versioning::get_versioning(gw, &req).await
            }
            Method::GET if req.has_query("versions") => {
                versioning::list_object_versions(gw, &req).await
            }
            Method::GET if req.has_query("uploads") => multipart::list_uploads(gw, &req).await,
            Method::GET if unsupported_subresource(&req) => {
                Err(S3Error::not_implemented(subresource(&req)))
            }
            Method::GET => list::list_objects(gw, &req).await,
            Method::HEAD => bucket::head_bucket(gw, &req).await,
            Method::DELETE if req.has_query("cors") => cors::delete_bucket_cors(gw, &req).await,
            Method::DELETE if unsupported_subresource(&req) => {
                Err(S3Error::not_implemented(subresource(&req)))
            }
            Method::DELETE => bucket::delete_bucket(gw, &req).await,
            Method::POST if req.has_query("delete") => bucket::delete_objects(gw, req).await,
            Method::POST => post_object::post_object(gw, req).await,
            _ => Err(S3Error::new(
                S3ErrorCode::MethodNotAllowed,
                "The specified method is not allowed against this resource.",
            )),
        };
    }
    match m {
        Method::PUT if req.has_query("acl") => acl::put_object_acl(gw, req).await,
        Method::PUT
            if req.has_query("uploadId") && req.headers.contains_key("x-amz-copy-source") =>
        {
            multipart::upload_part_copy(gw, req).await
        }
        Method::PUT if req.has_query("uploadId") => multipart::upload_part(gw, req).await,
        Method::PUT
            if req.has_query("tagging")
                || req.has_query("retention")
                || req.has_query("legal-hold") =>
        {
            Err(S3Error::not_implemented(subresource(&req)))
        }
        Method::PUT if req.headers.contains_key("x-amz-copy-source") => {
            copy::copy_object(gw, req).await
        }
        Method::PUT => put::put_object(gw, req).await,
        Method::GET if req.has_query("acl") => acl::get_object_acl(gw, &req).await,
        Method::GET if req.has_query("uploadId") => multipart::list_parts(gw, &req).await,
        Method::GET if req.has_query("attributes") => {
            attributes::get_object_attributes(gw, &req).await
        }
        Method::GET if req.has_query("tagging") || req.has_query("torrent") => {
            Err(S3Error::not_implemented(subresource(&req)))
        }
        Method::GET => get::get_object(gw, &req, false).await,
        Method::HEAD => get::get_object(gw, &req, true).await,
        Method::DELETE if req.has_query("uploadId") => multipart::abort_upload(gw, &req).await,
        Method::DELETE => put::delete_object(gw, &req).await,
        Method::POST if req.has_query("uploads") => multipart::create_upload(gw, req).await,
        Method::POST if req.has_query("uploadId") => multipart::complete_upload(gw, req).await,
        _ => Err(S3Error::new(
            S3ErrorCode::MethodNotAllowed,
            "The specified method is not allowed against this resource.",
        )),
    }
}

const UNSUPPORTED: [&str; 13] = [
    "policy",
    "lifecycle",
    "tagging",
    "encryption",
    "website",
    "logging",
    "notification",
    "replication",
    "object-lock",
    "ownershipControls",
    "publicAccessBlock",
    "accelerate",
    "requestPayment",
];

fn unsupported_subresource(req: &S3Request) -> bool {
    UNSUPPORTED.iter().any(|s| req.has_query(s))
}

fn subresource(req: &S3Request) -> &'static str {
    UNSUPPORTED
        .iter()
        .chain(
            [
                "tagging",
                "retention",
                "legal-hold",
                "attributes",
                "torrent",
            ]
            .iter(),
        )
        .find(|s| req.has_query(s))
        .copied()
        .unwrap_or("This operation")
}
