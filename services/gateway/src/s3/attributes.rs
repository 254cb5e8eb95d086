//! GetObjectAttributes: an object's ETag, checksum, size, storage class
//! and (for a multipart object) a page of its parts, without its body.

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::ObjectRecord;
use serde::Serialize;

use super::access::readable_object;
use super::{xml, S3Request};
use crate::error::{S3Error, S3Result};
use crate::limits::MAX_LIST_KEYS;
use crate::Gateway;

/// What `x-amz-object-attributes` may ask for.
#[derive(Default)]
struct Wanted {
    etag: bool,
    checksum: bool,
    parts: bool,
    storage_class: bool,
    size: bool,
}

impl Wanted {
    fn parse(value: &str) -> S3Result<Self> {
        let mut w = Self::default();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "ETag" => w.etag = true,
                "Checksum" => w.checksum = true,
                "ObjectParts" => w.parts = true,
                "StorageClass" => w.storage_class = true,
                "ObjectSize" => w.size = true,
                other => {
                    return Err(S3Error::invalid_argument(format!(
                        "Invalid attribute name specified: {other}"
                    )))
                }
            }
        }
        if !(w.etag || w.checksum || w.parts || w.storage_class || w.size) {
            return Err(S3Error::invalid_request(
                "The x-amz-object-attributes header specifying the attributes to be retrieved is either missing or empty",
            ));
        }
        Ok(w)
    }
}

/// The response body, element for element; absent fields are left out.
#[derive(Serialize)]
#[serde(rename = "GetObjectAttributesResponse")]
struct AttributesXml {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "ETag", skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(rename = "Checksum", skip_serializing_if = "Option::is_none")]
    checksum: Option<ChecksumXml>,
    #[serde(rename = "ObjectParts", skip_serializing_if = "Option::is_none")]
    parts: Option<PartsXml>,
    #[serde(rename = "StorageClass", skip_serializing_if = "Option::is_none")]
    storage_class: Option<&'static str>,
    #[serde(rename = "ObjectSize", skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

/// A checksum as `<ChecksumSHA256>v</ChecksumSHA256><ChecksumType>t</…>`.
#[derive(Serialize)]
struct ChecksumXml {
    #[serde(flatten)]
    value: xml::Checksum,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Serialize)]
struct PartsXml {
    #[serde(rename = "PartsCount")]
    total: u32,
    #[serde(rename = "PartNumberMarker")]
    marker: u32,
    #[serde(
        rename = "NextPartNumberMarker",
        skip_serializing_if = "Option::is_none"
    )]
    next_marker: Option<u32>,
    #[serde(rename = "MaxParts")]
    max: usize,
    #[serde(rename = "IsTruncated")]
    truncated: bool,
    #[serde(rename = "Part", default)]
    parts: Vec<PartXml>,
}

#[derive(Serialize)]
struct PartXml {
    #[serde(rename = "PartNumber")]
    number: u32,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(flatten)]
    checksum: xml::Checksum,
}

fn number_header(req: &S3Request, name: &str, default: usize) -> S3Result<usize> {
    match req.header(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| S3Error::invalid_argument(format!("Invalid {name}: {v}"))),
    }
}

/// The page of a multipart object's parts that the request asks for.
fn parts_page(obj: &ObjectRecord, req: &S3Request) -> S3Result<PartsXml> {
    let max = number_header(req, "x-amz-max-parts", MAX_LIST_KEYS)?.min(MAX_LIST_KEYS);
    let marker = u32::try_from(number_header(req, "x-amz-part-number-marker", 0)?)
        .map_err(|_| S3Error::invalid_argument("Invalid x-amz-part-number-marker"))?;
    let part_sums = obj.checksum.as_ref().map(|c| (c.algorithm, &c.parts));
    let parts: Vec<PartXml> = obj
        .part_sizes
        .iter()
        .enumerate()
        .skip(marker as usize)
        .take(max)
        .map(|(i, size)| {
            let checksum = part_sums
                .and_then(|(alg, sums)| Some(xml::Checksum::of(alg, sums.get(i)?)))
                .unwrap_or_default();
            PartXml {
                number: i as u32 + 1,
                size: *size,
                checksum,
            }
        })
        .collect();
    let last = parts.last().map(|p| p.number);
    let truncated = last.is_some_and(|l| l < obj.parts_count);
    Ok(PartsXml {
        total: obj.parts_count,
        marker,
        next_marker: last.filter(|_| truncated),
        max,
        truncated,
        parts,
    })
}

pub async fn get_object_attributes(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    req.check_version_id()?;
    let wanted = Wanted::parse(req.header("x-amz-object-attributes").unwrap_or(""))?;
    let (_, obj) = readable_object(gw, req.principal(), req.bucket()?, req.key()?).await?;
    let body = AttributesXml {
        xmlns: xml::NS,
        etag: wanted.etag.then(|| obj.etag.clone()),
        checksum: obj
            .checksum
            .as_ref()
            .filter(|_| wanted.checksum)
            .map(|c| ChecksumXml {
                value: xml::Checksum::of(c.algorithm, &c.value),
                kind: Some(c.kind.as_str()),
            }),
        parts: if wanted.parts && obj.parts_count > 0 {
            Some(parts_page(&obj, req)?)
        } else {
            None
        },
        storage_class: wanted.storage_class.then_some("STANDARD"),
        size: wanted.size.then_some(obj.size),
    };
    let text = quick_xml::se::to_string(&body).map_err(S3Error::internal)?;
    let mut resp = super::xml_response(StatusCode::OK, format!("{}{text}", xml::HEADER));
    if let Ok(v) = http::HeaderValue::from_str(&xml::http_date(obj.last_modified_ms)) {
        resp.headers_mut().insert(http::header::LAST_MODIFIED, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_serialise_with_algorithm_named_elements() {
        let body = AttributesXml {
            xmlns: xml::NS,
            etag: Some("e".into()),
            checksum: Some(ChecksumXml {
                value: xml::Checksum::of(insitu_catalog::ChecksumAlgorithm::Sha256, "abc=-2"),
                kind: Some("COMPOSITE"),
            }),
            parts: Some(PartsXml {
                total: 2,
                marker: 0,
                next_marker: Some(1),
                max: 1,
                truncated: true,
                parts: vec![PartXml {
                    number: 1,
                    size: 5,
                    checksum: xml::Checksum::of(insitu_catalog::ChecksumAlgorithm::Sha256, "p1="),
                }],
            }),
            storage_class: Some("STANDARD"),
            size: Some(10),
        };
        let text = quick_xml::se::to_string(&body).unwrap();
        assert_eq!(
            text,
            "<GetObjectAttributesResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ETag>e</ETag><Checksum><ChecksumSHA256>abc=-2</ChecksumSHA256><ChecksumType>COMPOSITE</ChecksumType></Checksum>\
             <ObjectParts><PartsCount>2</PartsCount><PartNumberMarker>0</PartNumberMarker>\
             <NextPartNumberMarker>1</NextPartNumberMarker><MaxParts>1</MaxParts><IsTruncated>true</IsTruncated>\
             <Part><PartNumber>1</PartNumber><Size>5</Size><ChecksumSHA256>p1=</ChecksumSHA256></Part></ObjectParts>\
             <StorageClass>STANDARD</StorageClass><ObjectSize>10</ObjectSize></GetObjectAttributesResponse>"
        );
    }
}
