//! Blobs as plain files on local disk.
//!
//! A blob is written to `tmp/`, fsynced, renamed into `blobs/<xx>/<id>` and
//! the directory fsynced, so a blob is either absent or complete and durable.
//! Blob ids are unique per write and never reused, so a rename never replaces
//! data some reader may still expect. Plain files matter: a task container
//! bind-mounts a blob read-only.

use std::collections::BTreeSet;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Blocks of this size each carry a CRC32C in the blob's sidecar file, so a
/// read can verify every byte before sending it, without reading the whole
/// blob first.
pub const CHECKSUM_BLOCK: u64 = 1024 * 1024;
const SIDECAR_MAGIC: &[u8; 4] = b"ICRC";
const SIDECAR_VERSION: u8 = 1;
/// Extended attribute holding the checksum record of a small blob.
const CRC_XATTR: &str = "user.insitu.crc32c";
/// Blobs of at most this many blocks use the attribute instead of a sidecar.
const XATTR_MAX_BLOCKS: usize = 64;
/// Blobs announced at most this long are gathered in memory and written in
/// one blocking call (`BlobStore::put_small`).
const SMALL_BLOB: u64 = 64 * 1024;

/// `"ICRC"`, format version, block size (u32 LE), one CRC32C per block (u32 LE).
fn checksum_record(crcs: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9 + crcs.len() * 4);
    bytes.extend_from_slice(SIDECAR_MAGIC);
    bytes.push(SIDECAR_VERSION);
    bytes.extend_from_slice(&(CHECKSUM_BLOCK as u32).to_le_bytes());
    for c in crcs {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    bytes
}

fn parse_checksum_record(bytes: &[u8]) -> Option<Vec<u32>> {
    if bytes.len() < 9
        || !(bytes.len() - 9).is_multiple_of(4)
        || &bytes[..4] != SIDECAR_MAGIC
        || bytes[4] != SIDECAR_VERSION
    {
        return None;
    }
    if u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as u64 != CHECKSUM_BLOCK {
        return None;
    }
    Some(
        bytes[9..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("invalid blob id {0:?}")]
    InvalidId(String),
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob {0} already exists")]
    Exists(String),
    #[error("body ended after {got} bytes, expected {expected}")]
    ShortBody { got: u64, expected: u64 },
    #[error("body stream failed: {0}")]
    Body(String),
    #[error("range {start}..{end} outside blob of {size} bytes")]
    BadRange { start: u64, end: u64, size: u64 },
    #[error("no room for {needed} more bytes ({free} free)")]
    Full { needed: u64, free: u64 },
    #[error("blob {id} is corrupt at byte {offset}")]
    Corrupt { id: String, offset: u64 },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Room held in a store by `BlobStore::reserve`, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    pool: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: String,
    pub size: u64,
}

pub struct BlobStore {
    root: PathBuf,
    /// Optional cap on stored bytes, below the filesystem's own size.
    capacity: Option<u64>,
    /// Counted by the blocking call that publishes a blob, so that a caller
    /// that goes away meanwhile leaves no published blob uncounted.
    used: Arc<AtomicU64>,
    /// Room held for what the node writes beside its blobs on the same
    /// filesystem (tasks' scratch space), see `reserve`.
    reserved: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    /// Blobs found corrupt by a read or the scrubber, reported to the
    /// gateway in heartbeats until it repairs them.
    corrupt: Mutex<BTreeSet<String>>,
    /// Block buffers of verified reads, back once their body chunks are
    /// sent.
    blocks: Arc<BlockPool>,
}

/// Block buffers a verified read has sent, kept for the next reads (at
/// most `POOLED_BLOCKS`): a GET reuses memory already mapped instead of
/// faulting in and zeroing fresh pages for every 1 MiB block.
#[derive(Default)]
struct BlockPool(Mutex<Vec<Vec<u8>>>);

/// Buffers the pool keeps (32 MiB); more in flight are freed when sent.
const POOLED_BLOCKS: usize = 32;

impl BlockPool {
    /// A buffer of `len` bytes (at most a block): for a whole block a kept
    /// one, or a new one; a shorter one (a small blob, a last block) is
    /// allocated to its size, so that it holds no more than it needs while
    /// it is sent. Its contents are stale: the caller overwrites all of it.
    fn take(&self, len: usize) -> Vec<u8> {
        if len < CHECKSUM_BLOCK as usize {
            return vec![0; len];
        }
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_else(|| Vec::with_capacity(CHECKSUM_BLOCK as usize));
        buf.truncate(len);
        buf.resize(len, 0);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < CHECKSUM_BLOCK as usize {
            return;
        }
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() < POOLED_BLOCKS {
                kept.push(buf);
            }
        }
    }
}

/// A block's bytes on their way out in a body; the buffer goes back to
/// the pool when the last chunk sliced from it is dropped.
struct PooledBlock {
    buf: Vec<u8>,
    pool: Arc<BlockPool>,
}

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

pub use insitu_node_api::{BlobEntry, Usage};

/// Ids are generated by the gateway; refusing anything but `[A-Za-z0-9_-]`
/// keeps a hostile id from naming a path outside the store.
fn check_id(id: &str) -> Result<(), BlobError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidId(id.to_string()))
    }
}

/// Opens a file to read where a task may have had a hand: never through
/// a symbolic link (`ELOOP`), and without waiting on a FIFO. The caller
/// checks what it opened.
pub(crate) fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
}

/// Opens a file a task wrote, for the node to take over, refusing anything
/// but a plain file with one name (a symlink, a FIFO, a device, a hard link
/// to something else): tasks control their output directories and the node
/// reads as root. The file becomes root's and read-only, so the task side
/// cannot open it again to change it.
pub fn open_task_output(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = open_no_follow(path).map_err(|e| match e.raw_os_error() {
        Some(code) if code == nix::errno::Errno::ELOOP as i32 => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a plain file (a symbolic link)", path.display()),
        ),
        _ => e,
    })?;
    let m = f.metadata()?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a plain file", path.display()),
        ));
    }
    std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

async fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).await?.sync_all().await
}

/// The bytes of `file` as a synced temp blob at `tmp`, hard-linked (no
/// copy), with its size, block checksums, MD5 and whether the checksums
/// went in an extended attribute (small blobs: the blob's own fsync makes
/// them durable, no second file to sync).
fn take_over_now(
    file: std::fs::File,
    tmp: &Path,
) -> Result<(u64, Vec<u32>, String, bool), BlobError> {
    use md5::Digest;
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let mut f = file;
    let source = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    nix::unistd::linkat(
        None,
        source.as_path(),
        None,
        tmp,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)?;
    f.seek(io::SeekFrom::Start(0))?;
    let mut md5 = md5::Md5::new();
    let mut blocks = BlockCrcs::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        blocks.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
    let crcs = blocks.finish();
    // The file may have been the task's: whatever it set as the checksum
    // attribute while it could write the file must not count.
    match xattr::remove(tmp, CRC_XATTR) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => {}
        Err(e) => return Err(e.into()),
    }
    let in_xattr = set_crc_xattr(tmp, &crcs);
    f.sync_all()?;
    let digest: [u8; 16] = md5.finalize().into();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, crcs, hex, in_xattr))
}

/// Small blobs keep their checksums in an extended attribute, which the
/// blob's own fsync makes durable: no second file to sync. False when the
/// blob has too many blocks, or the filesystem refuses the attribute (a
/// sidecar file is then written instead).
fn set_crc_xattr(path: &Path, crcs: &[u32]) -> bool {
    crcs.len() <= XATTR_MAX_BLOCKS && xattr::set(path, CRC_XATTR, &checksum_record(crcs)).is_ok()
}

/// Ends a blocking write: a published blob is counted, and a failed one's
/// temp file is removed. Called on the blocking thread, so that a caller
/// that goes away meanwhile leaves no published blob uncounted.
fn settle(
    published: Result<(), BlobError>,
    tmp: &Path,
    size: u64,
    used: &AtomicU64,
    count: &AtomicU64,
) -> Result<(), BlobError> {
    match &published {
        Ok(()) => {
            used.fetch_add(size, Ordering::SeqCst);
            count.fetch_add(1, Ordering::SeqCst);
        }
        Err(_) => {
            let _ = std::fs::remove_file(tmp);
        }
    }
    published
}

/// Writes a small body to a new temp file with its block checksums and
/// syncs it, on the calling thread.
fn write_small_now(tmp: &Path, data: &[u8]) -> Result<(Vec<u32>, bool), BlobError> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(data)?;
    let mut blocks = BlockCrcs::default();
    blocks.update(data);
    let crcs = blocks.finish();
    let in_xattr = set_crc_xattr(tmp, &crcs);
    f.sync_all()?;
    Ok((crcs, in_xattr))
}

/// `BlobStore::publish`, on the calling thread: one trip to the blocking
/// pool for the whole of it.
fn publish_now(
    tmp: &Path,
    final_path: &Path,
    crcs: &[u32],
    in_xattr: bool,
    blobs: &Path,
) -> Result<(), BlobError> {
    use std::io::Write;
    let dir = final_path
        .parent()
        .ok_or_else(|| BlobError::InvalidId(String::new()))?;
    if !dir.try_exists()? {
        std::fs::create_dir_all(dir)?;
        std::fs::File::open(blobs)?.sync_all()?;
    }
    if !in_xattr {
        let mut sidecar = final_path.to_path_buf();
        sidecar.set_extension("crc");
        let tmp_sidecar = tmp.with_extension("crc");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp_sidecar)?;
            f.write_all(&checksum_record(crcs))?;
            f.sync_all()?;
            std::fs::rename(&tmp_sidecar, &sidecar)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp_sidecar);
            return Err(e.into());
        }
    }
    std::fs::rename(tmp, final_path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl BlobStore {
    /// Opens the store, creating its directories, and removes temp files left
    /// by writes that crashed: they were never acknowledged.
    pub async fn open(root: &Path, capacity: Option<u64>) -> Result<Self, BlobError> {
        fs::create_dir_all(root.join("blobs")).await?;
        let tmp = root.join("tmp");
        if fs::try_exists(&tmp).await? {
            fs::remove_dir_all(&tmp).await?;
        }
        fs::create_dir_all(&tmp).await?;
        fsync_dir(root).await?;
        let (mut used, mut count) = (0, 0);
        let mut fans = fs::read_dir(root.join("blobs")).await?;
        while let Some(fan) = fans.next_entry().await? {
            let mut rd = fs::read_dir(fan.path()).await?;
            while let Some(e) = rd.next_entry().await? {
                if check_id(&e.file_name().to_string_lossy()).is_ok() {
                    used += e.metadata().await?.len();
                    count += 1;
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            capacity,
            used: Arc::new(AtomicU64::new(used)),
            reserved: Arc::new(AtomicU64::new(0)),
            count: Arc::new(AtomicU64::new(count)),
            corrupt: Mutex::new(BTreeSet::new()),
            blocks: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Capacity, use and free space, counting the filesystem's own limit.
    pub fn usage(&self) -> Usage {
        self.usage_with(self.reserved.load(Ordering::SeqCst))
    }

    /// `usage`, with `reserved` bytes of the room held.
    fn usage_with(&self, reserved: u64) -> Usage {
        let used = self.used.load(Ordering::SeqCst);
        // statvfs field types differ between platforms, hence the casts.
        #[allow(clippy::unnecessary_cast)]
        let (fs_total, fs_free) = nix::sys::statvfs::statvfs(&self.root)
            .map(|s| {
                let f = (s.fragment_size() as u64).max(1);
                (s.blocks() as u64 * f, s.blocks_available() as u64 * f)
            })
            .unwrap_or((0, 0));
        let (capacity, free) = match self.capacity {
            Some(c) => (c, c.saturating_sub(used).min(fs_free)),
            None => (fs_total, fs_free),
        };
        let free = free.saturating_sub(reserved);
        Usage {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: free,
            blob_count: self.count.load(Ordering::SeqCst),
        }
    }

    /// Holds `bytes` of the store's room until the returned guard is
    /// dropped: for space the node fills beside its blobs (a task's scratch
    /// space), so that blobs and tasks together stay within the capacity.
    /// `Full` when that much is not free.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, BlobError> {
        let mut held = self.reserved.load(Ordering::SeqCst);
        loop {
            let free = self.usage_with(held).free_bytes;
            if bytes > free {
                return Err(BlobError::Full {
                    needed: bytes,
                    free,
                });
            }
            match self.reserved.compare_exchange(
                held,
                held + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        bytes,
                        pool: self.reserved.clone(),
                    })
                }
                Err(now) => held = now,
            }
        }
    }

    /// Refuses a blob of `size` bytes that the store has no room for.
    fn check_room(&self, size: u64) -> Result<(), BlobError> {
        let free = self.usage().free_bytes;
        if size > free {
            return Err(BlobError::Full { needed: size, free });
        }
        Ok(())
    }

    pub fn corrupt_blobs(&self) -> Vec<String> {
        self.corrupt
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn mark_corrupt(&self, id: &str, offset: u64) {
        tracing::error!(blob = %id, offset, "checksum mismatch: replica is corrupt");
        if let Ok(mut c) = self.corrupt.lock() {
            c.insert(id.to_string());
        }
    }

    pub fn path_of(&self, id: &str) -> Result<PathBuf, BlobError> {
        check_id(id)?;
        let fan = &id[..id.len().min(2)];
        Ok(self.root.join("blobs").join(fan).join(id))
    }

    fn sidecar_path(&self, id: &str) -> Result<PathBuf, BlobError> {
        let mut p = self.path_of(id)?;
        p.set_extension("crc");
        Ok(p)
    }

    fn temp_path(&self, id: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{id}.{}", uuid::Uuid::new_v4().simple()))
    }

    /// Streams `body` into a new blob. With `expected_len`, a body of any
    /// other length is refused. On any error the temp file is removed.
    pub async fn put<S, E>(
        &self,
        id: &str,
        body: S,
        expected_len: Option<u64>,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let final_path = self.path_of(id)?;
        if let Some(len) = expected_len.filter(|n| *n <= SMALL_BLOB) {
            return self.put_small(id, final_path, body, len).await;
        }
        if fs::try_exists(&final_path).await? {
            return Err(BlobError::Exists(id.to_string()));
        }
        let room = self.usage().free_bytes;
        if let Some(needed) = expected_len.filter(|n| *n > room) {
            return Err(BlobError::Full { needed, free: room });
        }
        let tmp = self.temp_path(id);
        let (info, crcs, in_xattr) = match self.write_temp(&tmp, body, expected_len, room).await {
            Ok((size, crcs, in_xattr)) => (
                BlobInfo {
                    id: id.to_string(),
                    size,
                },
                crcs,
                in_xattr,
            ),
            Err(e) => {
                let _ = fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        self.commit_new(&tmp, &final_path, &crcs, in_xattr, info.size)
            .await?;
        Ok(info)
    }

    /// `put` of a body whose announced length is at most `SMALL_BLOB`: the
    /// body is gathered in memory (never past `len`), then written, synced
    /// and published in one trip to the blocking pool instead of one per
    /// file operation, which is most of a small write's cost.
    async fn put_small<S, E>(
        &self,
        id: &str,
        final_path: PathBuf,
        mut body: S,
        len: u64,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut data = Vec::with_capacity(len as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            let got = (data.len() + chunk.len()) as u64;
            if got > len {
                return Err(BlobError::ShortBody { got, expected: len });
            }
            data.extend_from_slice(&chunk);
        }
        if data.len() as u64 != len {
            return Err(BlobError::ShortBody {
                got: data.len() as u64,
                expected: len,
            });
        }
        self.check_room(len)?;
        let tmp = self.temp_path(id);
        let blobs = self.root.join("blobs");
        let id_owned = id.to_string();
        let (used, count) = (self.used.clone(), self.count.clone());
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            if final_path.try_exists()? {
                return Err(BlobError::Exists(id_owned));
            }
            let written = write_small_now(&tmp, &data).and_then(|(crcs, in_xattr)| {
                publish_now(&tmp, &final_path, &crcs, in_xattr, &blobs)
            });
            settle(written, &tmp, len, &used, &count)
        })
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))??;
        Ok(BlobInfo {
            id: id.to_string(),
            size: len,
        })
    }

    async fn write_temp<S, E>(
        &self,
        tmp: &Path,
        mut body: S,
        expected_len: Option<u64>,
        room: u64,
    ) -> Result<(u64, Vec<u32>, bool), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Network chunks are small (16 KiB or so); each write to a tokio
        // file is a hop to a blocking thread, so writes go out a block at
        // a time.
        let buffer = expected_len
            .unwrap_or(CHECKSUM_BLOCK)
            .clamp(1, CHECKSUM_BLOCK);
        let mut file =
            tokio::io::BufWriter::with_capacity(buffer as usize, File::create(tmp).await?);
        let mut blocks = BlockCrcs::default();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if let Some(expected) = expected_len {
                if size > expected {
                    return Err(BlobError::ShortBody {
                        got: size,
                        expected,
                    });
                }
            }
            if size > room {
                return Err(BlobError::Full {
                    needed: size,
                    free: room,
                });
            }
            blocks.update(&chunk);
            file.write_all(&chunk).await?;
        }
        if let Some(expected) = expected_len {
            if size != expected {
                return Err(BlobError::ShortBody {
                    got: size,
                    expected,
                });
            }
        }
        file.flush().await?;
        let file = file.into_inner();
        let crcs = blocks.finish();
        let in_xattr = set_crc_xattr(tmp, &crcs);
        file.sync_all().await?;
        Ok((size, crcs, in_xattr))
    }

    /// Makes a synced temp file visible (`publish_now`: the sidecar first,
    /// then the blob, whose rename is the commit point; then the directory
    /// is synced) and counts it, in one blocking call; the temp file is
    /// removed if publishing fails.
    async fn commit_new(
        &self,
        tmp: &Path,
        final_path: &Path,
        crcs: &[u32],
        in_xattr: bool,
        size: u64,
    ) -> Result<(), BlobError> {
        let (tmp, final_path, crcs) = (tmp.to_path_buf(), final_path.to_path_buf(), crcs.to_vec());
        let blobs = self.root.join("blobs");
        let (used, count) = (self.used.clone(), self.count.clone());
        tokio::task::spawn_blocking(move || {
            let published = publish_now(&tmp, &final_path, &crcs, in_xattr, &blobs);
            settle(published, &tmp, size, &used, &count)
        })
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))?
    }

    async fn read_sidecar(&self, id: &str) -> Result<Option<Vec<u32>>, BlobError> {
        let bytes = match xattr::get(self.path_of(id)?, CRC_XATTR) {
            Ok(Some(b)) => b,
            _ => match fs::read(self.sidecar_path(id)?).await {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        match parse_checksum_record(&bytes) {
            Some(crcs) => Ok(Some(crcs)),
            None => {
                self.mark_corrupt(id, 0);
                Err(BlobError::Corrupt {
                    id: id.to_string(),
                    offset: 0,
                })
            }
        }
    }

    /// Concatenates existing blobs into a new one (multipart completion).
    /// Runs on a blocking thread: `std::io::copy` between files uses
    /// `copy_file_range`, so the bytes never pass through user space.
    /// Concatenates existing blobs into a new one (multipart completion).
    /// Every block of every part is checked against its checksum on the
    /// way, so a corrupt part is reported rather than sealed into the
    /// object under a fresh, valid checksum.
    pub async fn compose(&self, id: &str, parts: &[String]) -> Result<BlobInfo, BlobError> {
        let final_path = self.path_of(id)?;
        let mut sources = Vec::with_capacity(parts.len());
        for p in parts {
            let path = self.path_of(p)?;
            if !fs::try_exists(&path).await? {
                return Err(BlobError::NotFound(p.clone()));
            }
            let crcs = self
                .read_sidecar(p)
                .await?
                .ok_or_else(|| BlobError::Corrupt {
                    id: p.clone(),
                    offset: 0,
                })?;
            sources.push((p.clone(), path, crcs));
        }
        let mut total = 0u64;
        for (_, path, _) in &sources {
            total = total.saturating_add(fs::metadata(path).await?.len());
        }
        self.check_room(total)?;
        let tmp = self.temp_path(id);
        let tmp2 = tmp.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(u64, Vec<u32>), BlobError> {
            use std::io::{Read, Write};
            let mut out = std::fs::File::create(&tmp2)?;
            let mut total = 0u64;
            let mut blocks = BlockCrcs::default();
            let mut buf = vec![0u8; CHECKSUM_BLOCK as usize];
            for (part, path, crcs) in sources {
                let mut f = std::fs::File::open(path)?;
                let size = f.metadata()?.len();
                if crcs.len() as u64 != size.div_ceil(CHECKSUM_BLOCK) {
                    return Err(BlobError::Corrupt {
                        id: part,
                        offset: 0,
                    });
                }
                let mut offset = 0u64;
                for crc in crcs {
                    let len = CHECKSUM_BLOCK.min(size - offset) as usize;
                    f.read_exact(&mut buf[..len])?;
                    if crc32c::crc32c(&buf[..len]) != crc {
                        return Err(BlobError::Corrupt { id: part, offset });
                    }
                    out.write_all(&buf[..len])?;
                    blocks.update(&buf[..len]);
                    offset += len as u64;
                }
                total += size;
            }
            out.sync_all()?;
            Ok((total, blocks.finish()))
        })
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))?;
        let (size, crcs) = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&tmp).await;
                if let BlobError::Corrupt { id, offset } = &e {
                    self.mark_corrupt(id, *offset);
                }
                return Err(e);
            }
        };
        self.commit_new(&tmp, &final_path, &crcs, false, size)
            .await?;
        Ok(BlobInfo {
            id: id.to_string(),
            size,
        })
    }

    /// A scratch path in the store's temp directory (same filesystem as
    /// the blobs; wiped at start), for files the node writes itself.
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.temp_path(name)
    }

    /// Makes an open file (a task's output, on the same filesystem; see
    /// `open_task_output`) a blob without copying it: the inode is linked
    /// into the store through the open handle, so whatever the path now
    /// names does not matter; checksums computed, synced, renamed into
    /// place. Returns the blob and the MD5 of its bytes (an output
    /// object's ETag).
    pub async fn adopt(
        &self,
        id: &str,
        file: std::fs::File,
    ) -> Result<(BlobInfo, String), BlobError> {
        let final_path = self.path_of(id)?;
        // Written outside the store's accounting: it counts from now.
        let expected = file.metadata()?.len();
        self.check_room(expected)?;
        let tmp = self.temp_path(id);
        let blobs = self.root.join("blobs");
        let id_owned = id.to_string();
        // Counted before it is published, so that a caller that goes away
        // meanwhile leaves no visible blob uncounted; given back on failure.
        self.used.fetch_add(expected, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
        // One trip to the blocking pool: the link (or copy), the hashes,
        // the fsync and the publication.
        let result = tokio::task::spawn_blocking(move || -> Result<(u64, String), BlobError> {
            if final_path.try_exists()? {
                return Err(BlobError::Exists(id_owned));
            }
            let taken = take_over_now(file, &tmp);
            let published = taken.and_then(|(size, crcs, md5, in_xattr)| {
                publish_now(&tmp, &final_path, &crcs, in_xattr, &blobs)?;
                Ok((size, md5))
            });
            if published.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            published
        })
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))
        .and_then(|r| r);
        let (size, md5) = match result {
            Ok(r) => r,
            Err(e) => {
                self.used.fetch_sub(expected, Ordering::SeqCst);
                self.count.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if size != expected {
            // Not expected of a sealed output; the count follows the bytes.
            self.used.fetch_add(size, Ordering::SeqCst);
            self.used.fetch_sub(expected, Ordering::SeqCst);
        }
        Ok((
            BlobInfo {
                id: id.to_string(),
                size,
            },
            md5,
        ))
    }

    pub async fn size(&self, id: &str) -> Result<u64, BlobError> {
        match fs::metadata(self.path_of(id)?).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(id.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a blob positioned at `start`; returns the file and the blob size.
    pub async fn open_at(&self, id: &str, start: u64) -> Result<(File, u64), BlobError> {
        let mut f = match File::open(self.path_of(id)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let size = f.metadata().await?.len();
        if start > size {
            return Err(BlobError::BadRange {
                start,
                end: start,
                size,
            });
        }
        if start > 0 {
            f.seek(SeekFrom::Start(start)).await?;
        }
        Ok((f, size))
    }

    /// Removes a blob. Deleting a missing blob succeeds: collection retries.
    /// Readers that already opened the file keep reading it safely.
    pub async fn delete(&self, id: &str) -> Result<bool, BlobError> {
        let path = self.path_of(id)?;
        let size = fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path).await {
            Ok(()) => {
                let _ = fs::remove_file(self.sidecar_path(id)?).await;
                if let Some(dir) = path.parent() {
                    fsync_dir(dir).await?;
                }
                self.used
                    .fetch_sub(size.min(self.used.load(Ordering::SeqCst)), Ordering::SeqCst);
                self.count
                    .fetch_sub(1.min(self.count.load(Ordering::SeqCst)), Ordering::SeqCst);
                if let Ok(mut c) = self.corrupt.lock() {
                    c.remove(id);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `start..=end` of a blob, verifying every block it touches
    /// against the sidecar before yielding any of its bytes. A mismatch marks
    /// the blob corrupt and ends the stream with an error, so a corrupt
    /// replica's bytes are never served.
    pub async fn read_verified(
        self: &std::sync::Arc<Self>,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static, BlobError> {
        let (file, size) = self.open_at(id, 0).await?;
        if start > end || end >= size {
            return Err(BlobError::BadRange { start, end, size });
        }
        // A blob without its checksums cannot be vouched for.
        let Some(crcs) = self.read_sidecar(id).await? else {
            self.mark_corrupt(id, 0);
            return Err(BlobError::Corrupt {
                id: id.to_string(),
                offset: 0,
            });
        };
        if crcs.len() as u64 != size.div_ceil(CHECKSUM_BLOCK) {
            self.mark_corrupt(id, 0);
            return Err(BlobError::Corrupt {
                id: id.to_string(),
                offset: 0,
            });
        }
        let crcs = Some(crcs);
        let store = self.clone();
        let id = id.to_string();
        let file = Arc::new(file.into_std().await);
        let state = (file, start - start % CHECKSUM_BLOCK, store, id, crcs, false);
        Ok(futures::stream::unfold(
            state,
            move |(file, block_start, store, id, crcs, done)| async move {
                if done || block_start > end {
                    return None;
                }
                let len = CHECKSUM_BLOCK.min(size - block_start) as usize;
                // One trip to the blocking pool per block: read straight
                // into the block's buffer at its offset, and checksum it.
                let (f, pool) = (file.clone(), store.blocks.clone());
                let read = tokio::task::spawn_blocking(move || -> io::Result<(Vec<u8>, u32)> {
                    use std::os::unix::fs::FileExt;
                    let mut buf = pool.take(len);
                    if let Err(e) = f.read_exact_at(&mut buf, block_start) {
                        pool.give(buf);
                        return Err(e);
                    }
                    let crc = crc32c::crc32c(&buf);
                    Ok((buf, crc))
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
                let (buf, crc) = match read {
                    Ok(r) => r,
                    Err(e) => return Some((Err(e), (file, block_start, store, id, crcs, true))),
                };
                if let Some(crcs) = &crcs {
                    let idx = (block_start / CHECKSUM_BLOCK) as usize;
                    if crcs.get(idx) != Some(&crc) {
                        store.mark_corrupt(&id, block_start);
                        let e =
                            io::Error::other(format!("blob {id} is corrupt at byte {block_start}"));
                        return Some((Err(e), (file, block_start, store, id, None, true)));
                    }
                }
                let from = start.saturating_sub(block_start) as usize;
                let to = ((end + 1).min(block_start + len as u64) - block_start) as usize;
                let chunk = Bytes::from_owner(PooledBlock {
                    buf,
                    pool: store.blocks.clone(),
                })
                .slice(from..to);
                Some((
                    Ok(chunk),
                    (file, block_start + len as u64, store, id, crcs, false),
                ))
            },
        ))
    }

    /// Reads a whole blob and checks it against its sidecar (the scrubber).
    pub async fn verify(&self, id: &str) -> Result<(), BlobError> {
        let Some(crcs) = self.read_sidecar(id).await? else {
            return Ok(());
        };
        let (mut file, size) = self.open_at(id, 0).await?;
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHECKSUM_BLOCK as usize];
        let expected_blocks = size.div_ceil(CHECKSUM_BLOCK) as usize;
        if crcs.len() != expected_blocks {
            self.mark_corrupt(id, 0);
            return Err(BlobError::Corrupt {
                id: id.to_string(),
                offset: 0,
            });
        }
        for (i, crc) in crcs.iter().enumerate() {
            let len = CHECKSUM_BLOCK.min(size - offset) as usize;
            file.read_exact(&mut buf[..len]).await?;
            if crc32c::crc32c(&buf[..len]) != *crc {
                self.mark_corrupt(id, offset);
                return Err(BlobError::Corrupt {
                    id: id.to_string(),
                    offset: i as u64 * CHECKSUM_BLOCK,
                });
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Blob ids in lexical order after `after`, at most `limit`. Reads one
    /// fan-out directory at a time, so memory is bounded by a directory.
    pub async fn list(&self, after: &str, limit: usize) -> Result<Vec<BlobEntry>, BlobError> {
        let mut fans = Vec::new();
        let mut rd = fs::read_dir(self.root.join("blobs")).await?;
        while let Some(e) = rd.next_entry().await? {
            fans.push(e.file_name().to_string_lossy().into_owned());
        }
        fans.sort();
        let after_fan: String = after.chars().take(2).collect();
        let after_fan = after_fan.as_str();
        let mut out = Vec::new();
        for fan in fans.into_iter().filter(|f| f.as_str() >= after_fan) {
            let mut entries = Vec::new();
            let mut rd = fs::read_dir(self.root.join("blobs").join(&fan)).await?;
            while let Some(e) = rd.next_entry().await? {
                let name = e.file_name().to_string_lossy().into_owned();
                if check_id(&name).is_err() || name.as_str() <= after {
                    continue;
                }
                let meta = e.metadata().await?;
                let modified_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                entries.push(BlobEntry {
                    id: name,
                    size: meta.len(),
                    modified_ms,
                });
            }
            entries.sort_by(|a, b| a.id.cmp(&b.id));
            for e in entries {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Number of temp files, i.e. writes in flight or leaked.
    pub async fn temp_files(&self) -> Result<usize, BlobError> {
        let mut n = 0;
        let mut rd = fs::read_dir(self.root.join("tmp")).await?;
        while rd.next_entry().await?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// CRC32C of each `CHECKSUM_BLOCK` of a stream of bytes.
#[derive(Default)]
struct BlockCrcs {
    done: Vec<u32>,
    current: u32,
    filled: u64,
}

impl BlockCrcs {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (CHECKSUM_BLOCK - self.filled).min(data.len() as u64) as usize;
            self.current = crc32c::crc32c_append(self.current, &data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == CHECKSUM_BLOCK {
                self.done.push(self.current);
                self.current = 0;
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.done.push(self.current);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn put_read_compose_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), None).await.unwrap();
        let a = s
            .put("aa1", chunks(&[b"hello ", b"world"]), Some(11))
            .await
            .unwrap();
        assert_eq!(a.size, 11);
        s.put("bb2", chunks(&[b"!"]), None).await.unwrap();
        let c = s
            .compose("cc3", &["aa1".into(), "bb2".into()])
            .await
            .unwrap();
        assert_eq!(c.size, 12);
        let (mut f, size) = s.open_at("cc3", 6).await.unwrap();
        assert_eq!(size, 12);
        let mut rest = String::new();
        f.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "world!");
        assert!(s.delete("aa1").await.unwrap());
        assert!(!s.delete("aa1").await.unwrap());
        assert!(matches!(s.size("aa1").await, Err(BlobError::NotFound(_))));
    }

    #[test]
    fn task_outputs_must_be_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host file").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        for bad in [&link, &fifo, &hard, &std::path::PathBuf::from("/dev/zero")] {
            let e = open_task_output(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", bad.display());
        }
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "output").unwrap();
        let f = open_task_output(&plain).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), None).await.unwrap();
        let short = s.put("x1", chunks(&[b"abc"]), Some(10)).await;
        assert!(matches!(
            short,
            Err(BlobError::ShortBody {
                got: 3,
                expected: 10
            })
        ));
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err("reset".to_string()),
        ]);
        assert!(matches!(
            s.put("x2", broken, None).await,
            Err(BlobError::Body(_))
        ));
        assert_eq!(s.temp_files().await.unwrap(), 0);
        assert!(s.size("x1").await.is_err() && s.size("x2").await.is_err());
        assert!(matches!(s.path_of("../etc"), Err(BlobError::InvalidId(_))));
    }

    #[tokio::test]
    async fn small_announced_bodies_are_checked_like_streamed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(BlobStore::open(dir.path(), None).await.unwrap());
        let long = s.put("s1", chunks(&[b"abc", b"def"]), Some(4)).await;
        assert!(matches!(
            long,
            Err(BlobError::ShortBody {
                got: 6,
                expected: 4
            })
        ));
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err("reset".to_string()),
        ]);
        assert!(matches!(
            s.put("s2", broken, Some(4)).await,
            Err(BlobError::Body(_))
        ));
        assert_eq!(s.temp_files().await.unwrap(), 0);
        assert_eq!(s.usage().blob_count, 0);

        let data = vec![b'x'; SMALL_BLOB as usize];
        let body = futures::stream::iter(vec![Ok::<_, String>(Bytes::from(data.clone()))]);
        let info = s.put("s3", body, Some(SMALL_BLOB)).await.unwrap();
        assert_eq!(info.size, SMALL_BLOB);
        assert!(matches!(
            s.put("s3", chunks(&[b"a"]), Some(1)).await,
            Err(BlobError::Exists(_))
        ));
        let mut st = Box::pin(s.read_verified("s3", 0, SMALL_BLOB - 1).await.unwrap());
        let mut read = Vec::new();
        while let Some(c) = st.next().await {
            read.extend_from_slice(&c.unwrap());
        }
        assert_eq!(read, data);
        s.verify("s3").await.unwrap();
        assert_eq!(s.usage().used_bytes, SMALL_BLOB);
        assert_eq!(s.usage().blob_count, 1);

        let empty = futures::stream::iter(Vec::<Result<Bytes, String>>::new());
        assert_eq!(s.put("s4", empty, Some(0)).await.unwrap().size, 0);
        s.verify("s4").await.unwrap();
        assert_eq!(s.size("s4").await.unwrap(), 0);
        assert_eq!(s.usage().blob_count, 2);
    }

    #[tokio::test]
    async fn verified_reads_refuse_corrupt_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(BlobStore::open(dir.path(), None).await.unwrap());
        let data: Vec<u8> = (0..3 * CHECKSUM_BLOCK as usize + 100)
            .map(|i| (i % 253) as u8)
            .collect();
        let body = futures::stream::iter(vec![Ok::<_, String>(Bytes::from(data.clone()))]);
        s.put("blob1", body, None).await.unwrap();
        let read = |a: u64, b: u64| {
            let s = s.clone();
            async move {
                let mut out = Vec::new();
                let mut st = Box::pin(s.read_verified("blob1", a, b).await?);
                while let Some(c) = st.next().await {
                    out.extend_from_slice(&c?);
                }
                Ok::<_, Box<dyn std::error::Error>>(out)
            }
        };
        assert_eq!(read(0, data.len() as u64 - 1).await.unwrap(), data);
        let (a, b) = (CHECKSUM_BLOCK - 5, 2 * CHECKSUM_BLOCK + 7);
        assert_eq!(read(a, b).await.unwrap(), &data[a as usize..=b as usize]);
        s.verify("blob1").await.unwrap();
        assert_eq!(s.usage().blob_count, 1);
        assert_eq!(s.list("", 10).await.unwrap()[0].id, "blob1");

        // Flip one byte in the second block.
        let path = s.path_of("blob1").unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw[CHECKSUM_BLOCK as usize + 10] ^= 0xff;
        std::fs::write(&path, raw).unwrap();
        assert!(read(0, 100).await.is_ok(), "the first block is still fine");
        assert!(read(0, data.len() as u64 - 1).await.is_err());
        assert!(matches!(
            s.verify("blob1").await,
            Err(BlobError::Corrupt { .. })
        ));
        assert_eq!(s.corrupt_blobs(), ["blob1"]);
        assert!(s.delete("blob1").await.unwrap());
        assert!(s.corrupt_blobs().is_empty());
        assert_eq!(s.usage().used_bytes, 0);
    }

    /// Block buffers go back to a pool once sent and are reused by later
    /// reads: a later read, of another blob, shorter blocks or a range,
    /// never shows a byte of an earlier one.
    #[tokio::test]
    async fn pooled_block_buffers_never_show_an_earlier_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(BlobStore::open(dir.path(), None).await.unwrap());
        let secret = vec![b'S'; 2 * CHECKSUM_BLOCK as usize];
        let short: Vec<u8> = (0..1000).map(|i| (i % 7) as u8).collect();
        let tail: Vec<u8> = (0..CHECKSUM_BLOCK as usize + 300)
            .map(|i| (i % 11) as u8)
            .collect();
        for (id, data) in [("secret", &secret), ("short", &short), ("tail", &tail)] {
            let body = futures::stream::iter(vec![Ok::<_, String>(Bytes::from(data.clone()))]);
            s.put(id, body, None).await.unwrap();
        }
        let read = |id: &'static str, a: u64, b: u64| {
            let s = s.clone();
            async move {
                let mut out = Vec::new();
                let mut st = Box::pin(s.read_verified(id, a, b).await.unwrap());
                while let Some(c) = st.next().await {
                    out.extend_from_slice(&c.unwrap());
                }
                out
            }
        };
        for _ in 0..3 {
            assert_eq!(read("secret", 0, secret.len() as u64 - 1).await, secret);
            assert!(!s.blocks.0.lock().unwrap().is_empty(), "buffers come back");
            assert_eq!(read("short", 0, 999).await, short);
            assert_eq!(read("short", 10, 20).await, &short[10..=20]);
            let n = tail.len() as u64;
            assert_eq!(read("tail", 0, n - 1).await, tail);
            assert_eq!(
                read("tail", CHECKSUM_BLOCK - 3, n - 1).await,
                &tail[CHECKSUM_BLOCK as usize - 3..]
            );
        }
        // A chunk still held keeps its buffer out of the pool: reads that
        // reuse buffers meanwhile do not change it.
        let mut st = Box::pin(
            s.read_verified("secret", 0, secret.len() as u64 - 1)
                .await
                .unwrap(),
        );
        let held = st.next().await.unwrap().unwrap();
        drop(st);
        for _ in 0..4 {
            assert_eq!(read("tail", 0, tail.len() as u64 - 1).await, tail);
        }
        assert!(held.iter().all(|b| *b == b'S'), "a held chunk was reused");
        let kept = s.blocks.0.lock().unwrap().len();
        drop(held);
        assert_eq!(
            s.blocks.0.lock().unwrap().len(),
            kept + 1,
            "back once dropped"
        );
    }

    #[tokio::test]
    async fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), Some(10)).await.unwrap();
        s.put("a1", chunks(&[b"12345"]), Some(5)).await.unwrap();
        assert!(matches!(
            s.put("a2", chunks(&[b"123456"]), Some(6)).await,
            Err(BlobError::Full { .. })
        ));
        assert!(matches!(
            s.put("a3", chunks(&[b"123456"]), None).await,
            Err(BlobError::Full { .. })
        ));
        assert_eq!(s.usage().free_bytes, 5);
        assert_eq!(s.temp_files().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reservations_and_task_outputs_count_against_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path(), Some(10)).await.unwrap();
        let held = s.reserve(6).unwrap();
        assert_eq!(s.usage().free_bytes, 4);
        assert!(matches!(s.reserve(5), Err(BlobError::Full { .. })));
        assert!(matches!(
            s.put("b1", chunks(&[b"12345"]), Some(5)).await,
            Err(BlobError::Full { .. })
        ));
        // A task's output larger than the room is not adopted.
        let out = dir.path().join("task-out");
        std::fs::write(&out, b"12345").unwrap();
        let f = std::fs::File::open(&out).unwrap();
        assert!(matches!(
            s.adopt("b2", f).await,
            Err(BlobError::Full { .. })
        ));
        drop(held);
        assert_eq!(s.usage().free_bytes, 10);
        let f = std::fs::File::open(&out).unwrap();
        s.adopt("b2", f).await.unwrap();
        s.put("b3", chunks(&[b"123"]), Some(3)).await.unwrap();
        // Composing needs room for the whole: 8 more bytes, 2 free.
        assert!(matches!(
            s.compose("b4", &["b2".into(), "b3".into()]).await,
            Err(BlobError::Full { .. })
        ));
        assert_eq!(s.usage().free_bytes, 2);
    }
}
