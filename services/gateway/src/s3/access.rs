//! Who may do what, by the catalog's rules (`insitu_catalog::access`):
//! tenants own buckets and may do everything with them; grants (canned or
//! explicit ACLs) open reads, writes and ACL access to others. Everything
//! else across tenants is `AccessDenied`.

use insitu_catalog::{access, BucketRecord, ObjectRecord, Requester};

use crate::auth::Principal;
use crate::error::{S3Error, S3Result};
use crate::Gateway;

pub fn is_owner(p: &Principal, bucket: &BucketRecord) -> bool {
    p.tenant() == Some(bucket.owner.as_str())
}

pub fn requester(p: &Principal) -> Requester<'_> {
    match p.tenant() {
        Some(t) => Requester::Tenant(t),
        None => Requester::Anonymous,
    }
}

/// Loads a bucket, failing with `NoSuchBucket`.
pub async fn bucket(gw: &Gateway, name: &str) -> S3Result<BucketRecord> {
    gw.catalog
        .get_bucket(name)
        .await?
        .ok_or_else(|| S3Error::no_such_bucket(name))
}

fn allowed(ok: bool, b: BucketRecord) -> S3Result<BucketRecord> {
    if ok {
        Ok(b)
    } else {
        Err(S3Error::access_denied())
    }
}

/// Bucket owner only: deletion, CORS, listing uploads.
pub async fn owned_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    allowed(is_owner(p, &b), b)
}

/// Listing a bucket: the owner, or a READ grant.
pub async fn readable_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    allowed(access::may_list(requester(p), &b), b)
}

/// Writing objects: the owner, or a WRITE grant.
pub async fn writable_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    allowed(access::may_write(requester(p), &b), b)
}

/// Reading a bucket's ACL: the owner, or a READ_ACP grant.
pub async fn acl_readable_bucket(
    gw: &Gateway,
    p: &Principal,
    name: &str,
) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    allowed(access::may_read_bucket_acl(requester(p), &b), b)
}

/// Changing a bucket's ACL: the owner, or a WRITE_ACP grant.
pub async fn acl_writable_bucket(
    gw: &Gateway,
    p: &Principal,
    name: &str,
) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    allowed(access::may_write_bucket_acl(requester(p), &b), b)
}

/// An object and its bucket, if `may` lets the principal at it. A missing
/// key is `NoSuchKey` only for callers allowed to list the bucket, as in
/// S3; others learn nothing and get `AccessDenied`.
async fn object_if(
    gw: &Gateway,
    p: &Principal,
    bucket_name: &str,
    key: &str,
    may: fn(Requester, &BucketRecord, &ObjectRecord) -> bool,
) -> S3Result<(BucketRecord, ObjectRecord)> {
    let b = bucket(gw, bucket_name).await?;
    let who = requester(p);
    match gw.catalog.get_object(bucket_name, key).await? {
        Some(o) if may(who, &b, &o) => Ok((b, o)),
        Some(_) => Err(S3Error::access_denied()),
        None if access::may_list(who, &b) => Err(S3Error::no_such_key(key)),
        None => Err(S3Error::access_denied()),
    }
}

/// Reading an object: the bucket owner, or a READ grant on the object.
pub async fn readable_object(
    gw: &Gateway,
    p: &Principal,
    bucket_name: &str,
    key: &str,
) -> S3Result<(BucketRecord, ObjectRecord)> {
    object_if(gw, p, bucket_name, key, access::may_read).await
}

/// Reading an object's ACL: the bucket's or the object's owner, or READ_ACP.
pub async fn acl_readable_object(
    gw: &Gateway,
    p: &Principal,
    bucket_name: &str,
    key: &str,
) -> S3Result<(BucketRecord, ObjectRecord)> {
    object_if(gw, p, bucket_name, key, access::may_read_acl).await
}

/// Changing an object's ACL: the bucket's or the object's owner, or
/// WRITE_ACP.
pub async fn acl_writable_object(
    gw: &Gateway,
    p: &Principal,
    bucket_name: &str,
    key: &str,
) -> S3Result<(BucketRecord, ObjectRecord)> {
    object_if(gw, p, bucket_name, key, access::may_write_acl).await
}
