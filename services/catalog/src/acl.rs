//! Access control lists on buckets and objects, as S3 defines them: a
//! list of grants, each giving one permission to a tenant or to a group.
//! Most resources carry a canned ACL, kept in its short form (the form
//! every record written before explicit grants has); an explicit list
//! (PutBucketAcl / PutObjectAcl with grants, `bucket-owner-*` canned ACLs,
//! `x-amz-grant-*` headers) is kept as its grants.

use serde::{Deserialize, Serialize};

use crate::CannedAcl;

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Permission {
    Read,
    Write,
    ReadAcp,
    WriteAcp,
    FullControl,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::ReadAcp => "READ_ACP",
            Self::WriteAcp => "WRITE_ACP",
            Self::FullControl => "FULL_CONTROL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Read,
            Self::Write,
            Self::ReadAcp,
            Self::WriteAcp,
            Self::FullControl,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// Whether holding `self` gives `wanted`.
    pub fn gives(self, wanted: Permission) -> bool {
        self == wanted || self == Self::FullControl
    }
}

/// Who a grant is for: one tenant (its canonical id is its name), anyone,
/// or any tenant that signed its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Grantee {
    Tenant(String),
    AllUsers,
    AuthenticatedUsers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grantee: Grantee,
    pub permission: Permission,
}

impl Grant {
    pub fn new(grantee: Grantee, permission: Permission) -> Self {
        Self {
            grantee,
            permission,
        }
    }
}

/// Who is asking: a tenant, or an anonymous caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester<'a> {
    Tenant(&'a str),
    Anonymous,
}

/// A resource's ACL: a canned one, or an explicit list of grants (which
/// may be empty: every grant revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Acl {
    Canned(CannedAcl),
    Grants(Vec<Grant>),
}

impl Default for Acl {
    fn default() -> Self {
        Self::Canned(CannedAcl::Private)
    }
}

impl From<CannedAcl> for Acl {
    fn from(c: CannedAcl) -> Self {
        Self::Canned(c)
    }
}

impl Acl {
    /// The grants this ACL stands for, on a resource owned by `owner`: a
    /// canned ACL's groups first, then the owner's full control, as S3
    /// lists them.
    pub fn grants(&self, owner: &str) -> Vec<Grant> {
        let canned = match self {
            Self::Grants(g) => return g.clone(),
            Self::Canned(c) => *c,
        };
        let mut out = match canned {
            CannedAcl::Private => vec![],
            CannedAcl::PublicRead => vec![Grant::new(Grantee::AllUsers, Permission::Read)],
            CannedAcl::PublicReadWrite => vec![
                Grant::new(Grantee::AllUsers, Permission::Read),
                Grant::new(Grantee::AllUsers, Permission::Write),
            ],
            CannedAcl::AuthenticatedRead => {
                vec![Grant::new(Grantee::AuthenticatedUsers, Permission::Read)]
            }
        };
        out.push(Grant::new(
            Grantee::Tenant(owner.to_string()),
            Permission::FullControl,
        ));
        out
    }

    /// Whether a grant of this ACL (on a resource owned by `owner`) gives
    /// `who` the permission `wanted`.
    pub fn allows(&self, owner: &str, who: Requester, wanted: Permission) -> bool {
        self.grants(owner).iter().any(|g| {
            g.permission.gives(wanted)
                && match (&g.grantee, who) {
                    (Grantee::AllUsers, _) => true,
                    (Grantee::AuthenticatedUsers, Requester::Tenant(_)) => true,
                    (Grantee::Tenant(t), Requester::Tenant(w)) => t == w,
                    _ => false,
                }
        })
    }

    /// The ACL a canned name gives a new object owned by `owner` in a bucket
    /// owned by `bucket_owner` (the `bucket-owner-*` ones name the bucket's
    /// owner). `None` for a name S3 does not define.
    pub fn from_canned(name: &str, owner: &str, bucket_owner: &str) -> Option<Self> {
        let with_bucket_owner = |p: Permission| {
            let mut g = vec![Grant::new(
                Grantee::Tenant(owner.to_string()),
                Permission::FullControl,
            )];
            if bucket_owner != owner {
                g.push(Grant::new(Grantee::Tenant(bucket_owner.to_string()), p));
            }
            Self::Grants(g)
        };
        match name {
            "bucket-owner-read" => Some(with_bucket_owner(Permission::Read)),
            "bucket-owner-full-control" => Some(with_bucket_owner(Permission::FullControl)),
            // Only EC2 reads AMI bundles; nothing else is granted.
            "aws-exec-read" => Some(Self::Canned(CannedAcl::Private)),
            other => CannedAcl::parse(other).map(Self::Canned),
        }
    }
}

/// Who may do what with a bucket and its objects. A bucket's owner may
/// do everything with it and read every object in it (insitu's rule, so
/// that a tenant's jobs can process whatever lands in its buckets);
/// an object's owner (the tenant that wrote it) may always read and change
/// its ACL; everything else is what the grants give.
pub mod access {
    use super::{Permission, Requester};
    use crate::{BucketRecord, ObjectRecord};

    fn owns(who: Requester, owner: &str) -> bool {
        who == Requester::Tenant(owner)
    }

    /// Listing a bucket, and learning that a key in it is missing.
    pub fn may_list(who: Requester, bucket: &BucketRecord) -> bool {
        owns(who, &bucket.owner) || bucket.acl.allows(&bucket.owner, who, Permission::Read)
    }

    /// Writing and deleting objects in a bucket.
    pub fn may_write(who: Requester, bucket: &BucketRecord) -> bool {
        owns(who, &bucket.owner) || bucket.acl.allows(&bucket.owner, who, Permission::Write)
    }

    pub fn may_read_bucket_acl(who: Requester, bucket: &BucketRecord) -> bool {
        owns(who, &bucket.owner) || bucket.acl.allows(&bucket.owner, who, Permission::ReadAcp)
    }

    pub fn may_write_bucket_acl(who: Requester, bucket: &BucketRecord) -> bool {
        owns(who, &bucket.owner) || bucket.acl.allows(&bucket.owner, who, Permission::WriteAcp)
    }

    pub fn may_read(who: Requester, bucket: &BucketRecord, obj: &ObjectRecord) -> bool {
        owns(who, &bucket.owner) || obj.acl.allows(&obj.owner, who, Permission::Read)
    }

    pub fn may_read_acl(who: Requester, bucket: &BucketRecord, obj: &ObjectRecord) -> bool {
        owns(who, &bucket.owner)
            || owns(who, &obj.owner)
            || obj.acl.allows(&obj.owner, who, Permission::ReadAcp)
    }

    pub fn may_write_acl(who: Requester, bucket: &BucketRecord, obj: &ObjectRecord) -> bool {
        owns(who, &bucket.owner)
            || owns(who, &obj.owner)
            || obj.acl.allows(&obj.owner, who, Permission::WriteAcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_acls_expand_with_the_owner_last() {
        let g = Acl::Canned(CannedAcl::PublicReadWrite).grants("o");
        assert_eq!(
            g,
            vec![
                Grant::new(Grantee::AllUsers, Permission::Read),
                Grant::new(Grantee::AllUsers, Permission::Write),
                Grant::new(Grantee::Tenant("o".into()), Permission::FullControl),
            ]
        );
    }

    #[test]
    fn grants_decide_access() {
        use Requester::*;
        let acl = Acl::Grants(vec![
            Grant::new(Grantee::Tenant("a".into()), Permission::Read),
            Grant::new(Grantee::AuthenticatedUsers, Permission::ReadAcp),
            Grant::new(Grantee::Tenant("w".into()), Permission::FullControl),
        ]);
        assert!(acl.allows("o", Tenant("a"), Permission::Read));
        assert!(!acl.allows("o", Tenant("a"), Permission::Write));
        assert!(acl.allows("o", Tenant("b"), Permission::ReadAcp));
        assert!(!acl.allows("o", Anonymous, Permission::ReadAcp));
        assert!(acl.allows("o", Tenant("w"), Permission::WriteAcp));
        assert!(
            !acl.allows("o", Tenant("o"), Permission::Read),
            "an explicit list is all there is"
        );
        assert!(Acl::Grants(vec![]).grants("o").is_empty());
        let public = Acl::Canned(CannedAcl::PublicRead);
        assert!(public.allows("o", Anonymous, Permission::Read));
        assert!(!public.allows("o", Anonymous, Permission::Write));
        assert!(public.allows("o", Tenant("o"), Permission::WriteAcp));
    }

    #[test]
    fn stored_forms_read_back_including_the_old_canned_string() {
        let old: Acl = serde_json::from_str("\"public-read\"").unwrap();
        assert_eq!(old, Acl::Canned(CannedAcl::PublicRead));
        let explicit = Acl::from_canned("bucket-owner-read", "alt", "main").unwrap();
        let text = serde_json::to_string(&explicit).unwrap();
        assert_eq!(serde_json::from_str::<Acl>(&text).unwrap(), explicit);
        assert_eq!(
            explicit.grants("alt"),
            vec![
                Grant::new(Grantee::Tenant("alt".into()), Permission::FullControl),
                Grant::new(Grantee::Tenant("main".into()), Permission::Read),
            ]
        );
        assert_eq!(
            Acl::from_canned("bucket-owner-full-control", "main", "main"),
            Some(Acl::Grants(vec![Grant::new(
                Grantee::Tenant("main".into()),
                Permission::FullControl
            )]))
        );
        assert_eq!(Acl::from_canned("nope", "a", "b"), None);
    }
}
