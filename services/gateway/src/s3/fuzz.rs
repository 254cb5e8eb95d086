//! Entry points for fuzzing the parsers that read request bodies from the
//! outside: the XML bodies (Complete, Delete, ACL, CORS, CreateBucket) and the
//! POST policy. The `cargo fuzz` targets under `fuzz/` call them, and the
//! property tests below run them on stable Rust in CI. Each must answer
//! any input with a value or an S3 error, never a panic.

use std::collections::BTreeMap;

use super::{acl, bucket, cors, multipart, post_object, xml};

/// Every XML request body parser, on the same bytes.
pub fn xml_bodies(data: &[u8]) {
    let _ = xml::parse::<multipart::CompleteRequest>(data);
    let _ = bucket::DeleteRequest::parse(data);
    let _ = xml::parse::<bucket::CreateBucketConfiguration>(data);
    let _ = acl::parse_policy(data);
    let _ = cors::parse_config(data);
}

/// A POST policy document (JSON) checked against form fields. The first
/// bytes up to a NUL are `name=value` lines of fields; the rest is the
/// policy.
pub fn post_policy(data: &[u8]) {
    let (fields, policy) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let fields: BTreeMap<String, String> = String::from_utf8_lossy(fields)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if let Ok(policy) = serde_json::from_slice::<serde_json::Value>(policy) {
        let _ = post_object::check_policy(&policy, &fields, 1_700_000_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COMPLETE: &str = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag></Part></CompleteMultipartUpload>";
    const DELETE: &str =
        "<Delete><Quiet>true</Quiet><Object><Key>a</Key><VersionId>v</VersionId></Object></Delete>";
    const ACL: &str = "<AccessControlPolicy><Owner><ID>o</ID></Owner><AccessControlList><Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>";
    const POLICY: &str = "key=a\nbucket=b\0{\"expiration\":\"2030-01-01T00:00:00Z\",\"conditions\":[{\"bucket\":\"b\"},[\"starts-with\",\"$key\",\"\"],[\"content-length-range\",0,10]]}";

    /// A known body with a few bytes changed, cut, or spliced.
    fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::sample::select(seeds),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            proptest::option::of(any::<usize>()),
        )
            .prop_map(|(seed, edits, cut)| {
                let mut b = seed.as_bytes().to_vec();
                for (at, v) in edits {
                    let i = at % b.len();
                    b[i] = v;
                }
                if let Some(c) = cut {
                    b.truncate(c % (b.len() + 1));
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn xml_bodies_never_panic(data in mutated(&[COMPLETE, DELETE, ACL])) {
            xml_bodies(&data);
        }

        #[test]
        fn xml_bodies_never_panic_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            xml_bodies(&data);
        }

        #[test]
        fn post_policies_never_panic(data in mutated(&[POLICY])) {
            post_policy(&data);
        }
    }
}
