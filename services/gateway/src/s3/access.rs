//! Who may do what: tenants own buckets; canned ACLs open reads (and, for
//! `public-read-write` buckets, writes) to others. Everything else across
//! tenants is `AccessDenied`.

use insitu_catalog::{BucketRecord, CannedAcl, ObjectRecord};

use crate::auth::Principal;
use crate::error::{S3Error, S3Result};
use crate::Gateway;

pub fn is_owner(p: &Principal, bucket: &BucketRecord) -> bool {
    p.tenant() == Some(bucket.owner.as_str())
}

pub fn acl_allows_read(p: &Principal, acl: CannedAcl) -> bool {
    acl.lets_read(matches!(p, Principal::User { .. }))
}

/// Loads a bucket, failing with `NoSuchBucket`.
pub async fn bucket(gw: &Gateway, name: &str) -> S3Result<BucketRecord> {
    gw.catalog
        .get_bucket(name)
        .await?
        .ok_or_else(|| S3Error::no_such_bucket(name))
}

/// Bucket owner only: ACL changes, deletion, listing uploads.
pub async fn owned_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    if is_owner(p, &b) {
        Ok(b)
    } else {
        Err(S3Error::access_denied())
    }
}

/// Listing a bucket: the owner, or anyone its ACL lets read.
pub async fn readable_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    if is_owner(p, &b) || acl_allows_read(p, b.acl) {
        Ok(b)
    } else {
        Err(S3Error::access_denied())
    }
}

/// Writing objects: the owner, or anyone if the bucket is public-read-write.
pub async fn writable_bucket(gw: &Gateway, p: &Principal, name: &str) -> S3Result<BucketRecord> {
    let b = bucket(gw, name).await?;
    if is_owner(p, &b) || b.acl == CannedAcl::PublicReadWrite {
        Ok(b)
    } else {
        Err(S3Error::access_denied())
    }
}

/// Reading an object: the bucket owner, or anyone the object's ACL admits.
/// A missing key is `NoSuchKey` only for callers allowed to list the bucket,
/// as in S3; others learn nothing and get `AccessDenied`.
pub async fn readable_object(
    gw: &Gateway,
    p: &Principal,
    bucket_name: &str,
    key: &str,
) -> S3Result<(BucketRecord, ObjectRecord)> {
    let b = bucket(gw, bucket_name).await?;
    let owner = is_owner(p, &b);
    match gw.catalog.get_object(bucket_name, key).await? {
        Some(o) if owner || acl_allows_read(p, o.acl) => Ok((b, o)),
        Some(_) => Err(S3Error::access_denied()),
        None if owner || acl_allows_read(p, b.acl) => Err(S3Error::no_such_key(key)),
        None => Err(S3Error::access_denied()),
    }
}
