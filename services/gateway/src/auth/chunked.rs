//! Decoder for `Content-Encoding: aws-chunked` bodies: signed chunks
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) and unsigned chunks with
//! trailing checksums (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
//!
//! Chunk data is passed on as it arrives and hashed incrementally; a chunk's
//! signature is checked when the chunk ends. A bad signature turns into a
//! stream error before end-of-stream, so the blob being written is discarded
//! and nothing is committed.

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::sigv4::{
    chunk_string_to_sign, sha256_hex, signatures_match, trailer_string_to_sign, SigningKey,
};
use crate::error::{S3Error, S3ErrorCode};
use crate::limits::MAX_CHUNK_HEADER_BYTES;

/// What is needed to verify chunk signatures.
#[derive(Clone)]
pub struct ChunkSigning {
    pub key: SigningKey,
    pub amz_date: String,
    pub scope: String,
    pub seed_signature: String,
}

/// Trailer headers (name lower-cased, value) found after the last chunk.
pub type Trailers = Arc<Mutex<Vec<(String, String)>>>;

enum State {
    Header,
    Data { remaining: u64, last: bool },
    DataEnd { last: bool },
    Trailer,
    Done,
}

pub struct ChunkedDecoder {
    input: BoxStream<'static, Result<Bytes, S3Error>>,
    buf: BytesMut,
    state: State,
    signing: Option<ChunkSigning>,
    expects_trailer: bool,
    previous_signature: String,
    chunk_signature: Option<String>,
    chunk_hash: Sha256,
    trailers: Trailers,
    trailer_lines: Vec<(String, String)>,
    input_done: bool,
}

fn malformed(msg: &str) -> S3Error {
    S3Error::new(
        S3ErrorCode::IncompleteBody,
        format!("malformed aws-chunked body: {msg}"),
    )
}

impl ChunkedDecoder {
    pub fn new(
        input: BoxStream<'static, Result<Bytes, S3Error>>,
        signing: Option<ChunkSigning>,
        expects_trailer: bool,
        trailers: Trailers,
    ) -> Self {
        let previous_signature = signing
            .as_ref()
            .map(|s| s.seed_signature.clone())
            .unwrap_or_default();
        Self {
            input,
            buf: BytesMut::new(),
            state: State::Header,
            signing,
            expects_trailer,
            previous_signature,
            chunk_signature: None,
            chunk_hash: Sha256::new(),
            trailers,
            trailer_lines: Vec::new(),
            input_done: false,
        }
    }

    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, S3Error>> {
        futures::stream::unfold(self, |mut d| async move {
            match d.next_data().await {
                Ok(Some(b)) => Some((Ok(b), d)),
                Ok(None) => None,
                Err(e) => {
                    d.state = State::Done;
                    Some((Err(e), d))
                }
            }
        })
        .boxed()
    }

    /// Reads more input into the buffer; false at end of input.
    async fn fill(&mut self) -> Result<bool, S3Error> {
        if self.input_done {
            return Ok(false);
        }
        match self.input.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.input_done = true;
                Ok(false)
            }
        }
    }

    /// Takes one CRLF-terminated line from the buffer, reading as needed.
    async fn line(&mut self) -> Result<Option<String>, S3Error> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(pos);
                self.buf.advance(2);
                return String::from_utf8(line.to_vec())
                    .map(Some)
                    .map_err(|_| malformed("non-UTF-8 header"));
            }
            if self.buf.len() > MAX_CHUNK_HEADER_BYTES {
                return Err(malformed("chunk header too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    fn verify_chunk(&mut self) -> Result<(), S3Error> {
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        let hash = hex::encode(std::mem::take(&mut self.chunk_hash).finalize());
        let sts = chunk_string_to_sign(
            &signing.amz_date,
            &signing.scope,
            &self.previous_signature,
            &hash,
        );
        let expected = signing.key.sign(&sts);
        let presented = self.chunk_signature.take().unwrap_or_default();
        if !signatures_match(&expected, &presented) {
            return Err(S3Error::new(
                S3ErrorCode::SignatureDoesNotMatch,
                "The chunk signature we calculated does not match the signature you provided.",
            ));
        }
        self.previous_signature = presented;
        Ok(())
    }

    fn finish_trailers(&mut self) -> Result<(), S3Error> {
        let mut signature = None;
        let mut canonical = String::new();
        let mut lines = Vec::new();
        for (name, value) in self.trailer_lines.drain(..) {
            if name == "x-amz-trailer-signature" {
                signature = Some(value);
            } else {
                canonical.push_str(&format!("{name}:{value}\n"));
                lines.push((name, value));
            }
        }
        if let Some(signing) = &self.signing {
            let presented = signature.ok_or_else(|| malformed("missing trailer signature"))?;
            let sts = trailer_string_to_sign(
                &signing.amz_date,
                &signing.scope,
                &self.previous_signature,
                &sha256_hex(canonical.as_bytes()),
            );
            if !signatures_match(&signing.key.sign(&sts), &presented) {
                return Err(S3Error::new(
                    S3ErrorCode::SignatureDoesNotMatch,
                    "The trailer signature we calculated does not match the signature you provided.",
                ));
            }
        }
        if let Ok(mut t) = self.trailers.lock() {
            t.extend(lines);
        }
        Ok(())
    }

    async fn next_data(&mut self) -> Result<Option<Bytes>, S3Error> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Header => {
                    let line = self
                        .line()
                        .await?
                        .ok_or_else(|| malformed("body ended before the final chunk"))?;
                    let mut fields = line.split(';');
                    let size_hex = fields.next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_hex, 16)
                        .map_err(|_| malformed("bad chunk size"))?;
                    self.chunk_signature = fields
                        .filter_map(|f| f.trim().strip_prefix("chunk-signature="))
                        .map(str::to_string)
                        .next();
                    if self.signing.is_some() && self.chunk_signature.is_none() {
                        return Err(malformed("chunk without a signature"));
                    }
                    self.chunk_hash = Sha256::new();
                    self.state = State::Data {
                        remaining: size,
                        last: size == 0,
                    };
                }
                State::Data { remaining, last } => {
                    if remaining == 0 {
                        self.state = State::DataEnd { last };
                        if last {
                            self.verify_chunk()?;
                            self.state = if self.expects_trailer {
                                State::Trailer
                            } else {
                                State::DataEnd { last }
                            };
                            if self.expects_trailer {
                                continue;
                            }
                        }
                        continue;
                    }
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(malformed("body ended inside a chunk"));
                    }
                    let take = remaining.min(self.buf.len() as u64) as usize;
                    let data = self.buf.split_to(take).freeze();
                    if self.signing.is_some() {
                        self.chunk_hash.update(&data);
                    }
                    self.state = State::Data {
                        remaining: remaining - take as u64,
                        last,
                    };
                    return Ok(Some(data));
                }
                State::DataEnd { last } => {
                    // After the data comes CRLF; after the last chunk the
                    // body may simply end.
                    let line = self.line().await?;
                    match (line, last) {
                        (Some(l), false) if l.is_empty() => {
                            self.verify_chunk()?;
                            self.state = State::Header;
                        }
                        (Some(l), true) if l.is_empty() => self.state = State::Done,
                        (None, true) => self.state = State::Done,
                        _ => return Err(malformed("missing CRLF after chunk data")),
                    }
                }
                State::Trailer => match self.line().await? {
                    Some(l) if !l.is_empty() => {
                        if self.trailer_lines.len() >= crate::limits::MAX_TRAILER_LINES {
                            return Err(malformed("too many trailer lines"));
                        }
                        let (name, value) = l
                            .split_once(':')
                            .ok_or_else(|| malformed("bad trailer line"))?;
                        self.trailer_lines
                            .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                    }
                    _ => {
                        self.finish_trailers()?;
                        self.state = State::Done;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sigv4::Scope;
    use super::*;

    fn key() -> ChunkSigning {
        let scope = Scope {
            date: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        };
        ChunkSigning {
            key: SigningKey::derive("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &scope).unwrap(),
            amz_date: "20130524T000000Z".into(),
            scope: scope.as_string(),
            seed_signature: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
                .into(),
        }
    }

    /// The S3 documentation's chunked example body, split at awkward places.
    fn example_body(tamper: bool) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        body.extend(std::iter::repeat_n(b'a', 65536));
        body.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        body.extend(std::iter::repeat_n(if tamper { b'b' } else { b'a' }, 1024));
        body.extend_from_slice(b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
        body
    }

    async fn decode(
        body: Vec<u8>,
        signing: Option<ChunkSigning>,
        trailer: bool,
    ) -> (Result<Vec<u8>, S3Error>, Trailers) {
        let pieces: Vec<Result<Bytes, S3Error>> = body
            .chunks(777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let trailers: Trailers = Default::default();
        let mut s = ChunkedDecoder::new(
            futures::stream::iter(pieces).boxed(),
            signing,
            trailer,
            trailers.clone(),
        )
        .into_stream();
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (Err(e), trailers),
            }
        }
        (Ok(out), trailers)
    }

    #[tokio::test]
    async fn decodes_and_verifies_the_s3_example() {
        let (out, _) = decode(example_body(false), Some(key()), false).await;
        assert_eq!(out.unwrap(), vec![b'a'; 66560]);
    }

    #[tokio::test]
    async fn rejects_a_tampered_chunk() {
        let (out, _) = decode(example_body(true), Some(key()), false).await;
        assert_eq!(out.unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
    }

    #[tokio::test]
    async fn rejects_a_truncated_body() {
        let mut body = example_body(false);
        body.truncate(30_000);
        let (out, _) = decode(body, Some(key()), false).await;
        assert_eq!(out.unwrap_err().code, S3ErrorCode::IncompleteBody);
    }

    #[tokio::test]
    async fn unsigned_with_trailer() {
        let body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n".to_vec();
        let (out, trailers) = decode(body, None, true).await;
        assert_eq!(out.unwrap(), b"hello");
        assert_eq!(
            trailers.lock().unwrap()[0],
            ("x-amz-checksum-crc32".to_string(), "NhCmhg==".to_string())
        );
    }
}
