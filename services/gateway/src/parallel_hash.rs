//! Digests of a streaming body, each on its own core once the body is large.
//!
//! A PUT's body is hashed up to three times (MD5 for the ETag, the claimed
//! SHA-256, a flexible checksum). One after another on the request's task,
//! those hashes, not the disks, bounded a large upload. A [`Lane`] hashes
//! small bodies inline (a thread hand-off would cost more than the hash);
//! past [`OFFLOAD_AFTER`] bytes it moves its hasher to a blocking thread fed
//! through a bounded channel, so the lanes run in parallel with each other
//! and with the body's forwarding, and memory stays bounded by the channel.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes hashed inline before a lane moves to its own thread.
pub const OFFLOAD_AFTER: u64 = 1 << 20;

/// Chunks queued to one lane's thread before the body waits for it.
const QUEUE_CHUNKS: usize = 16;

/// Anything that digests bytes incrementally.
pub trait Update: Send + 'static {
    fn update(&mut self, data: &[u8]);
}

impl Update for md5::Md5 {
    fn update(&mut self, data: &[u8]) {
        md5::Digest::update(self, data);
    }
}

impl Update for sha2::Sha256 {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(self, data);
    }
}

impl Update for crate::checksum::Checksummer {
    fn update(&mut self, data: &[u8]) {
        crate::checksum::Checksummer::update(self, data);
    }
}

/// The hashing thread of a lane went away (it panicked or was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("a body digest's worker thread stopped")]
pub struct LaneLost;

/// One digest over a stream, inline at first, then on its own thread.
pub enum Lane<H: Update> {
    Inline {
        hasher: H,
        seen: u64,
    },
    Offloaded {
        tx: mpsc::Sender<Bytes>,
        worker: JoinHandle<H>,
    },
    Lost,
}

impl<H: Update> Lane<H> {
    /// A lane that offloads as soon as it has seen `OFFLOAD_AFTER` bytes;
    /// `expected` (a declared length) lets a large body offload at once.
    pub fn new(hasher: H, expected: Option<u64>) -> Self {
        let mut lane = Lane::Inline { hasher, seen: 0 };
        if expected.is_some_and(|n| n >= OFFLOAD_AFTER) {
            lane.offload();
        }
        lane
    }

    fn offload(&mut self) {
        let Lane::Inline { hasher, .. } = std::mem::replace(self, Lane::Lost) else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let mut hasher = hasher;
        let worker = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        *self = Lane::Offloaded { tx, worker };
    }

    /// Feeds a chunk; waits only when the lane's thread is `QUEUE_CHUNKS` behind.
    pub async fn update(&mut self, chunk: &Bytes) -> Result<(), LaneLost> {
        match self {
            Lane::Inline { hasher, seen } => {
                hasher.update(chunk);
                *seen += chunk.len() as u64;
                if *seen >= OFFLOAD_AFTER {
                    self.offload();
                }
                Ok(())
            }
            Lane::Offloaded { tx, .. } => tx.send(chunk.clone()).await.map_err(|_| LaneLost),
            Lane::Lost => Err(LaneLost),
        }
    }

    /// The hasher, once every chunk fed to it has been digested.
    pub async fn finish(self) -> Result<H, LaneLost> {
        match self {
            Lane::Inline { hasher, .. } => Ok(hasher),
            Lane::Offloaded { tx, worker } => {
                drop(tx);
                worker.await.map_err(|_| LaneLost)
            }
            Lane::Lost => Err(LaneLost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    #[tokio::test]
    async fn inline_and_offloaded_lanes_give_the_same_digest() {
        let data: Vec<u8> = (0..3 * OFFLOAD_AFTER as usize + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let want = Md5::digest(&data);
        for expected in [None, Some(data.len() as u64)] {
            let mut lane = Lane::new(Md5::new(), expected);
            for piece in data.chunks(40_000) {
                lane.update(&Bytes::copy_from_slice(piece)).await.unwrap();
            }
            assert!(matches!(lane, Lane::Offloaded { .. }));
            assert_eq!(lane.finish().await.unwrap().finalize(), want);
        }
        let mut small = Lane::new(Md5::new(), Some(5));
        small.update(&Bytes::from_static(b"hello")).await.unwrap();
        assert!(matches!(small, Lane::Inline { .. }));
        assert_eq!(
            hex::encode(small.finish().await.unwrap().finalize()),
            "5d41402abc4b2a76b9719d911017c592"
        );
    }
}
