//! Persistent record types. Every record is stored as one format-version byte
//! followed by its JSON encoding; see docs/ARCHITECTURE.md for the key layout.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::acl::Acl;
use crate::CatalogError;

/// A record kept in the catalog. `VERSION` is written before every encoded
/// record so that a future format change can migrate old records explicitly.
pub trait Record: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u8;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_writer(&mut out, self).unwrap_or_default();
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, CatalogError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(CatalogError::Corrupt(format!(
                "empty {} record",
                Self::KIND
            )));
        };
        if version != Self::VERSION {
            return Err(CatalogError::Corrupt(format!(
                "{} record has format version {version}, this build reads {}",
                Self::KIND,
                Self::VERSION
            )));
        }
        serde_json::from_slice(body)
            .map_err(|e| CatalogError::Corrupt(format!("{} record: {e}", Self::KIND)))
    }
}

/// The canned access control lists that need no name but the owner's;
/// `bucket-owner-*` ones become explicit grants (see [`crate::Acl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CannedAcl {
    #[default]
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
}

impl CannedAcl {
    /// Whether the ACL lets someone other than the owner read: anyone, or
    /// (`authenticated`) any signed-in tenant.
    pub fn lets_read(self, authenticated: bool) -> bool {
        match self {
            Self::PublicRead | Self::PublicReadWrite => true,
            Self::AuthenticatedRead => authenticated,
            Self::Private => false,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(Self::Private),
            "public-read" => Some(Self::PublicRead),
            "public-read-write" => Some(Self::PublicReadWrite),
            "authenticated-read" => Some(Self::AuthenticatedRead),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::PublicRead => "public-read",
            Self::PublicReadWrite => "public-read-write",
            Self::AuthenticatedRead => "authenticated-read",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantRecord {
    pub name: String,
    pub created_ms: i64,
    /// Set by an operator; absent in records written before policies.
    #[serde(default)]
    pub policy: TenantPolicy,
}

/// What an operator allows a tenant's jobs: the container runtime, and
/// maximums below the global limits. A spec beyond them is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// `runsc`: every task of the tenant runs under gVisor, whatever its
    /// spec says. `runc` (or none): a phase may still ask for `runsc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_mb: Option<u64>,
    /// Values for phases that give none (within the maximums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_disk_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_output_mb: Option<u64>,
}
impl Record for TenantRecord {
    const KIND: &'static str = "tenant";
    const VERSION: u8 = 1;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessKeyRecord {
    pub access_key_id: String,
    /// Kept in the clear because SigV4 verification needs the secret itself.
    pub secret_access_key: String,
    pub tenant: String,
    pub created_ms: i64,
}
impl Record for AccessKeyRecord {
    const KIND: &'static str = "access key";
    const VERSION: u8 = 1;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BucketRecord {
    pub name: String,
    pub owner: String,
    pub created_ms: i64,
    pub acl: Acl,
    /// The bucket's CORS rules, if any were set (PutBucketCors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
}
impl Record for BucketRecord {
    const KIND: &'static str = "bucket";
    const VERSION: u8 = 1;
}

/// A bucket's CORS configuration: the rules in the order they were given;
/// the first rule that matches a request answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CorsConfig {
    pub rules: Vec<CorsRule>,
}

/// One CORS rule, as PutBucketCors gives it. Origins and allowed headers may
/// hold one `*` wildcard each; methods are upper-case HTTP methods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CorsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

/// A change to a bucket's settings, applied atomically to its record.
#[derive(Debug, Clone, PartialEq)]
pub enum BucketUpdate {
    Acl(Acl),
    /// `None` removes the CORS configuration.
    Cors(Option<CorsConfig>),
}

impl BucketUpdate {
    pub fn apply(self, rec: &mut BucketRecord) {
        match self {
            Self::Acl(acl) => rec.acl = acl,
            Self::Cors(cors) => rec.cors = cors,
        }
    }
}

/// Flexible checksum algorithms (`x-amz-checksum-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [Self; 5] = [
        Self::Crc32,
        Self::Crc32c,
        Self::Crc64nvme,
        Self::Sha1,
        Self::Sha256,
    ];

    /// The lower-case name S3 puts after `x-amz-checksum-`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "crc32",
            Self::Crc32c => "crc32c",
            Self::Crc64nvme => "crc64nvme",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
        }
    }

    /// Parses a name in any case (`SHA256`, `crc32c`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// A whole-object checksum of a multipart upload can only be computed
    /// from the parts' ones for the CRCs, which combine.
    pub fn combines(self) -> bool {
        matches!(self, Self::Crc32 | Self::Crc32c | Self::Crc64nvme)
    }
}

/// How a multipart object's checksum was made: of the parts' checksums
/// (`-N` at the end), or of the whole object's bytes (CRCs only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChecksumType {
    Composite,
    FullObject,
}

impl ChecksumType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Composite => "COMPOSITE",
            Self::FullObject => "FULL_OBJECT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "COMPOSITE" => Some(Self::Composite),
            "FULL_OBJECT" => Some(Self::FullObject),
            _ => None,
        }
    }
}

/// The checksum a multipart upload was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub kind: ChecksumType,
}

/// An object's flexible checksum, kept so that GET, HEAD and
/// GetObjectAttributes can return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub kind: ChecksumType,
    /// base64; a composite checksum ends in `-N`.
    pub value: String,
    /// The parts' own checksums (base64), in part order, for an object
    /// made by a multipart upload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// Where a blob lives: its id (the file name on each node) and the nodes
/// holding a durable replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    pub id: String,
    pub size: u64,
    pub replicas: Vec<String>,
}

/// Response headers stored with an object and returned on GET/HEAD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ObjectHeaders {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<String>,
    /// `x-amz-meta-*` headers, names lower-cased without the prefix.
    pub user_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRecord {
    pub size: u64,
    /// Quoted-free ETag: MD5 hex, or MD5-of-part-MD5s followed by `-N`.
    pub etag: String,
    pub last_modified_ms: i64,
    pub owner: String,
    pub headers: ObjectHeaders,
    pub acl: Acl,
    pub blob: BlobRef,
    /// Number of multipart parts, 0 for a single PUT.
    pub parts_count: u32,
    /// Byte sizes of the original parts, for `partNumber` reads.
    #[serde(default)]
    pub part_sizes: Vec<u64>,
    /// The multipart upload that made the object, so that completing it
    /// again answers as the first completion did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// The flexible checksum the client sent or asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ObjectChecksum>,
}
impl Record for ObjectRecord {
    const KIND: &'static str = "object";
    const VERSION: u8 = 1;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub owner: String,
    pub initiated_ms: i64,
    pub headers: ObjectHeaders,
    pub acl: Acl,
    /// All parts of an upload go to these nodes so Complete can concatenate
    /// them locally into one plain file.
    pub nodes: Vec<String>,
    /// The checksum every part gets and the object's is made of, if the
    /// upload was created with one (`x-amz-checksum-algorithm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<UploadChecksum>,
}
impl Record for UploadRecord {
    const KIND: &'static str = "multipart upload";
    const VERSION: u8 = 1;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartRecord {
    pub part_number: u32,
    pub etag: String,
    pub last_modified_ms: i64,
    pub blob: BlobRef,
    /// The part's checksum (base64) in its upload's algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}
impl Record for PartRecord {
    const KIND: &'static str = "part";
    const VERSION: u8 = 1;
}

/// A blob no longer referenced by the catalog, waiting to be deleted on its
/// nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GcRecord {
    pub blob: BlobRef,
    pub queued_ms: i64,
}
impl Record for GcRecord {
    const KIND: &'static str = "gc entry";
    const VERSION: u8 = 1;
}

/// A blob a job has pinned (an input's version, or an object a task
/// referenced): garbage collection leaves it until the job ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinRecord {
    pub blob: BlobRef,
}
impl Record for PinRecord {
    const KIND: &'static str = "pin";
    const VERSION: u8 = 1;
}

/// A storage node known to the cluster. Its address may change between runs;
/// its id never does, because object records name replicas by id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub addr: String,
    pub registered_ms: i64,
    /// A draining node gets no new blobs and its replicas are moved away.
    #[serde(default)]
    pub draining: bool,
    /// A removed node is remembered so that it cannot rejoin by heartbeat.
    #[serde(default)]
    pub removed: bool,
    /// SHA-256 (hex) of the key the node sent with its first heartbeat;
    /// later heartbeats for this id must send the same key.
    #[serde(default)]
    pub key_sha256: Option<String>,
}
impl Record for NodeRecord {
    const KIND: &'static str = "node";
    const VERSION: u8 = 1;
}

/// Which record references a blob: the reverse index used by repair and
/// by the orphan sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlobOwner {
    Object {
        bucket: String,
        key: String,
    },
    Part {
        bucket: String,
        key: String,
        upload_id: String,
        part_number: u32,
    },
}
impl Record for BlobOwner {
    const KIND: &'static str = "blob owner";
    const VERSION: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_unknown_versions() {
        let t = TenantRecord {
            name: "acme".into(),
            created_ms: 5,
            policy: TenantPolicy::default(),
        };
        let bytes = t.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(TenantRecord::decode(&bytes).unwrap(), t);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(
            TenantRecord::decode(&bad),
            Err(CatalogError::Corrupt(_))
        ));
        assert!(TenantRecord::decode(&[]).is_err());
    }
}

// The jobs crate's records, stored in the same format as the catalog's own:
// version 1 is what the supervisor wrote before the catalog owned them.
macro_rules! job_record {
    ($($t:ident),*) => {$(
        impl Record for insitu_job_model::records::$t {
            const KIND: &'static str = stringify!($t);
            const VERSION: u8 = 1;
        }
    )*};
}
job_record!(
    JobRecord,
    InputRecord,
    TaskRecord,
    PieceRecord,
    OutputRecord,
    ErrorRecord,
    MemoRecord
);
