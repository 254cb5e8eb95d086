//! Small helpers for writing S3 XML responses and reading XML requests.

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::ChecksumAlgorithm;
use serde::Serialize;

use crate::error::{S3Error, S3ErrorCode, S3Result};

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

/// A response body from its serde struct: the XML declaration, then the
/// struct as its root element.
pub fn to_response<T: Serialize>(status: StatusCode, body: &T) -> S3Result<Response> {
    let text = quick_xml::se::to_string(body).map_err(S3Error::internal)?;
    Ok(super::xml_response(status, format!("{HEADER}{text}")))
}

/// Like [`to_response`], for a body with a flattened field (a
/// [`Checksum`]): serde then sees a map, which has no name of its own.
pub fn to_response_with_root<T: Serialize>(
    status: StatusCode,
    root: &str,
    body: &T,
) -> S3Result<Response> {
    let text = quick_xml::se::to_string_with_root(root, body).map_err(S3Error::internal)?;
    Ok(super::xml_response(status, format!("{HEADER}{text}")))
}

/// `<Owner>` and `<Initiator>`: a tenant's canonical id is its name.
#[derive(Serialize)]
pub struct Principal {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
}

impl Principal {
    pub fn tenant(t: &str) -> Self {
        Self {
            id: t.to_string(),
            display_name: t.to_string(),
        }
    }
}

/// A checksum element, named for its algorithm (`<ChecksumSHA256>`);
/// flattened into the struct that carries it.
#[derive(Serialize, Default)]
pub struct Checksum {
    #[serde(rename = "ChecksumCRC32", skip_serializing_if = "Option::is_none")]
    crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", skip_serializing_if = "Option::is_none")]
    crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", skip_serializing_if = "Option::is_none")]
    crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", skip_serializing_if = "Option::is_none")]
    sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

impl Checksum {
    pub fn of(alg: ChecksumAlgorithm, value: &str) -> Self {
        let v = Some(value.to_string());
        let mut c = Self::default();
        match alg {
            ChecksumAlgorithm::Crc32 => c.crc32 = v,
            ChecksumAlgorithm::Crc32c => c.crc32c = v,
            ChecksumAlgorithm::Crc64nvme => c.crc64nvme = v,
            ChecksumAlgorithm::Sha1 => c.sha1 = v,
            ChecksumAlgorithm::Sha256 => c.sha256 = v,
        }
        c
    }
}

/// `<CommonPrefixes><Prefix>p</Prefix></CommonPrefixes>` in listings.
#[derive(Serialize)]
pub struct CommonPrefix {
    #[serde(rename = "Prefix")]
    pub prefix: String,
}
