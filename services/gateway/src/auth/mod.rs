//! Who is asking, proven by SigV4: the Authorization header, presigned
//! query parameters, or nobody (anonymous, allowed only by public ACLs).

pub mod chunked;
#[doc(hidden)]
pub mod fuzz;
pub mod sigv2;
pub use insitu_sigv4 as sigv4;

use std::collections::BTreeMap;

use http::HeaderMap;
use insitu_catalog::Catalog;

use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{MAX_CLOCK_SKEW_SECS, MAX_PRESIGN_EXPIRES_SECS};
use chunked::ChunkSigning;
use sigv4::{Scope, SigningKey};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User {
        tenant: String,
        access_key_id: String,
        is_root: bool,
    },
}

impl Principal {
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::User { tenant, .. } => Some(tenant),
        }
    }

    pub fn is_root(&self) -> bool {
        matches!(self, Self::User { is_root: true, .. })
    }
}

/// How the request body must be checked against the signature.
#[derive(Clone)]
pub enum PayloadCheck {
    /// `UNSIGNED-PAYLOAD`, anonymous, or presigned.
    Unsigned,
    /// The body's SHA-256 must equal this hex digest.
    Sha256(String),
    /// `aws-chunked` framing, signed chunks or not, with or without trailers.
    Chunked {
        signing: Option<ChunkSigning>,
        trailer: bool,
    },
    /// The signature covers the SHA-256 of a body whose hash was not sent
    /// (curl signs it without an `x-amz-content-sha256` header): until the
    /// body is read nobody knows who sent it. `route_request` reads it
    /// whole and checks the signature before dispatch, so no handler ever
    /// sees this variant (the body reader refuses it if one does).
    Deferred(DeferredSignature),
}

/// A SigV4 signature waiting for its body's SHA-256.
#[derive(Clone)]
pub struct DeferredSignature {
    key: SigningKey,
    amz_date: String,
    scope: String,
    /// The canonical request up to, not including, the payload hash.
    canonical_head: String,
    signature: String,
}

impl DeferredSignature {
    /// Whether the signature holds for a body with this SHA-256 (hex).
    pub fn verify(&self, body_sha256_hex: &str) -> bool {
        let creq = format!("{}{body_sha256_hex}", self.canonical_head);
        let expected = self
            .key
            .sign(&sigv4::string_to_sign(&self.amz_date, &self.scope, &creq));
        sigv4::signatures_match(&expected, &self.signature)
    }

    pub fn mismatch() -> S3Error {
        err(
            S3ErrorCode::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
    }
}

pub struct Authenticated {
    pub principal: Principal,
    pub payload: PayloadCheck,
    /// The signing key and scope, for POST policies and the like.
    pub credential: Option<(String, Scope)>,
}

/// Root credentials live in configuration, not in the catalog, so that a
/// lost catalog key can never lock the operator out.
#[derive(Clone)]
pub struct RootCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub const ROOT_TENANT: &str = "root";

pub struct Authenticator<'a> {
    pub catalog: &'a dyn Catalog,
    pub root: &'a RootCredentials,
    /// The region requests must be signed for.
    pub region: &'a str,
}

/// The parts of a request that a signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub now: i64,
    /// SHA-256 of an already-read body, for clients (curl) that sign the
    /// payload hash without sending `x-amz-content-sha256`.
    pub body_sha256: Option<String>,
    /// The bucket the `Host` header names (virtual-hosted style), which
    /// SigV2 signs as the start of the resource.
    pub host_bucket: Option<&'a str>,
}

/// The strings a SigV2 request may have signed: with its resource as
/// sent, and, for a bucket named in the path with nothing after it, also
/// with a trailing slash (`/bucket/`, as botocore signs bucket requests).
fn v2_strings(
    req: &SignedRequest<'_>,
    query: &BTreeMap<String, String>,
    date: &str,
) -> S3Result<Vec<String>> {
    if sigv2::ambiguous(query) {
        return Err(err(
            S3ErrorCode::AccessDenied,
            "A signed sub-resource's value may not contain '&'",
        ));
    }
    let sts = |path: &str| {
        let resource = sigv2::canonical_resource(req.host_bucket, path, query);
        sigv2::string_to_sign(req.method, req.headers, date, &resource)
    };
    let mut out = vec![sts(req.raw_path)];
    let rest = sigv4::uri_decode(req.raw_path.trim_start_matches('/'));
    if req.host_bucket.is_none() && !rest.is_empty() && !rest.contains('/') {
        out.push(sts(&format!("{}/", req.raw_path)));
    }
    Ok(out)
}

/// What a SigV2 request's body is checked against: SigV2 signs no payload
/// hash, but an `x-amz-content-sha256` it sends is signed with the other
/// `x-amz-*` headers, and then binds the body.
fn v2_payload(headers: &HeaderMap) -> PayloadCheck {
    match headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            PayloadCheck::Sha256(h.to_ascii_lowercase())
        }
        _ => PayloadCheck::Unsigned,
    }
}

/// A request time as SigV2 clients send it: an HTTP date (RFC 1123, with
/// `GMT` or a numeric zone) or an ISO 8601 basic one; seconds since the
/// epoch.
fn parse_request_date(v: &str) -> Option<i64> {
    if let Ok(t) = httpdate::parse_http_date(v) {
        return Some(chrono::DateTime::<chrono::Utc>::from(t).timestamp());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc2822(v) {
        return Some(t.timestamp());
    }
    sigv4::parse_amz_date(v)
}

fn err(code: S3ErrorCode, msg: &str) -> S3Error {
    S3Error::new(code, msg)
}

fn no_date() -> S3Error {
    err(
        S3ErrorCode::AccessDenied,
        "AWS authentication requires a valid Date or x-amz-date header",
    )
}

/// A header-signed request must be made within the allowed clock skew.
fn check_skew(now: i64, t: i64) -> S3Result<()> {
    if (now - t).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(err(
            S3ErrorCode::RequestTimeTooSkewed,
            "The difference between the request time and the current time is too large.",
        ));
    }
    Ok(())
}

/// `x-amz-*` headers that may come unsigned because nothing reads them
/// (SDKs leave `x-amz-user-agent` out of presigned requests), or, for a
/// presigned URL, because the query carries what they would say: its body
/// hash is read from the header only when signed.
fn may_be_unsigned(name: &str, presigned: bool) -> bool {
    name == "x-amz-user-agent"
        || (presigned && matches!(name, "x-amz-content-sha256" | "x-amz-date"))
}

pub fn query_map(raw_query: &str) -> BTreeMap<String, String> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (sigv4::query_decode(k), sigv4::query_decode(v))
        })
        .collect()
}

impl Authenticator<'_> {
    /// Finds the secret for an access key; unknown keys are refused.
    pub async fn lookup(&self, access_key_id: &str) -> S3Result<(Principal, String)> {
        if sigv4::signatures_match(access_key_id, &self.root.access_key_id) {
            return Ok((
                Principal::User {
                    tenant: ROOT_TENANT.to_string(),
                    access_key_id: access_key_id.to_string(),
                    is_root: true,
                },
                self.root.secret_access_key.clone(),
            ));
        }
        match self.catalog.get_access_key(access_key_id).await? {
            Some(k) => Ok((
                Principal::User {
                    tenant: k.tenant,
                    access_key_id: k.access_key_id,
                    is_root: false,
                },
                k.secret_access_key,
            )),
            None => Err(err(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
        }
    }

    pub async fn authenticate(&self, req: &SignedRequest<'_>) -> S3Result<Authenticated> {
        let query = query_map(req.raw_query);
        if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
            let auth = auth.to_str().map_err(|_| {
                err(
                    S3ErrorCode::AuthorizationHeaderMalformed,
                    "The authorization header is malformed.",
                )
            })?;
            if auth.starts_with("AWS ") {
                return self.v2_header_auth(req, auth, &query).await;
            }
            return self.header_auth(req, auth).await;
        }
        if query.contains_key("X-Amz-Algorithm") || query.contains_key("X-Amz-Signature") {
            return self.presigned_auth(req, &query).await;
        }
        if query.contains_key("Signature") || query.contains_key("AWSAccessKeyId") {
            return self.v2_query_auth(req, &query).await;
        }
        Ok(Authenticated {
            principal: Principal::Anonymous,
            payload: PayloadCheck::Unsigned,
            credential: None,
        })
    }

    /// A scope for this service and this endpoint's region: a signature
    /// made for another region (another deployment the keys work with)
    /// is not valid here.
    pub(crate) fn check_scope(&self, scope: &Scope, code: S3ErrorCode) -> S3Result<()> {
        if scope.service != "s3" {
            return Err(err(
                code,
                "The authorization header is malformed; the credential scope must name service 's3'.",
            ));
        }
        if scope.region != self.region {
            return Err(err(
                code,
                &format!(
                    "The authorization header is malformed; the region '{}' is wrong; expecting '{}'",
                    scope.region, self.region
                ),
            ));
        }
        Ok(())
    }

    /// The signed headers' canonical values. Every `x-amz-*` header the
    /// request carries must be among them, as AWS requires, except the
    /// few that change nothing: an unsigned header is one anyone who saw
    /// the request (or holds a presigned URL) could add or change.
    fn canonical_headers(
        headers: &HeaderMap,
        signed: &str,
        presigned: bool,
    ) -> S3Result<Vec<(String, String)>> {
        let names: Vec<&str> = signed.split(';').collect();
        if !names.contains(&"host") {
            return Err(err(
                S3ErrorCode::AccessDenied,
                "The host header must be signed.",
            ));
        }
        let unsigned: Vec<&str> = headers
            .keys()
            .map(http::HeaderName::as_str)
            .filter(|h| h.starts_with("x-amz-") && !names.contains(h))
            .filter(|h| !may_be_unsigned(h, presigned))
            .collect();
        if !unsigned.is_empty() {
            return Err(err(
                S3ErrorCode::AccessDenied,
                &format!(
                    "There were headers present in the request which were not signed: {}",
                    unsigned.join(", ")
                ),
            ));
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .map(|v| sigv4::canonical_header_value(&String::from_utf8_lossy(v.as_bytes())))
                .collect();
            if values.is_empty() {
                return Err(err(
                    S3ErrorCode::SignatureDoesNotMatch,
                    "A signed header is missing from the request.",
                ));
            }
            out.push((name.to_string(), values.join(",")));
        }
        Ok(out)
    }

    async fn header_auth(&self, req: &SignedRequest<'_>, auth: &str) -> S3Result<Authenticated> {
        let parsed = sigv4::parse_authorization(auth).ok_or_else(|| {
            err(
                S3ErrorCode::AuthorizationHeaderMalformed,
                "The authorization header is malformed.",
            )
        })?;
        self.check_scope(&parsed.scope, S3ErrorCode::AuthorizationHeaderMalformed)?;
        let (principal, secret) = self.lookup(&parsed.access_key_id).await?;
        let amz_date = req
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                let d = req.headers.get(http::header::DATE)?.to_str().ok()?;
                let t = httpdate::parse_http_date(d).ok()?;
                Some(
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .format("%Y%m%dT%H%M%SZ")
                        .to_string(),
                )
            })
            .ok_or_else(no_date)?;
        let t = sigv4::parse_amz_date(&amz_date).ok_or_else(no_date)?;
        check_skew(req.now, t)?;
        if !amz_date.starts_with(&parsed.scope.date) {
            return Err(err(
                S3ErrorCode::SignatureDoesNotMatch,
                "The credential date does not match the request date.",
            ));
        }
        let sent_sha = req
            .headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_sha = sent_sha
            .clone()
            .or_else(|| req.body_sha256.clone())
            .unwrap_or_else(|| "UNSIGNED-PAYLOAD".to_string());
        let headers = Self::canonical_headers(req.headers, &parsed.signed_headers, false)?;
        let creq = sigv4::canonical_request(
            req.method,
            &sigv4::canonical_uri(req.raw_path),
            &sigv4::canonical_query(req.raw_query, None),
            &headers,
            &parsed.signed_headers,
            &content_sha,
        );
        let scope = parsed.scope.as_string();
        let key = SigningKey::derive(&secret, &parsed.scope).ok_or_else(|| {
            err(
                S3ErrorCode::AuthorizationHeaderMalformed,
                "The credential date is invalid.",
            )
        })?;
        let expected = key.sign(&sigv4::string_to_sign(&amz_date, &scope, &creq));
        if !sigv4::signatures_match(&expected, &parsed.signature) {
            // No hash sent and a body to come: the client may have signed
            // the body's own hash, which is known only once it is read.
            if sent_sha.is_none() && req.body_sha256.is_none() {
                let canonical_head = creq
                    .strip_suffix(content_sha.as_str())
                    .unwrap_or(&creq)
                    .to_string();
                return Ok(Authenticated {
                    principal,
                    payload: PayloadCheck::Deferred(DeferredSignature {
                        key,
                        amz_date,
                        scope,
                        canonical_head,
                        signature: parsed.signature.clone(),
                    }),
                    credential: Some((parsed.access_key_id, parsed.scope)),
                });
            }
            tracing::debug!(canonical_request = %creq, "signature mismatch");
            return Err(err(
                S3ErrorCode::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ));
        }
        let payload = match content_sha.as_str() {
            "UNSIGNED-PAYLOAD" => PayloadCheck::Unsigned,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => PayloadCheck::Chunked { signing: None, trailer: true },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => PayloadCheck::Chunked {
                signing: Some(ChunkSigning {
                    key,
                    amz_date,
                    scope,
                    seed_signature: parsed.signature.clone(),
                }),
                trailer: content_sha.ends_with("-TRAILER"),
            },
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => PayloadCheck::Sha256(h.to_ascii_lowercase()),
            _ => {
                return Err(err(
                    S3ErrorCode::InvalidArgument,
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-*, or a SHA-256 hex digest.",
                ))
            }
        };
        Ok(Authenticated {
            principal,
            payload,
            credential: Some((parsed.access_key_id, parsed.scope)),
        })
    }

    /// `Authorization: AWS KEY:SIGNATURE` (SigV2).
    async fn v2_header_auth(
        &self,
        req: &SignedRequest<'_>,
        auth: &str,
        query: &BTreeMap<String, String>,
    ) -> S3Result<Authenticated> {
        let (akid, signature) = sigv2::parse_authorization(auth).ok_or_else(|| {
            err(
                S3ErrorCode::AuthorizationHeaderMalformed,
                "The authorization header is malformed.",
            )
        })?;
        let (principal, secret) = self.lookup(akid).await?;
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let amz_date = header("x-amz-date");
        let date = header("date");
        let t = amz_date
            .or(date)
            .and_then(parse_request_date)
            .ok_or_else(no_date)?;
        check_skew(req.now, t)?;
        // With x-amz-date, that header is signed among the amz headers and
        // the date line stays empty.
        let date_line = if amz_date.is_some() {
            ""
        } else {
            date.unwrap_or("")
        };
        let sts = v2_strings(req, query, date_line.trim())?;
        self.v2_check(&secret, &sts, signature)?;
        Ok(Authenticated {
            principal,
            payload: v2_payload(req.headers),
            credential: None,
        })
    }

    /// A SigV2 presigned URL: `AWSAccessKeyId`, `Expires` (seconds since
    /// the epoch) and `Signature` in the query.
    async fn v2_query_auth(
        &self,
        req: &SignedRequest<'_>,
        q: &BTreeMap<String, String>,
    ) -> S3Result<Authenticated> {
        let missing = |name: &str| {
            err(
                S3ErrorCode::AccessDenied,
                &format!("Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters ({name} is missing)"),
            )
        };
        let akid = q
            .get("AWSAccessKeyId")
            .ok_or_else(|| missing("AWSAccessKeyId"))?;
        let signature = q.get("Signature").ok_or_else(|| missing("Signature"))?;
        let expires_text = q.get("Expires").ok_or_else(|| missing("Expires"))?;
        let expires: i64 = expires_text.parse().map_err(|_| {
            err(
                S3ErrorCode::AccessDenied,
                "Expires must be a number of seconds since the epoch",
            )
        })?;
        let (principal, secret) = self.lookup(akid).await?;
        if req.now > expires {
            return Err(err(S3ErrorCode::AccessDenied, "Request has expired"));
        }
        // As long as a SigV4 URL may last, and no longer.
        if expires - req.now > MAX_PRESIGN_EXPIRES_SECS {
            return Err(err(
                S3ErrorCode::AccessDenied,
                "Expires may be at most 604800 seconds (7 days) ahead",
            ));
        }
        let sts = v2_strings(req, q, expires_text)?;
        self.v2_check(&secret, &sts, signature)?;
        Ok(Authenticated {
            principal,
            payload: v2_payload(req.headers),
            credential: None,
        })
    }

    /// Whether `signature` signs one of the strings.
    fn v2_check(&self, secret: &str, strings: &[String], signature: &str) -> S3Result<()> {
        let matched = strings.iter().fold(false, |m, s| {
            sigv4::signatures_match(&sigv2::sign(secret, s), signature) | m
        });
        if !matched {
            tracing::debug!(string_to_sign = ?strings, "SigV2 signature mismatch");
            return Err(err(
                S3ErrorCode::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ));
        }
        Ok(())
    }

    async fn presigned_auth(
        &self,
        req: &SignedRequest<'_>,
        q: &BTreeMap<String, String>,
    ) -> S3Result<Authenticated> {
        let bad = |m: &str| err(S3ErrorCode::AuthorizationQueryParametersError, m);
        if q.get("X-Amz-Algorithm").map(String::as_str) != Some(sigv4::ALGORITHM) {
            return Err(bad("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""));
        }
        let cred = q
            .get("X-Amz-Credential")
            .ok_or_else(|| bad("X-Amz-Credential is missing"))?;
        let (akid, scope) =
            sigv4::parse_credential(cred).ok_or_else(|| bad("X-Amz-Credential is malformed"))?;
        self.check_scope(&scope, S3ErrorCode::AuthorizationQueryParametersError)?;
        let amz_date = q
            .get("X-Amz-Date")
            .ok_or_else(|| bad("X-Amz-Date is missing"))?;
        if !amz_date.starts_with(&scope.date) || amz_date.len() != scope.date.len() + 8 {
            return Err(bad(
                "Error parsing the X-Amz-Credential parameter; the date does not match X-Amz-Date",
            ));
        }
        let t = sigv4::parse_amz_date(amz_date)
            .ok_or_else(|| bad("X-Amz-Date must be in ISO 8601 format"))?;
        let expires: i64 = q
            .get("X-Amz-Expires")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("X-Amz-Expires must be a number of seconds"))?;
        // Out of range is refused as S3 gateways refuse an expired URL.
        if !(1..=MAX_PRESIGN_EXPIRES_SECS).contains(&expires) {
            return Err(err(
                S3ErrorCode::AccessDenied,
                "X-Amz-Expires must be between 1 and 604800 seconds",
            ));
        }
        let signed = q
            .get("X-Amz-SignedHeaders")
            .ok_or_else(|| bad("X-Amz-SignedHeaders is missing"))?;
        let signature = q
            .get("X-Amz-Signature")
            .ok_or_else(|| bad("X-Amz-Signature is missing"))?;
        let (principal, secret) = self.lookup(&akid).await?;
        if t - req.now > MAX_CLOCK_SKEW_SECS {
            return Err(err(S3ErrorCode::AccessDenied, "Request is not valid yet"));
        }
        if req.now > t + expires {
            return Err(err(S3ErrorCode::AccessDenied, "Request has expired"));
        }
        let headers = Self::canonical_headers(req.headers, signed, true)?;
        let payload_hash = req
            .headers
            .get("x-amz-content-sha256")
            .filter(|_| signed.split(';').any(|h| h == "x-amz-content-sha256"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("UNSIGNED-PAYLOAD");
        let creq = sigv4::canonical_request(
            req.method,
            &sigv4::canonical_uri(req.raw_path),
            &sigv4::canonical_query(req.raw_query, Some("X-Amz-Signature")),
            &headers,
            signed,
            payload_hash,
        );
        let key = SigningKey::derive(&secret, &scope)
            .ok_or_else(|| bad("The credential date is invalid."))?;
        let expected = key.sign(&sigv4::string_to_sign(amz_date, &scope.as_string(), &creq));
        if !sigv4::signatures_match(&expected, signature) {
            return Err(err(
                S3ErrorCode::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ));
        }
        // A presigned URL that signed a real payload hash binds the body too.
        let payload =
            if payload_hash.len() == 64 && payload_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                PayloadCheck::Sha256(payload_hash.to_ascii_lowercase())
            } else {
                PayloadCheck::Unsigned
            };
        Ok(Authenticated {
            principal,
            payload,
            credential: Some((akid, scope)),
        })
    }
}
