//! Incoming object bodies: decoded, measured and checked while they stream.
//!
//! Every check (length, Content-MD5, the claimed SHA-256, a flexible
//! checksum) is made when the body ends. A failed check becomes a stream
//! error before end-of-stream, so the storage node discards the blob; the
//! precise S3 error is kept in the shared [`BodyOutcome`] for the response.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};

use insitu_catalog::ChecksumAlgorithm;

use crate::auth::chunked::Trailers;
use crate::checksum::{self, Checksummer};
use crate::error::{S3Error, S3ErrorCode};
use crate::parallel_hash::{Lane, LaneLost};

/// Where a flexible checksum's claimed value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumClaim {
    /// Sent as a header before the body.
    Header(String),
    /// Declared in `x-amz-trailer`, sent after the body.
    Trailer,
    /// Nothing claimed: computed and reported (a part of an upload that
    /// was created with a checksum algorithm).
    Compute,
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
    /// A flexible checksum and where its claimed value comes from.
    pub checksum: Option<(ChecksumAlgorithm, ChecksumClaim)>,
    pub trailers: Trailers,
    /// Largest acceptable body.
    pub max_length: u64,
}

impl BodyExpectations {
    /// Whether the checksum is to come as a trailer of the body itself.
    pub fn trailers_declared(&self) -> bool {
        matches!(self.checksum, Some((_, ChecksumClaim::Trailer)))
    }
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
    md5: Option<Lane<Md5>>,
    sha256: Option<Lane<Sha256>>,
    checksum: Option<Lane<Checksummer>>,
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

    async fn finish(&mut self) -> Result<(), S3Error> {
        if let Some(expected) = self.expect.length {
            if self.length != expected {
                return Err(S3Error::new(
                    S3ErrorCode::IncompleteBody,
                    "You did not provide the number of bytes specified by the Content-Length HTTP header.",
                ));
            }
        }
        let md5: [u8; 16] = match self.md5.take() {
            Some(lane) => lane.finish().await.map_err(lost)?.finalize().into(),
            None => return Err(lost(LaneLost)),
        };
        if let Some(claimed) = self.expect.md5 {
            if claimed != md5 {
                return Err(S3Error::new(
                    S3ErrorCode::BadDigest,
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        let sha256 = match self.sha256.take() {
            Some(lane) => Some(hex::encode(lane.finish().await.map_err(lost)?.finalize())),
            None => None,
        };
        if let (Some(computed), Some(claimed)) = (&sha256, &self.expect.sha256) {
            if computed != claimed {
                return Err(S3Error::new(
                    S3ErrorCode::XAmzContentSha256Mismatch,
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
        }
        let mut checksum_result = None;
        if let (Some(c), Some((alg, claim))) = (self.checksum.take(), self.expect.checksum.clone())
        {
            let name = checksum::header_name(alg);
            let claimed = match claim {
                ChecksumClaim::Header(v) => Some(v),
                ChecksumClaim::Compute => None,
                ChecksumClaim::Trailer => {
                    let sent =
                        self.expect.trailers.lock().ok().and_then(|t| {
                            t.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
                        });
                    Some(sent.ok_or_else(|| {
                        S3Error::new(
                            S3ErrorCode::IncompleteBody,
                            format!("The trailer {name} was declared but never sent."),
                        )
                    })?)
                }
            };
            let computed = c.finish().await.map_err(lost)?.finish_base64();
            if claimed.is_some_and(|c| c != computed) {
                return Err(S3Error::new(
                    S3ErrorCode::BadDigest,
                    format!("The {name} you specified did not match the calculated checksum."),
                ));
            }
            checksum_result = Some((alg, computed));
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
                let fed = async {
                    if let Some(lane) = &mut self.md5 {
                        lane.update(&b).await?;
                    }
                    if let Some(lane) = &mut self.sha256 {
                        lane.update(&b).await?;
                    }
                    if let Some(lane) = &mut self.checksum {
                        lane.update(&b).await?;
                    }
                    Ok::<_, LaneLost>(())
                };
                match fed.await {
                    Ok(()) => Some(Ok(b)),
                    Err(e) => Some(Err(self.fail(lost(e)))),
                }
            }
            Some(Err(e)) => Some(Err(self.fail(e))),
            None => {
                self.finished = true;
                match self.finish().await {
                    Ok(()) => None,
                    Err(e) => Some(Err(self.fail(e))),
                }
            }
        }
    }
}

/// A digest's thread stopped: the body cannot be verified, so it is refused.
fn lost(e: LaneLost) -> S3Error {
    S3Error::new(S3ErrorCode::InternalError, e.to_string())
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
    let declared = expect.length;
    let v = Verifier {
        input,
        sha256: expect
            .sha256
            .is_some()
            .then(|| Lane::new(Sha256::new(), declared)),
        checksum: expect
            .checksum
            .as_ref()
            .map(|(alg, _)| Lane::new(Checksummer::new(*alg), declared)),
        expect,
        md5: Some(Lane::new(Md5::new(), declared)),
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
        e.checksum = Some((
            ChecksumAlgorithm::Crc32,
            ChecksumClaim::Header("NhCmhg==".into()),
        ));
        assert!(run(b"hello", e).await.1.error.is_none());
        let mut e = base();
        e.checksum = Some((
            ChecksumAlgorithm::Crc32,
            ChecksumClaim::Header("AAAAAA==".into()),
        ));
        assert_eq!(
            run(b"hello", e).await.1.error.unwrap().code,
            S3ErrorCode::BadDigest
        );
    }
}
