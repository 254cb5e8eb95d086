//! Entry points for fuzzing what authentication reads from the outside:
//! the SigV4 Authorization header, credential and date, the query string
//! as signed and as read, and the aws-chunked body decoder. The `cargo
//! fuzz` targets under `fuzz/` call them, and the property tests below run
//! them on stable Rust in CI. None may panic, whatever the input.

use bytes::Bytes;
use futures::StreamExt;

use super::chunked::{ChunkSigning, ChunkedDecoder, Trailers};
use super::sigv4::{self, Scope, SigningKey};

/// The header, credential, date and query parsers, on the same text.
pub fn sigv4_parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(h) = sigv4::parse_authorization(&text) {
        let _ = h.scope.as_string();
    }
    let _ = sigv4::parse_credential(&text);
    let _ = sigv4::parse_amz_date(&text);
    let _ = sigv4::canonical_query(&text, Some("X-Amz-Signature"));
    let _ = super::query_map(&text);
    let _ = sigv4::canonical_uri(&text);
    let _ = sigv4::canonical_header_value(&text);
}

/// Decodes `data` as an aws-chunked body, fed in pieces whose sizes the
/// first byte picks: unsigned and signed, with and without trailers.
pub fn aws_chunked(data: &[u8]) {
    let (step, body) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s % 64) + 1, rest),
        None => (1, data),
    };
    let scope = Scope {
        date: "20130524".into(),
        region: "us-east-1".into(),
        service: "s3".into(),
    };
    for signed in [false, true] {
        for trailer in [false, true] {
            let signing = signed.then(|| {
                SigningKey::derive("secret", &scope).map(|key| ChunkSigning {
                    key,
                    amz_date: "20130524T000000Z".into(),
                    scope: scope.as_string(),
                    seed_signature: "0".repeat(64),
                })
            });
            let pieces: Vec<Result<Bytes, crate::error::S3Error>> = body
                .chunks(step)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let decoder = ChunkedDecoder::new(
                futures::stream::iter(pieces).boxed(),
                signing.flatten(),
                trailer,
                Trailers::default(),
            );
            futures::executor::block_on(async {
                let mut s = decoder.into_stream();
                while let Some(item) = s.next().await {
                    if item.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";
    const QUERY: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&prefix=a+b%2B&X-Amz-Signature=00";
    const CHUNKED: &str = "\x07a;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\naaaaaaaaaa\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";

    fn mutated(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            proptest::option::of(any::<usize>()),
        )
            .prop_map(move |(edits, cut)| {
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
        fn sigv4_parsers_never_panic(data in prop_oneof![mutated(AUTH), mutated(QUERY)]) {
            sigv4_parsers(&data);
        }

        #[test]
        fn sigv4_parsers_never_panic_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            sigv4_parsers(&data);
        }

        #[test]
        fn the_chunked_decoder_never_panics(data in mutated(CHUNKED)) {
            aws_chunked(&data);
        }

        #[test]
        fn the_chunked_decoder_never_panics_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            aws_chunked(&data);
        }
    }
}
