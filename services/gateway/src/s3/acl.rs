//! Canned ACLs on buckets and objects: set with `x-amz-acl` (or an
//! AccessControlPolicy body equivalent to a canned ACL), read back as the
//! grants that canned ACL stands for.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::CannedAcl;
use serde::Deserialize;

use super::access::{is_owner, owned_bucket, readable_object};
use super::bucket::canned_acl_header;
use super::{empty_response, xml, xml_response, S3Request};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::MAX_XML_BODY_BYTES;
use crate::Gateway;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

fn grant_group(out: &mut String, uri: &str, permission: &str) {
    out.push_str("<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\">");
    xml::elem(out, "URI", uri);
    out.push_str("</Grantee>");
    xml::elem(out, "Permission", permission);
    out.push_str("</Grant>");
}

fn policy_xml(owner: &str, acl: CannedAcl) -> String {
    let mut out = format!("{}<AccessControlPolicy xmlns=\"{}\">", xml::HEADER, xml::NS);
    xml::owner(&mut out, owner);
    // The groups' grants first, then the owner's, as RGW lists them.
    out.push_str("<AccessControlList>");
    match acl {
        CannedAcl::Private => {}
        CannedAcl::PublicRead => grant_group(&mut out, ALL_USERS, "READ"),
        CannedAcl::PublicReadWrite => {
            grant_group(&mut out, ALL_USERS, "READ");
            grant_group(&mut out, ALL_USERS, "WRITE");
        }
        CannedAcl::AuthenticatedRead => grant_group(&mut out, AUTHENTICATED_USERS, "READ"),
    }
    out.push_str("<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\">");
    xml::elem(&mut out, "ID", owner);
    xml::elem(&mut out, "DisplayName", owner);
    out.push_str("</Grantee><Permission>FULL_CONTROL</Permission></Grant>");
    out.push_str("</AccessControlList></AccessControlPolicy>");
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AccessControlPolicy {
    access_control_list: AccessControlList,
}

#[derive(Deserialize)]
struct AccessControlList {
    #[serde(default, rename = "Grant")]
    grants: Vec<Grant>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Grant {
    grantee: Grantee,
    permission: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Grantee {
    #[serde(rename = "URI")]
    uri: Option<String>,
    #[serde(rename = "ID")]
    id: Option<String>,
}

/// Maps an AccessControlPolicy body to the canned ACL it is equivalent to.
pub(super) fn canned_from_policy(body: &[u8], owner: &str) -> S3Result<CannedAcl> {
    let policy: AccessControlPolicy = xml::parse(body)
        .map_err(|_| S3Error::new(S3ErrorCode::MalformedAclError, "The XML you provided was not well-formed or did not validate against our published schema."))?;
    let mut group_grants: Vec<(String, String)> = Vec::new();
    for g in policy.access_control_list.grants {
        match (g.grantee.uri, g.grantee.id) {
            (Some(uri), _) => group_grants.push((uri, g.permission)),
            (None, Some(id)) if id == owner && g.permission == "FULL_CONTROL" => {}
            _ => {
                return Err(S3Error::not_implemented(
                    "Grants to individual users other than the owner",
                ))
            }
        }
    }
    group_grants.sort();
    let g = |u: &str, p: &str| (u.to_string(), p.to_string());
    let acl = if group_grants.is_empty() {
        CannedAcl::Private
    } else if group_grants == [g(ALL_USERS, "READ")] {
        CannedAcl::PublicRead
    } else if group_grants == [g(ALL_USERS, "READ"), g(ALL_USERS, "WRITE")] {
        CannedAcl::PublicReadWrite
    } else if group_grants == [g(AUTHENTICATED_USERS, "READ")] {
        CannedAcl::AuthenticatedRead
    } else {
        return Err(S3Error::not_implemented(
            "ACLs that are not equivalent to a canned ACL",
        ));
    };
    Ok(acl)
}

async fn requested_acl(mut req: S3Request, owner: &str) -> S3Result<CannedAcl> {
    if let Some(acl) = canned_acl_header(&req)? {
        return Ok(acl);
    }
    let body = req.read_verified_body(MAX_XML_BODY_BYTES).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(S3Error::new(
            S3ErrorCode::MalformedAclError,
            "Give a canned ACL in x-amz-acl or an AccessControlPolicy body.",
        ));
    }
    canned_from_policy(&body, owner)
}

pub async fn get_bucket_acl(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = owned_bucket(gw, req.principal(), req.bucket()?).await?;
    Ok(xml_response(StatusCode::OK, policy_xml(&b.owner, b.acl)))
}

pub async fn put_bucket_acl(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let name = req.bucket()?.to_string();
    let b = owned_bucket(gw, req.principal(), &name).await?;
    let acl = requested_acl(req, &b.owner).await?;
    gw.catalog.set_bucket_acl(&name, acl).await?;
    Ok(empty_response(StatusCode::OK))
}

pub async fn get_object_acl(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    req.check_version_id()?;
    let (b, o) = readable_object(gw, req.principal(), req.bucket()?, req.key()?).await?;
    if !is_owner(req.principal(), &b) {
        return Err(S3Error::access_denied());
    }
    Ok(xml_response(StatusCode::OK, policy_xml(&o.owner, o.acl)))
}

pub async fn put_object_acl(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    req.check_version_id()?;
    let bucket = req.bucket()?.to_string();
    let key = req.key()?.to_string();
    let b = owned_bucket(gw, req.principal(), &bucket).await?;
    let acl = requested_acl(req, &b.owner).await?;
    if !gw.catalog.set_object_acl(&bucket, &key, acl).await? {
        return Err(S3Error::no_such_key(&key));
    }
    Ok(empty_response(StatusCode::OK))
}
