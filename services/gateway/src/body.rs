//! Incoming object bodies: decoded, measured and checked while they stream.
//!
//! Every check (length, Content-MD5, the claimed SHA-256, a flexible
//! checksum) is made when the body ends. A failed check becomes a stream
//! error before end-of-stream, so the storage node discards the blob; the
//! precise S3 error is kept in the shared [`BodyOutcome`] for the response.

use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::auth::chunked::Trailers;
use crate::error::{S3Error, S3ErrorCode};

/// Flexible checksum algorithms (`x-amz-checksum-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub fn from_header_name(name: &str) -> Option<Self> {
        match name.strip_prefix("x-amz-checksum-")? {
            "crc32" => Some(Self::Crc32),
            "crc32c" => Some(Self::Crc32c),
            "crc64nvme" => Some(Self::Crc64Nvme),
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }

    pub fn header_name(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }
}

enum Checksummer {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Checksummer {
    fn new(alg: ChecksumAlgorithm) -> Self {
        match alg {
            ChecksumAlgorithm::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Self::Crc32c(0),
            ChecksumAlgorithm::Crc64Nvme => Self::Crc64(crc64fast_nvme::Digest::new()),
            ChecksumAlgorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(data),
            Self::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Self::Crc64(h) => h.write(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
        }
    }

    fn finish_base64(self) -> String {
        let bytes = match self {
            Self::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Self::Crc32c(c) => c.to_be_bytes().to_vec(),
            Self::Crc64(h) => h.sum64().to_be_bytes().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// What the client claimed about the body.
#[derive(Default, Clone)]
pub struct BodyExpectations {
    /// Decoded length (Content-Length, or x-amz-decoded-content-length).
    pub length: Option<u64>,
    /// Content-MD5, already base64-decoded.
    pub md5: Option<[u8; 16]>,
    /// x-amz-content-sha256 when it is a real hash.
    pub sha256: Option<String>,
    /// A flexible checksum and its value if sent as a header; `None` value
    /// means it arrives as a trailer.
    pub checksum: Option<(ChecksumAlgorithm, Option<String>)>,
    pub trailers: Trailers,
    /// Largest acceptable body.
    pub max_length: u64,
}

/// The result of a streamed body, filled in when the stream ends.
#[derive(Default, Debug)]
pub struct BodyOutcome {
    pub error: Option<S3Error>,
    pub length: u64,
    pub md5: [u8; 16],
    pub checksum: Option<(ChecksumAlgorithm, String)>,
    pub complete: bool,
}

pub type SharedOutcome = Arc<Mutex<BodyOutcome>>;

struct Verifier {
    input: BoxStream<'static, Result<Bytes, S3Error>>,
    expect: BodyExpectations,
    md5: Md5,
    sha256: Option<Sha256>,
    checksum: Option<Checksummer>,
    length: u64,
    outcome: SharedOutcome,
    finished: bool,
}

impl Verifier {
    fn fail(&mut self, e: S3Error) -> std::io::Error {
        self.finished = true;
        let msg = e.to_string();
        if let Ok(mut o) = self.outcome.lock() {
            o.error.get_or_insert(e);
        }
        std::io::Error::other(msg)
    }

    fn finish(&mut self) -> Result<(), S3Error> {
        if let Some(expected) = self.expect.length {
            if self.length != expected {
                return Err(S3Error::new(
                    S3ErrorCode::IncompleteBody,
                    "You did not provide the number of bytes specified by the Content-Length HTTP header.",
                ));
            }
        }
        let md5: [u8; 16] = std::mem::take(&mut self.md5).finalize().into();
        if let Some(claimed) = self.expect.md5 {
            if claimed != md5 {
                return Err(S3Error::new(
                    S3ErrorCode::BadDigest,
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        if let (Some(h), Some(claimed)) = (self.sha256.take(), &self.expect.sha256) {
            if &hex::encode(h.finalize()) != claimed {
                return Err(S3Error::new(
                    S3ErrorCode::XAmzContentSha256Mismatch,
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
        }
        let mut checksum_result = None;
        if let (Some(c), Some((alg, value))) = (self.checksum.take(), self.expect.checksum.clone())
        {
            let claimed = match value {
                Some(v) => Some(v),
                None => self.expect.trailers.lock().ok().and_then(|t| {
                    t.iter()
                        .find(|(n, _)| n == alg.header_name())
                        .map(|(_, v)| v.clone())
                }),
            };
            let computed = c.finish_base64();
            let Some(claimed) = claimed else {
                return Err(S3Error::new(
                    S3ErrorCode::IncompleteBody,
                    format!(
                        "The trailer {} was declared but never sent.",
                        alg.header_name()
                    ),
                ));
            };
            match Some(claimed) {
                Some(claimed) if claimed != computed => {
                    return Err(S3Error::new(
                        S3ErrorCode::BadDigest,
                        format!(
                            "The {} you specified did not match the calculated checksum.",
                            alg.header_name()
                        ),
                    ))
                }
                _ => checksum_result = Some((alg, computed)),
            }
        }
        if let Ok(mut o) = self.outcome.lock() {
            o.length = self.length;
            o.md5 = md5;
            o.checksum = checksum_result;
            o.complete = true;
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.finished {
            return None;
        }
        match self.input.next().await {
            Some(Ok(b)) => {
                self.length += b.len() as u64;
                let limit = self
                    .expect
                    .length
                    .unwrap_or(self.expect.max_length)
                    .min(self.expect.max_length);
                if self.length > limit {
                    let e = if self.length > self.expect.max_length {
                        S3Error::new(
                            S3ErrorCode::EntityTooLarge,
                            "Your proposed upload exceeds the maximum allowed size",
                        )
                    } else {
                        S3Error::new(
                            S3ErrorCode::IncompleteBody,
                            "The body is longer than its declared length.",
                        )
                    };
                    return Some(Err(self.fail(e)));
                }
                self.md5.update(&b);
                if let Some(h) = &mut self.sha256 {
                    h.update(&b);
                }
                if let Some(c) = &mut self.checksum {
                    c.update(&b);
                }
                Some(Ok(b))
            }
            Some(Err(e)) => Some(Err(self.fail(e))),
            None => {
                self.finished = true;
                match self.finish() {
                    Ok(()) => None,
                    Err(e) => Some(Err(self.fail(e))),
                }
            }
        }
    }
}

/// Wraps a decoded body so that it is measured and verified as it streams.
pub fn verify(
    input: BoxStream<'static, Result<Bytes, S3Error>>,
    expect: BodyExpectations,
) -> (
    BoxStream<'static, Result<Bytes, std::io::Error>>,
    SharedOutcome,
) {
    let outcome = SharedOutcome::default();
    let v = Verifier {
        input,
        sha256: expect.sha256.as_ref().map(|_| Sha256::new()),
        checksum: expect
            .checksum
            .as_ref()
            .map(|(alg, _)| Checksummer::new(*alg)),
        expect,
        md5: Md5::new(),
        length: 0,
        outcome: outcome.clone(),
        finished: false,
    };
    let stream = futures::stream::unfold(
        v,
        |mut v| async move { v.next().await.map(|item| (item, v)) },
    )
    .boxed();
    (stream, outcome)
}

/// Reads a small body (XML requests) whole, refusing more than `max` bytes.
pub async fn read_small(
    mut input: BoxStream<'static, Result<Bytes, S3Error>>,
    max: usize,
) -> Result<Vec<u8>, S3Error> {
    let mut out = Vec::new();
    while let Some(chunk) = input.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            return Err(S3Error::new(
                S3ErrorCode::MalformedXml,
                "The request body is too large.",
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(data: &'static [u8], expect: BodyExpectations) -> (Vec<u8>, BodyOutcome) {
        let input = futures::stream::iter(vec![Ok(Bytes::from_static(data))]).boxed();
        let (mut s, outcome) = verify(input, expect);
        let mut out = Vec::new();
        while let Some(Ok(b)) = s.next().await {
            out.extend_from_slice(&b);
        }
        let o = std::mem::take(&mut *outcome.lock().unwrap());
        (out, o)
    }

    fn base() -> BodyExpectations {
        BodyExpectations {
            max_length: 1 << 30,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn checks_md5_sha256_length_and_checksums() {
        let (_, o) = run(b"hello", base()).await;
        assert!(o.complete && o.error.is_none());
        assert_eq!(hex::encode(o.md5), "5d41402abc4b2a76b9719d911017c592");

        let mut e = base();
        e.md5 = Some([0; 16]);
        assert_eq!(
            run(b"hello", e).await.1.error.unwrap().code,
            S3ErrorCode::BadDigest
        );

        let mut e = base();
        e.sha256 = Some("00".repeat(32));
        assert_eq!(
            run(b"hello", e).await.1.error.unwrap().code,
            S3ErrorCode::XAmzContentSha256Mismatch
        );

        let mut e = base();
        e.length = Some(10);
        assert_eq!(
            run(b"hello", e).await.1.error.unwrap().code,
            S3ErrorCode::IncompleteBody
        );

        let mut e = base();
        e.checksum = Some((ChecksumAlgorithm::Crc32, Some("NhCmhg==".into())));
        assert!(run(b"hello", e).await.1.error.is_none());
        let mut e = base();
        e.checksum = Some((ChecksumAlgorithm::Crc32, Some("AAAAAA==".into())));
        assert_eq!(
            run(b"hello", e).await.1.error.unwrap().code,
            S3ErrorCode::BadDigest
        );
    }
}
