//! ACLs on buckets and objects: set with a canned `x-amz-acl`, with
//! `x-amz-grant-*` headers, or with an AccessControlPolicy body of grants
//! to tenants (by canonical id, which is the tenant's name) and groups;
//! read back as the list of grants.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use insitu_catalog::{Acl, BucketUpdate, CannedAcl, Grant, Grantee, Permission};
use serde::{Deserialize, Serialize};

use super::access::{
    acl_readable_bucket, acl_readable_object, acl_writable_bucket, acl_writable_object,
};
use super::{empty_response, xml, xml_response, S3Request};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::{MAX_ACL_GRANTS, MAX_XML_BODY_BYTES};
use crate::Gateway;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

// ---- the wire form, both ways ------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(rename = "AccessControlPolicy")]
pub(super) struct PolicyXml {
    #[serde(rename = "@xmlns", default, skip_deserializing)]
    xmlns: &'static str,
    #[serde(rename = "Owner", default, skip_serializing_if = "Option::is_none")]
    owner: Option<OwnerXml>,
    #[serde(rename = "AccessControlList", default)]
    list: ListXml,
}

#[derive(Serialize, Deserialize)]
struct OwnerXml {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "DisplayName", default)]
    display_name: String,
}

#[derive(Serialize, Deserialize, Default)]
struct ListXml {
    #[serde(rename = "Grant", default)]
    grants: Vec<GrantXml>,
}

#[derive(Serialize, Deserialize)]
struct GrantXml {
    #[serde(rename = "Grantee")]
    grantee: GranteeXml,
    #[serde(rename = "Permission")]
    permission: String,
}

#[derive(Serialize, Deserialize, Default)]
struct GranteeXml {
    #[serde(rename = "@xmlns:xsi", default, skip_deserializing)]
    xmlns_xsi: &'static str,
    #[serde(rename = "@xsi:type", alias = "@type", default)]
    kind: String,
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(
        rename = "DisplayName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    display_name: Option<String>,
    #[serde(
        rename = "EmailAddress",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    email: Option<String>,
    #[serde(rename = "URI", default, skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
}

fn grant_xml(g: &Grant) -> GrantXml {
    let grantee = match &g.grantee {
        Grantee::Tenant(t) => GranteeXml {
            xmlns_xsi: XSI,
            kind: "CanonicalUser".into(),
            id: Some(t.clone()),
            display_name: Some(t.clone()),
            ..Default::default()
        },
        Grantee::AllUsers | Grantee::AuthenticatedUsers => GranteeXml {
            xmlns_xsi: XSI,
            kind: "Group".into(),
            uri: Some(
                if g.grantee == Grantee::AllUsers {
                    ALL_USERS
                } else {
                    AUTHENTICATED_USERS
                }
                .into(),
            ),
            ..Default::default()
        },
    };
    GrantXml {
        grantee,
        permission: g.permission.as_str().into(),
    }
}

fn policy_xml(owner: &str, acl: &Acl) -> S3Result<String> {
    let wire = PolicyXml {
        xmlns: xml::NS,
        owner: Some(OwnerXml {
            id: owner.to_string(),
            display_name: owner.to_string(),
        }),
        list: ListXml {
            grants: acl.grants(owner).iter().map(grant_xml).collect(),
        },
    };
    let body = quick_xml::se::to_string(&wire).map_err(S3Error::internal)?;
    Ok(format!("{}{body}", xml::HEADER))
}

// ---- reading what a request asks for ----------------------------------------

fn malformed_acl() -> S3Error {
    S3Error::new(
        S3ErrorCode::MalformedAclError,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    )
}

/// A grantee as a request names it, before the tenant is looked up.
pub(super) enum Named {
    Id(String),
    Uri(String),
    Email(String),
}

async fn resolve(gw: &Gateway, named: Named) -> S3Result<Grantee> {
    match named {
        Named::Uri(u) if u == ALL_USERS => Ok(Grantee::AllUsers),
        Named::Uri(u) if u == AUTHENTICATED_USERS => Ok(Grantee::AuthenticatedUsers),
        Named::Uri(u) => Err(S3Error::invalid_argument(format!("Invalid group uri: {u}"))),
        // Tenants have no e-mail addresses, so none resolves.
        Named::Email(e) => Err(S3Error::new(
            S3ErrorCode::UnresolvableGrantByEmailAddress,
            format!("The e-mail address you provided does not match any account on record: {e}"),
        )),
        Named::Id(id) => match gw.catalog.get_tenant(&id).await? {
            Some(t) => Ok(Grantee::Tenant(t.name)),
            None => Err(S3Error::invalid_argument(format!("Invalid id: {id}"))),
        },
    }
}

/// An explicit list equal to a canned ACL's expansion is kept as that
/// canned ACL, which every reader understands. Any other list keeps the
/// groups' grants first, then the tenants', each in the order given, as
/// canned ACLs read back.
fn simplest(mut grants: Vec<Grant>, owner: &str) -> Acl {
    grants.sort_by_key(|g| matches!(g.grantee, Grantee::Tenant(_)));
    grants.dedup();
    [
        CannedAcl::Private,
        CannedAcl::PublicRead,
        CannedAcl::PublicReadWrite,
        CannedAcl::AuthenticatedRead,
    ]
    .into_iter()
    .find(|c| Acl::Canned(*c).grants(owner) == grants)
    .map_or(Acl::Grants(grants), Acl::Canned)
}

/// The grants of an AccessControlPolicy body, grantees as named.
pub(super) fn parse_policy(body: &[u8]) -> S3Result<Vec<(Named, Permission)>> {
    let policy: PolicyXml = xml::parse(body).map_err(|_| malformed_acl())?;
    if policy.list.grants.len() > MAX_ACL_GRANTS {
        return Err(malformed_acl());
    }
    policy
        .list
        .grants
        .into_iter()
        .map(|g| {
            let permission = Permission::parse(g.permission.trim()).ok_or_else(malformed_acl)?;
            let e = g.grantee;
            let named = match (e.kind.as_str(), e.id, e.uri, e.email) {
                ("CanonicalUser", Some(id), _, _) => Named::Id(id),
                ("Group", _, Some(uri), _) => Named::Uri(uri),
                ("AmazonCustomerByEmail", _, _, Some(email)) => Named::Email(email),
                _ => return Err(malformed_acl()),
            };
            Ok((named, permission))
        })
        .collect()
}

/// The ACL an AccessControlPolicy body gives a resource owned by `owner`.
async fn acl_from_policy(gw: &Gateway, body: &[u8], owner: &str) -> S3Result<Acl> {
    let mut grants = Vec::new();
    for (named, permission) in parse_policy(body)? {
        grants.push(Grant::new(resolve(gw, named).await?, permission));
    }
    Ok(simplest(grants, owner))
}

/// `x-amz-grant-*` headers, each a list like `id="t1", uri="http://…"`.
const GRANT_HEADERS: [(&str, Permission); 5] = [
    ("x-amz-grant-read", Permission::Read),
    ("x-amz-grant-write", Permission::Write),
    ("x-amz-grant-read-acp", Permission::ReadAcp),
    ("x-amz-grant-write-acp", Permission::WriteAcp),
    ("x-amz-grant-full-control", Permission::FullControl),
];

async fn grants_from_headers(gw: &Gateway, req: &S3Request) -> S3Result<Option<Vec<Grant>>> {
    let mut grants = Vec::new();
    let mut any = false;
    for (name, permission) in GRANT_HEADERS {
        let Some(value) = req.header(name) else {
            continue;
        };
        any = true;
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, v) = item
                .split_once('=')
                .ok_or_else(|| S3Error::invalid_argument(format!("Invalid {name}: {item}")))?;
            let v = v.trim().trim_matches('"').to_string();
            let named = match kind.trim().to_ascii_lowercase().as_str() {
                "id" => Named::Id(v),
                "uri" => Named::Uri(v),
                "emailaddress" => Named::Email(v),
                _ => return Err(S3Error::invalid_argument(format!("Invalid {name}: {item}"))),
            };
            if grants.len() >= MAX_ACL_GRANTS {
                return Err(S3Error::invalid_argument("Too many grants"));
            }
            grants.push(Grant::new(resolve(gw, named).await?, permission));
        }
    }
    Ok(any.then_some(grants))
}

/// The ACL a request's headers ask for a resource that `owner` will own in
/// a bucket owned by `bucket_owner`: a canned `x-amz-acl`, or
/// `x-amz-grant-*` headers (not both). `None` if neither is sent.
pub async fn header_acl(
    gw: &Gateway,
    req: &S3Request,
    owner: &str,
    bucket_owner: &str,
) -> S3Result<Option<Acl>> {
    let grants = grants_from_headers(gw, req).await?;
    match (req.header("x-amz-acl"), grants) {
        (Some(_), Some(_)) => Err(S3Error::invalid_request(
            "Specifying both Canned ACLs and Header Grants is not allowed",
        )),
        (Some(name), None) => Acl::from_canned(name.trim(), owner, bucket_owner)
            .map(Some)
            .ok_or_else(|| S3Error::invalid_argument(format!("Unsupported canned ACL {name:?}"))),
        (None, Some(grants)) => Ok(Some(simplest(grants, owner))),
        (None, None) => Ok(None),
    }
}

/// The owner a new object gets: the tenant that writes it (an anonymous
/// writer's object belongs to the bucket's owner).
pub fn writer(req: &S3Request, bucket_owner: &str) -> String {
    req.principal().tenant().unwrap_or(bucket_owner).to_string()
}

async fn requested_acl(
    gw: &Gateway,
    mut req: S3Request,
    owner: &str,
    bucket_owner: &str,
) -> S3Result<Acl> {
    if let Some(acl) = header_acl(gw, &req, owner, bucket_owner).await? {
        return Ok(acl);
    }
    let body = req.read_verified_body(MAX_XML_BODY_BYTES).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(S3Error::new(
            S3ErrorCode::MalformedAclError,
            "Give a canned ACL in x-amz-acl, grants in x-amz-grant-*, or an AccessControlPolicy body.",
        ));
    }
    acl_from_policy(gw, &body, owner).await
}

// ---- the operations -----------------------------------------------------------

pub async fn get_bucket_acl(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = acl_readable_bucket(gw, req.principal(), req.bucket()?).await?;
    Ok(xml_response(StatusCode::OK, policy_xml(&b.owner, &b.acl)?))
}

pub async fn put_bucket_acl(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    let name = req.bucket()?.to_string();
    let b = acl_writable_bucket(gw, req.principal(), &name).await?;
    let acl = requested_acl(gw, req, &b.owner, &b.owner).await?;
    gw.catalog.update_bucket(&b, BucketUpdate::Acl(acl)).await?;
    Ok(empty_response(StatusCode::OK))
}

pub async fn get_object_acl(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    req.check_version_id()?;
    let (_, o) = acl_readable_object(gw, req.principal(), req.bucket()?, req.key()?).await?;
    Ok(xml_response(StatusCode::OK, policy_xml(&o.owner, &o.acl)?))
}

pub async fn put_object_acl(gw: &Arc<Gateway>, req: S3Request) -> S3Result<Response> {
    req.check_version_id()?;
    let bucket = req.bucket()?.to_string();
    let key = req.key()?.to_string();
    let (b, o) = acl_writable_object(gw, req.principal(), &bucket, &key).await?;
    let acl = requested_acl(gw, req, &o.owner, &b.owner).await?;
    // Only the object that was checked gets the ACL: one written over it
    // meanwhile (perhaps by its bucket's owner) is left alone.
    if !gw.catalog.set_object_acl(&b, &key, &o.blob.id, acl).await? {
        return Err(S3Error::new(
            S3ErrorCode::OperationAborted,
            "The object changed or went while its ACL was being set; please try again.",
        ));
    }
    Ok(empty_response(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_serialise_as_s3_lists_them() {
        let acl = Acl::Grants(vec![
            Grant::new(Grantee::AllUsers, Permission::Read),
            Grant::new(Grantee::Tenant("alt".into()), Permission::WriteAcp),
        ]);
        let text = policy_xml("main", &acl).unwrap();
        assert!(
            text.contains("<Owner><ID>main</ID><DisplayName>main</DisplayName></Owner>"),
            "{text}"
        );
        assert!(text.contains("<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>"), "{text}");
        assert!(text.contains("<Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>alt</ID><DisplayName>alt</DisplayName></Grantee><Permission>WRITE_ACP</Permission>"), "{text}");
        let none = policy_xml("main", &Acl::Grants(vec![])).unwrap();
        assert!(
            none.contains("<AccessControlList/>")
                || none.contains("<AccessControlList></AccessControlList>"),
            "{none}"
        );
    }

    #[test]
    fn a_policy_reads_back_with_its_grantee_types() {
        let body = br#"<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>main</ID></Owner><AccessControlList>
            <Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser"><ID>alt</ID></Grantee><Permission>FULL_CONTROL</Permission></Grant>
            <Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>
        </AccessControlList></AccessControlPolicy>"#;
        let p: PolicyXml = xml::parse(body).unwrap();
        let kinds: Vec<_> = p
            .list
            .grants
            .iter()
            .map(|g| g.grantee.kind.as_str())
            .collect();
        assert_eq!(kinds, ["CanonicalUser", "Group"]);
        assert_eq!(p.list.grants[0].grantee.id.as_deref(), Some("alt"));
        let empty: PolicyXml =
            xml::parse(b"<AccessControlPolicy><AccessControlList/></AccessControlPolicy>").unwrap();
        assert!(empty.list.grants.is_empty());
    }

    #[test]
    fn lists_equal_to_a_canned_acl_stay_canned() {
        let owner_fc = Grant::new(Grantee::Tenant("o".into()), Permission::FullControl);
        assert_eq!(
            simplest(
                vec![
                    Grant::new(Grantee::AllUsers, Permission::Read),
                    owner_fc.clone()
                ],
                "o"
            ),
            Acl::Canned(CannedAcl::PublicRead)
        );
        assert_eq!(
            simplest(vec![owner_fc.clone()], "o"),
            Acl::Canned(CannedAcl::Private)
        );
        assert_eq!(simplest(vec![], "o"), Acl::Grants(vec![]));
        assert_eq!(
            simplest(
                vec![
                    owner_fc.clone(),
                    Grant::new(Grantee::AllUsers, Permission::Read)
                ],
                "o"
            ),
            Acl::Canned(CannedAcl::PublicRead),
            "the order grants are given in does not matter"
        );
        let alt = Grant::new(Grantee::Tenant("alt".into()), Permission::Read);
        let group = Grant::new(Grantee::AuthenticatedUsers, Permission::Write);
        assert_eq!(
            simplest(vec![owner_fc.clone(), alt.clone(), group.clone()], "o"),
            Acl::Grants(vec![group, owner_fc, alt]),
            "groups first, then tenants in the order given"
        );
    }
}
