//! GetObject and HeadObject: conditional requests, ranges, part reads, and
//! `response-*` header overrides. Bodies stream straight from a replica.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::{ChecksumAlgorithm, ChecksumType, ObjectRecord};

use super::access::readable_object;
use super::{xml, S3Request};
use crate::checksum;
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::Gateway;

pub use insitu_node_api::ByteRange;

/// A GET's `Range` against an object of `size` bytes (see
/// [`ByteRange::parse_for_get`]), as an S3 error when unsatisfiable.
pub fn parse_range(value: &str, size: u64) -> S3Result<Option<ByteRange>> {
    ByteRange::parse_for_get(value, size).map_err(|_| {
        S3Error::new(
            S3ErrorCode::InvalidRange,
            "The requested range is not satisfiable",
        )
    })
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == "*" || t == etag)
}

fn header_time_ms(v: Option<&str>) -> Option<i64> {
    let t = httpdate::parse_http_date(v?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

pub enum Precondition {
    Ok,
    NotModified,
    Failed,
}

/// RFC 7232 evaluation as S3 does it: If-Match wins over
/// If-Unmodified-Since, If-None-Match over If-Modified-Since. HTTP dates
/// have second precision, so times are compared in whole seconds.
pub fn evaluate_preconditions(
    if_match: Option<&str>,
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    if_unmodified_since: Option<&str>,
    obj: &ObjectRecord,
) -> Precondition {
    let modified_s = obj.last_modified_ms / 1000;
    if let Some(m) = if_match {
        if !etag_matches(m, &obj.etag) {
            return Precondition::Failed;
        }
    } else if let Some(t) = header_time_ms(if_unmodified_since) {
        if modified_s > t / 1000 {
            return Precondition::Failed;
        }
    }
    if let Some(m) = if_none_match {
        if etag_matches(m, &obj.etag) {
            return Precondition::NotModified;
        }
    } else if let Some(t) = header_time_ms(if_modified_since) {
        if modified_s <= t / 1000 {
            return Precondition::NotModified;
        }
    }
    Precondition::Ok
}

fn add_object_headers(
    mut r: http::response::Builder,
    obj: &ObjectRecord,
    req: &S3Request,
) -> http::response::Builder {
    let h = &obj.headers;
    let pick = |override_name: &str, stored: &Option<String>| {
        req.query(override_name)
            .map(str::to_string)
            .or_else(|| stored.clone())
    };
    let content_type = pick("response-content-type", &h.content_type)
        .unwrap_or_else(|| "binary/octet-stream".to_string());
    r = r
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ETAG, format!("\"{}\"", obj.etag))
        .header(
            http::header::LAST_MODIFIED,
            xml::http_date(obj.last_modified_ms),
        )
        .header(http::header::ACCEPT_RANGES, "bytes");
    for (name, query, stored) in [
        ("cache-control", "response-cache-control", &h.cache_control),
        (
            "content-disposition",
            "response-content-disposition",
            &h.content_disposition,
        ),
        (
            "content-encoding",
            "response-content-encoding",
            &h.content_encoding,
        ),
        (
            "content-language",
            "response-content-language",
            &h.content_language,
        ),
        ("expires", "response-expires", &h.expires),
    ] {
        if let Some(v) = pick(query, stored) {
            r = r.header(name, v);
        }
    }
    for (k, v) in &h.user_metadata {
        r = r.header(format!("x-amz-meta-{k}"), v);
    }
    r
}

/// The checksum a GET or HEAD in checksum mode returns: the object's for a
/// whole read, a part's for a `partNumber` read of a multipart object, and
/// none for a byte range (which no stored checksum covers).
fn returned_checksum<'o>(
    obj: &'o ObjectRecord,
    req: &S3Request,
    ranged: bool,
) -> S3Result<Option<(ChecksumAlgorithm, ChecksumType, &'o str)>> {
    let Some(c) = &obj.checksum else {
        return Ok(None);
    };
    match req.query("partNumber") {
        Some(n) if obj.parts_count > 0 => {
            let idx = n.parse::<usize>().ok().and_then(|n| n.checked_sub(1));
            Ok(idx
                .and_then(|i| c.parts.get(i))
                .map(|v| (c.algorithm, c.kind, v.as_str())))
        }
        _ if ranged => Ok(None),
        _ => Ok(Some((c.algorithm, c.kind, c.value.as_str()))),
    }
}

pub async fn get_object(gw: &Gateway, req: &S3Request, head_only: bool) -> S3Result<Response> {
    let bucket = req.bucket()?;
    let key = req.key()?;
    req.check_version_id()?;
    let (_, obj) = readable_object(gw, req.principal(), bucket, key).await?;
    for (name, value) in &req.query {
        if name.starts_with("response-") {
            super::put::check_header_value(name, value)?;
        }
    }

    match evaluate_preconditions(
        req.header("if-match"),
        req.header("if-none-match"),
        req.header("if-modified-since"),
        req.header("if-unmodified-since"),
        &obj,
    ) {
        Precondition::Ok => {}
        Precondition::NotModified => {
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header(http::header::ETAG, format!("\"{}\"", obj.etag))
                .header(
                    http::header::LAST_MODIFIED,
                    xml::http_date(obj.last_modified_ms),
                )
                .body(Body::empty())
                .map_err(super::built_error)
        }
        Precondition::Failed => {
            return Err(S3Error::new(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            ))
        }
    }

    let mut range = None;
    let mut parts_count = None;
    if let Some(pn) = req.query("partNumber") {
        let n: u32 = pn.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })?;
        if obj.parts_count == 0 {
            // A plain object is its own part 1; any other part is
            // `InvalidPart` (400), as S3 answers, not a range error.
            if n != 1 {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidPart,
                    "The requested part number is not one of the object's parts",
                ));
            }
        } else {
            let idx = (n - 1) as usize;
            let size = *obj.part_sizes.get(idx).ok_or_else(|| {
                S3Error::new(
                    S3ErrorCode::InvalidPart,
                    "The requested part number is not one of the object's parts",
                )
            })?;
            let start: u64 = obj.part_sizes[..idx].iter().sum();
            if size > 0 {
                range = Some(ByteRange {
                    start,
                    end: start + size - 1,
                });
            }
            parts_count = Some(obj.parts_count);
        }
    } else if let Some(r) = req.header("range") {
        range = parse_range(r, obj.size).map_err(|e| e.with_resource(key))?;
    }

    let mut builder = add_object_headers(Response::builder(), &obj, req);
    if let Some(n) = parts_count {
        builder = builder.header("x-amz-mp-parts-count", n);
    }
    if req
        .header("x-amz-checksum-mode")
        .is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"))
    {
        if let Some((alg, kind, value)) = returned_checksum(&obj, req, range.is_some())? {
            builder = builder
                .header(checksum::header_name(alg), value)
                .header("x-amz-checksum-type", kind.as_str());
        }
    }
    let (status, len) = match range {
        Some(r) => {
            builder = builder.header(http::header::CONTENT_RANGE, r.content_range(obj.size));
            (StatusCode::PARTIAL_CONTENT, r.len())
        }
        None => (StatusCode::OK, obj.size),
    };
    builder = builder
        .status(status)
        .header(http::header::CONTENT_LENGTH, len);
    if head_only {
        return builder.body(Body::empty()).map_err(super::built_error);
    }
    let body = if len == 0 {
        Body::empty()
    } else {
        // While the body streams, GC leaves the blob alone even if the
        // object is overwritten meanwhile.
        let reading = gw.inflight.hold(&obj.blob.id);
        let stream = gw
            .nodes
            .get(&obj.blob, range.map(|r| (r.start, r.end)))
            .await
            .map_err(super::put::node_error)?;
        Body::from_stream(futures::StreamExt::map(stream, move |chunk| {
            let _ = &reading;
            chunk
        }))
    };
    builder.body(body).map_err(super::built_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsatisfiable_range_is_invalid_range() {
        assert_eq!(
            parse_range("bytes=100-", 100).unwrap_err().code,
            S3ErrorCode::InvalidRange
        );
        assert_eq!(
            parse_range("bytes=0-9", 100).unwrap(),
            Some(ByteRange { start: 0, end: 9 })
        );
    }

    #[test]
    fn etag_lists() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("\"x\", \"abc\"", "abc"));
        assert!(etag_matches("*", "abc"));
        assert!(!etag_matches("\"abd\"", "abc"));
    }
}
