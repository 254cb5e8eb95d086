//! Buckets are unversioned. Backup and sync tools still ask, so
//! GetBucketVersioning says so, and ListObjectVersions lists every object
//! as its only version, `null`.

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::ListQuery;

use super::access::{owned_bucket, readable_bucket};
use super::list::{max_keys, Encoder};
use super::{xml, xml_response, S3Request};
use crate::error::S3Result;
use crate::Gateway;

pub async fn get_versioning(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    owned_bucket(gw, req.principal(), req.bucket()?).await?;
    Ok(xml_response(
        StatusCode::OK,
        format!(
            "{}<VersioningConfiguration xmlns=\"{}\"/>",
            xml::HEADER,
            xml::NS
        ),
    ))
}

pub async fn list_object_versions(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let bucket = req.bucket()?;
    readable_bucket(gw, req.principal(), bucket).await?;
    let e = Encoder::from_request(req)?;
    let prefix = req.query("prefix").unwrap_or("");
    let delimiter = req.query("delimiter").filter(|d| !d.is_empty());
    let max = max_keys(req, "max-keys")?;
    let key_marker = req.query("key-marker").filter(|m| !m.is_empty());
    let page = gw
        .catalog
        .list_objects(
            bucket,
            &ListQuery {
                prefix: prefix.to_string(),
                delimiter: delimiter.map(str::to_string),
                start_after: key_marker.map(str::to_string),
                max: max.max(1),
            },
        )
        .await?;

    let mut out = format!("{}<ListVersionsResult xmlns=\"{}\">", xml::HEADER, xml::NS);
    xml::elem(&mut out, "Name", bucket);
    e.elem(&mut out, "Prefix", prefix);
    e.elem(&mut out, "KeyMarker", key_marker.unwrap_or(""));
    xml::elem(
        &mut out,
        "VersionIdMarker",
        req.query("version-id-marker").unwrap_or(""),
    );
    if let Some(d) = delimiter {
        e.elem(&mut out, "Delimiter", d);
    }
    xml::elem(&mut out, "MaxKeys", &max.to_string());
    e.write_type(&mut out);
    xml::elem(
        &mut out,
        "IsTruncated",
        if page.is_truncated { "true" } else { "false" },
    );
    if page.is_truncated {
        if let Some(last) = &page.last {
            e.elem(&mut out, "NextKeyMarker", last);
            xml::elem(&mut out, "NextVersionIdMarker", "null");
        }
    }
    for (key, obj) in &page.objects {
        out.push_str("<Version>");
        e.elem(&mut out, "Key", key);
        xml::elem(&mut out, "VersionId", "null");
        xml::elem(&mut out, "IsLatest", "true");
        xml::elem(
            &mut out,
            "LastModified",
            &xml::iso8601(obj.last_modified_ms),
        );
        xml::elem(&mut out, "ETag", &format!("\"{}\"", obj.etag));
        xml::elem(&mut out, "Size", &obj.size.to_string());
        xml::owner(&mut out, &obj.owner);
        xml::elem(&mut out, "StorageClass", "STANDARD");
        out.push_str("</Version>");
    }
    for p in &page.common_prefixes {
        out.push_str("<CommonPrefixes>");
        e.elem(&mut out, "Prefix", p);
        out.push_str("</CommonPrefixes>");
    }
    out.push_str("</ListVersionsResult>");
    Ok(xml_response(StatusCode::OK, out))
}
