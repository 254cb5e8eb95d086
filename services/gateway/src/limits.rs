//! Every limit the gateway enforces, with its reason.

/// S3's maximum key length in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// S3 limits user metadata (`x-amz-meta-*` names and values) to 2 KiB.
pub const MAX_USER_METADATA_BYTES: usize = 2 * 1024;
/// S3's largest single object: 5 TiB.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// S3's largest single PUT: 5 GiB; beyond that clients must use multipart.
pub const MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Every part but the last must be at least 5 MiB, as in S3.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// Part numbers run from 1 to 10 000, as in S3.
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Listing pages hold at most 1000 entries, as in S3.
pub const MAX_LIST_KEYS: usize = 1000;
/// DeleteObjects takes at most 1000 keys, as in S3.
pub const MAX_DELETE_KEYS: usize = 1000;
/// XML request bodies (Complete, DeleteObjects, ACL) are small; refuse more
/// than this so a hostile body cannot exhaust memory.
pub const MAX_XML_BODY_BYTES: usize = 2 * 1024 * 1024;
/// A body signed without `x-amz-content-sha256` (curl) is read whole
/// before its request is authenticated, so it is small, and few are read
/// at once: at most 64 MiB held for requests nobody has proved yet.
pub const MAX_UNVERIFIED_BODY_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_UNVERIFIED_BODIES: usize = 4;
/// Grants in one ACL, as in S3.
pub const MAX_ACL_GRANTS: usize = 100;
/// Total request header bytes; hyper refuses larger header sections.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Allowed difference between a request's signing time and ours.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;
/// Presigned URLs may live at most 7 days, as in S3.
pub const MAX_PRESIGN_EXPIRES_SECS: i64 = 7 * 24 * 3600;
/// One aws-chunked chunk header line (size + signature) is short; cap it.
pub const MAX_CHUNK_HEADER_BYTES: usize = 4096;
/// POST Object form fields other than the file are small.
pub const MAX_POST_FIELD_BYTES: usize = 64 * 1024;
/// POST Object fields arrive before the policy can be checked: cap their
/// number and total size so an anonymous form cannot exhaust memory.
pub const MAX_POST_FIELDS: usize = 100;
pub const MAX_POST_FORM_BYTES: usize = 1024 * 1024;
/// Trailer lines after an aws-chunked body (checksums and a signature).
pub const MAX_TRAILER_LINES: usize = 16;
/// The shortest cluster secret accepted: it is the only proof a node or a
/// gateway has on the internal plane.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;

/// Buckets in one ListBuckets page (S3's own maximum for `max-buckets`).
pub const MAX_LIST_BUCKETS: usize = 10_000;
