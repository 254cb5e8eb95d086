//! Small helpers for writing S3 XML responses and reading XML requests.

use std::fmt::Write;

use crate::error::{xml_escape, S3Error, S3ErrorCode};

pub const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
pub const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// ISO 8601 with milliseconds, as S3 writes timestamps in XML.
pub fn iso8601(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// RFC 7231 date, as S3 writes `Last-Modified`.
pub fn http_date(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    httpdate::fmt_http_date(t)
}

/// Appends `<name>value</name>` with the value escaped.
pub fn elem(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", xml_escape(value));
}

pub fn owner(out: &mut String, tenant: &str) {
    out.push_str("<Owner>");
    elem(out, "ID", tenant);
    elem(out, "DisplayName", tenant);
    out.push_str("</Owner>");
}

pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, S3Error> {
    let text = std::str::from_utf8(body).map_err(|_| {
        S3Error::new(
            S3ErrorCode::MalformedXml,
            "The XML you provided was not well-formed.",
        )
    })?;
    quick_xml::de::from_str(text).map_err(|e| {
        S3Error::new(
            S3ErrorCode::MalformedXml,
            format!("The XML you provided was not well-formed or did not validate against our published schema: {e}"),
        )
    })
}
