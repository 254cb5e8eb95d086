//! Rewrites an image tarball (`docker save` format) so the engine loads it
//! by id only, never under a name.
//!
//! A node shares its engine's tag namespace with every tenant. If a
//! tenant's tarball were loaded as written, its `RepoTags` would point a
//! name such as `python:3.12` at the tenant's image, if only for the moment
//! before the node put it back, and another job starting in that moment
//! would run it. Two loads of the same tarball at once also undo each
//! other's restores. So the tags never reach the engine.
//!
//! The engine must not read a different archive from the one checked
//! here, so nothing of the tenant's tar framing reaches it: every header
//! the engine sees is written here, canonical USTAR, from what this module
//! parsed; only file bodies are copied (in chunks: memory does not grow with
//! the image). Only what `docker save` writes is accepted: plain files,
//! directories and symlinks with short plain names, uncompressed. Tag files
//! are rebuilt: `manifest.json` from its known keys with `RepoTags` null,
//! `repositories` as `{}`, and `index.json` without annotations (where the
//! containerd image store reads names). The engine extracts the archive and
//! reads those files by path, so a tag file that is a link, or an entry
//! written through a symlink the archive made, is refused too.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

/// The largest tag file rewritten in memory.
const MAX_META_BYTES: u64 = 16 << 20;
/// Bytes per chunk sent to the engine.
const CHUNK: usize = 64 << 10;
const BLOCK: usize = 512;
/// At most this many symlinks (`docker save` writes one per shared layer).
const MAX_SYMLINKS: usize = 100_000;
/// Names that fit a USTAR header's name field alone.
const MAX_NAME: usize = 100;
/// What the engine reads the image's names from.
const MANIFEST: &str = "manifest.json";
const REPOSITORIES: &str = "repositories";
const OCI_INDEX: &str = "index.json";
/// The keys of an image in `manifest.json` the engine knows.
const MANIFEST_KEYS: [&str; 5] = ["Config", "RepoTags", "Layers", "Parent", "LayerSources"];

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("image tarball refused: {0}")]
    Refused(String),
    #[error("reading the image tarball: {0}")]
    Io(#[from] io::Error),
    /// The engine stopped reading; its own error says why.
    #[error("the engine stopped reading the tarball")]
    Closed,
}

/// Streams `tarball` to `tx`, rewritten as above. Returns the id of the
/// one image it holds (`sha256:<hex>` of its config).
pub fn send_untagged(tarball: &Path, tx: &mpsc::Sender<Bytes>) -> Result<String, ArchiveError> {
    let file = std::fs::File::open(tarball)?;
    let len = file.metadata()?.len();
    let mut rewriter = Rewriter::new(
        io::BufReader::with_capacity(CHUNK, file),
        len,
        |b: Bytes| tx.blocking_send(b).map_err(|_| ArchiveError::Closed),
    );
    let result = rewriter.run();
    let owed = rewriter.owed;
    if matches!(result, Err(ArchiveError::Refused(_) | ArchiveError::Io(_))) {
        // An archive that just stopped would load what came before: the
        // entry under way is filled out, then a header with a wrong
        // checksum makes the engine reject it all. What is owed was
        // bounded by the blob's length before its header was sent, and
        // is sent in chunks.
        let mut owed = owed;
        while owed > 0 {
            let n = owed.min(CHUNK as u64);
            if tx
                .blocking_send(Bytes::from(vec![0u8; n as usize]))
                .is_err()
            {
                break;
            }
            owed -= n;
        }
        let _ = tx.blocking_send(Bytes::from(vec![0xff; BLOCK]));
    }
    result
}

/// The rewriter on an archive in memory: what the engine would get, and
/// the image id or the refusal. For the fuzz target under `fuzz/`.
#[doc(hidden)]
pub fn rewrite_in_memory(archive: &[u8]) -> (Vec<u8>, Result<String, ArchiveError>) {
    let mut out = Vec::new();
    let mut r = Rewriter::new(archive, archive.len() as u64, |b: Bytes| {
        out.extend_from_slice(&b);
        Ok(())
    });
    let result = r.run();
    (out, result)
}

/// One pass over an archive.
struct Rewriter<R, F> {
    input: R,
    out: F,
    /// Bytes of the input not read yet: every size a header claims is
    /// bounded by it before anything is allocated or sent for it.
    left: u64,
    /// Bytes of the entry being sent that the engine still expects.
    owed: u64,
}

/// Name and size overrides from a PAX extended header, for the next entry.
#[derive(Default)]
struct Pax {
    path: Option<String>,
    linkpath: Option<String>,
    size: Option<u64>,
}

/// An entry as parsed, and as it will be written.
enum Kind {
    File,
    Dir,
    Symlink(String),
}

impl<R: Read, F: FnMut(Bytes) -> Result<(), ArchiveError>> Rewriter<R, F> {
    fn new(input: R, len: u64, out: F) -> Self {
        Self {
            input,
            out,
            left: len,
            owed: 0,
        }
    }

    fn run(&mut self) -> Result<String, ArchiveError> {
        let mut symlinks: HashSet<String> = HashSet::new();
        let mut id: Option<String> = None;
        let mut first = true;
        let mut sent_any = false;
        let mut pax: Option<Pax> = None;
        loop {
            let mut header = [0u8; BLOCK];
            if !read_block(&mut self.input, &mut header)? {
                break;
            }
            self.left = self.left.saturating_sub(BLOCK as u64);
            if std::mem::take(&mut first) && compressed(&header) {
                return Err(refused(
                    "it is compressed; upload the archive `docker save` writes".into(),
                ));
            }
            if header.iter().all(|b| *b == 0) {
                break;
            }
            if checksum(&header) != parse_octal(&header[148..156])? {
                return Err(refused("a header's checksum is wrong".into()));
            }
            let stored = parse_size(&header)?;
            match header[156] {
                // Go's writer uses PAX for huge sizes, and re-tarring tools
                // for their own records: read, applied to the next entry,
                // never passed on (every header sent is written here).
                b'x' => {
                    if pax.is_some() {
                        return Err(refused("two extended headers for one entry".into()));
                    }
                    let body = self.read_body(stored)?;
                    pax = Some(parse_pax(&body)?);
                    continue;
                }
                b'g' => {
                    self.read_body(stored)?;
                    continue;
                }
                _ => {}
            }
            let ext = pax.take().unwrap_or_default();
            let name = ext.path.clone().unwrap_or_else(|| header_name(&header));
            let size = self.bounded(ext.size.unwrap_or(stored))?;
            let kind = match header[156] {
                b'0' | 0 | b'7' => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink(
                    ext.linkpath
                        .clone()
                        .unwrap_or_else(|| c_string(&header[157..257])),
                ),
                b'1' => return Err(refused(format!("{name:?} is a hard link"))),
                t => {
                    return Err(refused(format!(
                        "{name:?} has the unsupported entry type {:?}",
                        t as char
                    )))
                }
            };
            if !matches!(kind, Kind::File) && size != 0 {
                return Err(refused(format!("{name:?} has a body but no file")));
            }
            if matches!(kind, Kind::File) && name.ends_with('/') {
                return Err(refused(format!("the file name {name:?} ends with /")));
            }
            let path = normalize(&name)?;
            if path.is_empty() {
                if matches!(kind, Kind::Dir) {
                    continue;
                }
                return Err(refused(format!("{name:?} names the archive's root")));
            }
            if let Some(parent) = through_symlink(&path, &symlinks) {
                return Err(refused(format!(
                    "{name:?} is written through the symlink {parent:?}"
                )));
            }
            let is_tag_file = [MANIFEST, REPOSITORIES, OCI_INDEX].contains(&path.as_str());
            match &kind {
                Kind::Symlink(target) => {
                    if is_tag_file {
                        return Err(refused(format!("{path} is a symlink")));
                    }
                    check_name(target)?;
                    if symlinks.len() >= MAX_SYMLINKS {
                        return Err(refused("too many symlinks".into()));
                    }
                    symlinks.insert(path.clone());
                }
                Kind::Dir if is_tag_file => {
                    return Err(refused(format!("{path} is a directory")));
                }
                _ => {}
            }
            if !std::mem::replace(&mut sent_any, true) {
                // The engine sniffs the first bytes it gets for compression.
                let first = ustar_header(&path, &kind, size);
                if compressed(&first) {
                    return Err(refused(format!("the first name {path:?} looks compressed")));
                }
            }
            if is_tag_file {
                let body = self.read_body(size)?;
                let body = match path.as_str() {
                    MANIFEST => {
                        let (body, mut found) = untag_manifest(&body)?;
                        if found.len() != 1 {
                            return Err(refused(format!(
                                "it holds {} images; a job image tarball holds one",
                                found.len()
                            )));
                        }
                        id = found.pop();
                        body
                    }
                    REPOSITORIES => b"{}".to_vec(),
                    _ => untag_index(&body)?,
                };
                let mut buf = ustar_header(&path, &Kind::File, body.len() as u64).to_vec();
                buf.extend_from_slice(&body);
                buf.resize(buf.len() + padding(body.len() as u64) as usize, 0);
                (self.out)(Bytes::from(buf))?;
            } else {
                (self.out)(Bytes::copy_from_slice(&ustar_header(&path, &kind, size)))?;
                self.copy_body(size)?;
            }
        }
        if pax.is_some() {
            return Err(refused("an extended header ends the archive".into()));
        }
        // Every check is done before the end-of-archive marker: after it,
        // the engine would load whatever it got.
        let id = id.ok_or_else(|| refused("it has no manifest.json".into()))?;
        (self.out)(Bytes::from(vec![0u8; 2 * BLOCK]))?;
        Ok(id)
    }

    /// A size a header claims, if the rest of the input can hold it and
    /// its padding.
    fn bounded(&self, size: u64) -> Result<u64, ArchiveError> {
        match size.checked_add(padding(size)) {
            Some(total) if total <= self.left => Ok(size),
            _ => Err(refused(format!(
                "an entry claims {size} bytes, more than the {} left in the archive",
                self.left
            ))),
        }
    }

    /// Reads a small body whole, and skips its padding.
    fn read_body(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let size = self.bounded(size)?;
        if size > MAX_META_BYTES {
            return Err(refused(format!("a tag file of {size} bytes")));
        }
        let mut body = vec![0u8; size as usize];
        self.input.read_exact(&mut body).map_err(truncated)?;
        self.left = self.left.saturating_sub(size);
        self.skip(padding(size))?;
        Ok(body)
    }

    /// Copies a body through, padded with zeros of our own. `size` was
    /// bounded by what is left of the input.
    fn copy_body(&mut self, size: u64) -> Result<(), ArchiveError> {
        self.owed = size + padding(size);
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            self.input.read_exact(&mut buf).map_err(truncated)?;
            self.left = self.left.saturating_sub(n as u64);
            if left == n as u64 {
                buf.resize(n + padding(size) as usize, 0);
            }
            let sent = buf.len() as u64;
            (self.out)(Bytes::from(buf))?;
            self.owed -= sent;
            left -= n as u64;
        }
        self.skip(padding(size))
    }

    /// Skips a body's padding (less than a block).
    fn skip(&mut self, n: u64) -> Result<(), ArchiveError> {
        let mut pad = [0u8; BLOCK];
        let n = (n as usize).min(BLOCK);
        self.input.read_exact(&mut pad[..n]).map_err(truncated)?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(())
    }
}

fn refused(why: String) -> ArchiveError {
    ArchiveError::Refused(why)
}

fn truncated(e: io::Error) -> ArchiveError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        refused("it ends inside an entry".into())
    } else {
        e.into()
    }
}

fn padding(size: u64) -> u64 {
    let block = BLOCK as u64;
    (block - size % block) % block
}

/// gzip, bzip2, xz and zstd: the engine would decompress what is checked
/// here as tar.
fn compressed(block: &[u8]) -> bool {
    let magics: [&[u8]; 4] = [
        &[0x1f, 0x8b],
        b"BZh",
        &[0xfd, b'7', b'z', b'X', b'Z', 0],
        &[0x28, 0xb5, 0x2f, 0xfd],
    ];
    magics.iter().any(|magic| block.starts_with(magic))
}

/// Fills `block`; false at a clean end of input.
fn read_block(input: &mut impl Read, block: &mut [u8]) -> Result<bool, ArchiveError> {
    let mut filled = 0;
    while filled < block.len() {
        match input.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(refused("it ends inside a header".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// The header's checksum: its bytes summed with the checksum field as spaces.
fn checksum(header: &[u8]) -> u64 {
    header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum()
}

fn parse_octal(field: &[u8]) -> Result<u64, ArchiveError> {
    let text = String::from_utf8_lossy(field);
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| refused(format!("a bad number {text:?}")))
}

/// The size field: octal, or base-256 when its first byte's top bit is set.
fn parse_size(header: &[u8]) -> Result<u64, ArchiveError> {
    let field = &header[124..136];
    if field[0] & 0x80 == 0 {
        return parse_octal(field);
    }
    let mut n: u64 = u64::from(field[0] & 0x7f);
    for b in &field[1..] {
        n = n
            .checked_mul(256)
            .and_then(|n| n.checked_add(u64::from(*b)))
            .ok_or_else(|| refused("an entry size overflows".into()))?;
    }
    Ok(n)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The entry's name, with the USTAR prefix where there is one.
fn header_name(header: &[u8]) -> String {
    let name = c_string(&header[..100]);
    if &header[257..263] == b"ustar\0" {
        let prefix = c_string(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// Names `docker save` writes: hex digests, `.json`, `layer.tar`,
/// `blobs/sha256/...`; short enough for a USTAR name field.
fn check_name(name: &str) -> Result<(), ArchiveError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-/:".contains(&b);
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(plain) {
        return Err(refused(format!(
            "the name {name:?} is not a plain short name"
        )));
    }
    Ok(())
}

/// The path the engine extracts to, relative to the archive root, as the
/// engine cleans it; a path that climbs out is refused.
fn normalize(name: &str) -> Result<String, ArchiveError> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(refused(format!("{name:?} climbs out of the archive")));
                }
            }
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    if !path.is_empty() {
        check_name(&path)?;
    }
    Ok(path)
}

/// The first parent directory of `path` that the archive made a symlink.
fn through_symlink(path: &str, symlinks: &HashSet<String>) -> Option<String> {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let parent = &path[..end + i];
        if symlinks.contains(parent) {
            return Some(parent.to_string());
        }
        end += i + 1;
    }
    None
}

/// A canonical USTAR header for an entry this module checked.
fn ustar_header(path: &str, kind: &Kind, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let (mode, flag, link, size, path) = match kind {
        Kind::File => (b"0000644\0", b'0', "", size, path.to_string()),
        Kind::Dir => (b"0000755\0", b'5', "", 0, format!("{path}/")),
        Kind::Symlink(target) => (b"0000777\0", b'2', target.as_str(), 0, path.to_string()),
    };
    // A directory's slash may take the name one past the field: the
    // engine cleans it off, so it can go.
    let name = if path.len() > MAX_NAME {
        path.trim_end_matches('/')
    } else {
        &path
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(mode);
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // Base-256, big-endian, for bodies of 8 GiB and more.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum = checksum(&h);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Rebuilds `manifest.json` from the keys the engine knows, `RepoTags`
/// null; returns it and the image ids. Another key (the engine matches
/// keys case-insensitively, so `repotags` would be one) is refused.
fn untag_manifest(body: &[u8]) -> Result<(Vec<u8>, Vec<String>), ArchiveError> {
    let bad = |why: &str| refused(format!("manifest.json {why}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    let images = manifest
        .as_array()
        .ok_or_else(|| bad("is not a list of images"))?;
    let mut ids = Vec::new();
    let mut rebuilt = Vec::new();
    for image in images {
        let image = image
            .as_object()
            .ok_or_else(|| bad("lists something other than an image"))?;
        if let Some(key) = image.keys().find(|k| !MANIFEST_KEYS.contains(&k.as_str())) {
            return Err(bad(&format!("has an unexpected key {key:?}")));
        }
        let config = image
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| bad("names an image without a Config"))?;
        let file = config.rsplit('/').next().unwrap_or(config);
        let hex = file
            .strip_prefix("sha256:")
            .unwrap_or(file)
            .trim_end_matches(".json");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("names a Config that is not a sha256 digest"));
        }
        ids.push(format!("sha256:{}", hex.to_ascii_lowercase()));
        let mut out = serde_json::Map::new();
        for key in MANIFEST_KEYS {
            if let Some(v) = image.get(key).filter(|_| key != "RepoTags") {
                out.insert(key.to_string(), v.clone());
            }
        }
        out.insert("RepoTags".into(), serde_json::Value::Null);
        rebuilt.push(serde_json::Value::Object(out));
    }
    let body = serde_json::to_vec(&rebuilt).map_err(|e| bad(&e.to_string()))?;
    Ok((body, ids))
}

/// `index.json` (OCI layout, Docker 25 and later) without annotations,
/// where the containerd image store reads image names. Rebuilt from the
/// keys the format defines, matched exactly: the engine's JSON matches
/// keys loosely (`annotationſ` is `annotations` to it), so any other key is
/// refused.
fn untag_index(body: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    const TOP: [&str; 4] = ["schemaVersion", "mediaType", "manifests", "annotations"];
    const DESCRIPTOR: [&str; 7] = [
        "mediaType",
        "digest",
        "size",
        "platform",
        "urls",
        "artifactType",
        "annotations",
    ];
    let bad = |why: String| refused(format!("index.json {why}"));
    let index: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let keep = |v: &serde_json::Value, known: &[&str]| {
        let o = v
            .as_object()
            .ok_or_else(|| bad("holds something other than an object".into()))?;
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(format!("has an unexpected key {k:?}")));
        }
        let mut out = o.clone();
        out.remove("annotations");
        Ok(out)
    };
    let mut top = keep(&index, &TOP)?;
    if let Some(list) = top.get_mut("manifests") {
        let items = list
            .as_array()
            .ok_or_else(|| bad("has manifests that are not a list".into()))?;
        let rebuilt = items
            .iter()
            .map(|d| keep(d, &DESCRIPTOR).map(serde_json::Value::Object))
            .collect::<Result<Vec<_>, _>>()?;
        *list = serde_json::Value::Array(rebuilt);
    }
    serde_json::to_vec(&top).map_err(|e| bad(e.to_string()))
}

/// Reads PAX records (`<len> <key>=<value>\n`), keeping those that name
/// or size the next entry; GNU sparse files are refused.
fn parse_pax(body: &[u8]) -> Result<Pax, ArchiveError> {
    let bad = || refused("a malformed extended header".into());
    let mut pax = Pax::default();
    let mut rest = body;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let text = || String::from_utf8(value.to_vec()).map_err(|_| bad());
        match key {
            b"path" => pax.path = Some(text()?),
            b"linkpath" => pax.linkpath = Some(text()?),
            b"size" => pax.size = Some(text()?.parse().map_err(|_| bad())?),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(refused("a sparse file".into()));
            }
            _ => {}
        }
    }
    Ok(pax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as a tenant's archive might have it: any name, kind, size.
    fn raw_header(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..265].copy_from_slice(b"ustar\x0000");
        let sum = checksum(&h);
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, kind: u8, body: &[u8], link: &str) {
        out.extend_from_slice(&raw_header(name, kind, body.len() as u64, link));
        out.extend_from_slice(body);
        out.resize(out.len() + padding(body.len() as u64) as usize, 0);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    const CONFIG: &str = "4f1dbd5f6e8b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b";

    fn manifest() -> Vec<u8> {
        format!(
            r#"[{{"Config":"{CONFIG}.json","RepoTags":["python:3.12"],"Layers":["l/layer.tar"]}}]"#
        )
        .into_bytes()
    }

    /// Rewrites `archive`: what was sent, the ids or the error, and the
    /// bytes the engine was still owed.
    fn pass(archive: &[u8]) -> (Vec<u8>, Result<String, ArchiveError>, u64) {
        pass_claiming(archive, archive.len() as u64)
    }

    /// As [`pass`], for an input said to be `len` bytes long.
    fn pass_claiming(archive: &[u8], len: u64) -> (Vec<u8>, Result<String, ArchiveError>, u64) {
        let mut out = Vec::new();
        let mut r = Rewriter::new(archive, len, |b: Bytes| {
            out.extend_from_slice(&b);
            Ok(())
        });
        let result = r.run();
        let owed = r.owed;
        (out, result, owed)
    }

    fn rewrite(archive: &[u8]) -> Result<(Vec<u8>, String), ArchiveError> {
        let (out, id, _) = pass(archive);
        Ok((out, id?))
    }

    /// The entries of a rewritten archive: (name, kind, body, link), each
    /// header checked to be canonical.
    fn entries(mut archive: &[u8]) -> Vec<(String, u8, Vec<u8>, String)> {
        let mut all = Vec::new();
        while archive[..BLOCK].iter().any(|b| *b != 0) {
            let h: [u8; BLOCK] = archive[..BLOCK].try_into().unwrap();
            assert_eq!(checksum(&h), parse_octal(&h[148..156]).unwrap(), "checksum");
            assert_eq!(&h[257..265], b"ustar\x0000");
            assert!(h[345..500].iter().all(|b| *b == 0), "no prefix");
            let size = parse_size(&h).unwrap() as usize;
            let body = archive[BLOCK..BLOCK + size].to_vec();
            all.push((header_name(&h), h[156], body, c_string(&h[157..257])));
            archive = &archive[BLOCK + size + padding(size as u64) as usize..];
        }
        assert_eq!(
            archive,
            &[0u8; 2 * BLOCK][..],
            "the end marker, then nothing"
        );
        all
    }

    #[test]
    fn tags_are_removed_and_everything_else_is_kept() {
        let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Vec::new();
        entry(&mut a, "l/", b'5', b"", "");
        entry(&mut a, "./l/layer.tar", b'0', &layer, "");
        entry(&mut a, "m/", b'5', b"", "");
        entry(&mut a, "m/layer.tar", b'2', b"", "../l/layer.tar");
        entry(&mut a, &format!("{CONFIG}.json"), b'0', b"{}", "");
        entry(&mut a, "manifest.json", b'0', &manifest(), "");
        entry(
            &mut a,
            "repositories",
            b'0',
            br#"{"python":{"3.12":"x"}}"#,
            "",
        );
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ab","annotations":{"io.containerd.image.name":"python:3.12"}}],"annotations":{"x":"y"}}"#;
        entry(&mut a, "index.json", b'0', index, "");
        end(&mut a);
        let (out, ids) = rewrite(&a).unwrap();
        assert_eq!(ids, format!("sha256:{CONFIG}"));
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "l/",
                "l/layer.tar",
                "m/",
                "m/layer.tar",
                &format!("{CONFIG}.json"),
                "manifest.json",
                "repositories",
                "index.json"
            ]
        );
        assert_eq!(got[1].2, layer);
        assert_eq!((got[3].1, got[3].3.as_str()), (b'2', "../l/layer.tar"));
        let m: serde_json::Value = serde_json::from_slice(&got[5].2).unwrap();
        assert!(m[0]["RepoTags"].is_null(), "{m}");
        assert_eq!(m[0]["Layers"][0], "l/layer.tar");
        assert_eq!(got[6].2, b"{}");
        let i: serde_json::Value = serde_json::from_slice(&got[7].2).unwrap();
        assert!(!i.to_string().contains("python"), "{i}");
        assert_eq!(i["manifests"][0]["digest"], "sha256:ab");
    }

    fn refusal(a: &[u8]) -> String {
        match rewrite(a) {
            Err(ArchiveError::Refused(why)) => why,
            other => panic!("not refused: {:?}", other.map(|(_, id)| id)),
        }
    }

    /// An entry of a test archive: name, type, body, link target.
    type Entry<'a> = (&'a str, u8, &'a [u8], &'a str);

    fn archive(entries: &[Entry]) -> Vec<u8> {
        let mut a = Vec::new();
        for (name, kind, body, link) in entries {
            entry(&mut a, name, *kind, body, link);
        }
        end(&mut a);
        a
    }

    #[test]
    fn a_manifest_reached_another_way_is_refused() {
        let m = manifest();
        let m: &[u8] = &m;
        let none: &[u8] = b"";
        let cases: [(&[Entry], &str); 6] = [
            (
                &[("d", b'2', none, "."), ("d/manifest.json", b'0', m, "")],
                "through the symlink",
            ),
            (
                &[
                    ("other.json", b'0', m, ""),
                    ("./manifest.json", b'2', none, "other.json"),
                ],
                "is a symlink",
            ),
            (
                &[
                    ("other.json", b'0', m, ""),
                    ("manifest.json", b'1', none, "other.json"),
                ],
                "hard link",
            ),
            (
                &[
                    ("PaxHeaders/x", b'x', b"22 path=manifest.json\n", ""),
                    ("m", b'2', none, "."),
                ],
                "is a symlink",
            ),
            (
                &[
                    ("././@LongLink", b'L', b"manifest.json\0", ""),
                    ("innocent", b'0', m, ""),
                ],
                "entry type 'L'",
            ),
            (&[("../manifest.json", b'0', m, "")], "climbs out"),
        ];
        for (entries, why) in cases {
            let got = refusal(&archive(entries));
            assert!(got.contains(why), "{got:?} should say {why:?}");
        }
    }

    #[test]
    fn extended_headers_are_applied_and_never_passed_on() {
        // A PAX name is the entry's name: here the manifest, rewritten.
        let m = manifest();
        let a = archive(&[
            ("PaxHeaders/x", b'x', b"22 path=manifest.json\n", ""),
            ("innocent", b'0', &m, ""),
            ("PaxHeaders/g", b'g', b"16 comment=hello\n", ""),
        ]);
        let (out, _) = rewrite(&a).unwrap();
        let got = entries(&out);
        assert_eq!(got.len(), 1, "only the entry itself is sent");
        assert_eq!(got[0].0, "manifest.json");
        let v: serde_json::Value = serde_json::from_slice(&got[0].2).unwrap();
        assert!(v[0]["RepoTags"].is_null());
        // A PAX size is the size read.
        let mut a = Vec::new();
        entry(&mut a, "PaxHeaders/y", b'x', b"12 size=600\n", "");
        a.extend_from_slice(&raw_header("big.bin", b'0', 0, ""));
        a.extend_from_slice(&[9u8; 600]);
        a.resize(a.len() + padding(600) as usize, 0);
        entry(&mut a, "manifest.json", b'0', &m, "");
        end(&mut a);
        let (out, _) = rewrite(&a).unwrap();
        assert_eq!(entries(&out)[0].2, vec![9u8; 600]);
    }

    #[test]
    fn a_refused_archive_is_never_complete() {
        // No manifest: refused before the end marker.
        let (out, result, _) = pass(&archive(&[("layer.tar", b'0', b"abc", "")]));
        assert!(result.is_err());
        assert!(!out.ends_with(&[0u8; 2 * BLOCK]), "no end marker was sent");
        // Cut inside a body: refused before its header is sent.
        let mut a = archive(&[("layer.tar", b'0', &[7u8; 300], "")]);
        a.truncate(BLOCK + 100);
        let (out, result, owed) = pass(&a);
        assert!(result.is_err());
        assert!(
            out.is_empty(),
            "nothing of an entry the archive cannot hold"
        );
        assert_eq!(owed, 0);
        // A file that shrinks while it is read: the engine is owed the
        // rest of the entry, so the poison block after it lands where a
        // header must be.
        let full = archive(&[("layer.tar", b'0', &[7u8; 300], "")]);
        let (out, result, owed) = pass_claiming(&full[..BLOCK + 100], full.len() as u64);
        assert!(result.is_err());
        assert_eq!(out.len(), BLOCK, "the header only");
        assert_eq!(owed, BLOCK as u64);
        // Two images: refused, before the end marker.
        let two = format!(
            r#"[{{"Config":"{CONFIG}.json","Layers":[]}},{{"Config":"{CONFIG}.json","Layers":[]}}]"#
        );
        let (out, result, _) = pass(&archive(&[("manifest.json", b'0', two.as_bytes(), "")]));
        assert!(matches!(result, Err(ArchiveError::Refused(w)) if w.contains("2 images")));
        assert!(out.is_empty());
    }

    #[test]
    fn index_keys_are_matched_exactly() {
        let m = manifest();
        for index in [
            r#"{"manifests":[{"digest":"sha256:ab","annotation\u017f":{"io.containerd.image.name":"x"}}]}"#,
            r#"{"Manifests":[],"manifests":[{"digest":"sha256:ab"}]}"#,
        ] {
            let got = refusal(&archive(&[
                ("index.json", b'0', index.as_bytes(), ""),
                ("manifest.json", b'0', &m, ""),
            ]));
            assert!(got.contains("unexpected key"), "{got}");
        }
        // The Config may be named as other tools name it.
        let crane = format!(r#"[{{"Config":"sha256:{CONFIG}","Layers":[]}}]"#);
        let (_, ids) = rewrite(&archive(&[("manifest.json", b'0', crane.as_bytes(), "")])).unwrap();
        assert_eq!(ids, format!("sha256:{CONFIG}"));
    }

    #[test]
    fn a_directory_cannot_smuggle_an_entry_in_its_body() {
        // The engine reads no body for a directory: the "body" would be
        // the next header it sees.
        let mut inner = Vec::new();
        entry(&mut inner, "manifest.json", b'0', &manifest(), "");
        let got = refusal(&archive(&[("d/", b'5', &inner, "")]));
        assert!(got.contains("has a body"), "{got}");
        let got = refusal(&archive(&[("manifest.json/", 0, &manifest(), "")]));
        assert!(got.contains("ends with /"), "{got}");
    }

    #[test]
    fn a_manifest_with_a_key_in_another_case_is_refused() {
        let m =
            format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":[],"repotags":["python:3.12"]}}]"#);
        let got = refusal(&archive(&[("manifest.json", b'0', m.as_bytes(), "")]));
        assert!(got.contains("unexpected key \"repotags\""), "{got}");
    }

    #[test]
    fn paths_are_cleaned_and_written_canonically() {
        let (out, _) = rewrite(&archive(&[("x/../manifest.json", b'0', &manifest(), "")])).unwrap();
        let got = entries(&out);
        assert_eq!(got[0].0, "manifest.json");
        // A name the USTAR prefix field carries is written whole.
        let mut h = raw_header("layer.tar", b'0', 3, "");
        h[345..348].copy_from_slice(b"abc");
        h[148..156].fill(0);
        let sum = checksum(&h);
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut a = h.to_vec();
        a.extend_from_slice(b"xyz");
        a.resize(1024, 0);
        a.extend_from_slice(&archive(&[("manifest.json", b'0', &manifest(), "")]));
        let (out, _) = rewrite(&a).unwrap();
        assert_eq!(entries(&out)[0].0, "abc/layer.tar");
    }

    #[test]
    fn broken_or_odd_archives_are_refused() {
        let no_manifest = archive(&[("layer.tar", b'0', b"abc", "")]);
        assert!(refusal(&no_manifest).contains("no manifest.json"));
        assert!(refusal(b"not a tar").contains("ends inside a header"));
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.resize(BLOCK, 0);
        assert!(refusal(&gz).contains("compressed"));
        let mut bad = archive(&[("manifest.json", b'0', &manifest(), "")]);
        bad[0] = b'M';
        assert!(refusal(&bad).contains("checksum"));
        let mut short = archive(&[("layer.tar", b'0', &[7u8; 2000], "")]);
        short.truncate(1500);
        assert!(refusal(&short).contains("more than the 988 left"));
        let odd = archive(&[("dev", b'3', b"", "")]);
        assert!(refusal(&odd).contains("unsupported entry type"));
        let weird = archive(&[("a b", b'0', b"", "")]);
        assert!(refusal(&weird).contains("not a plain short name"));
    }

    /// A header claiming `size` in base-256, as Go's writer and attackers
    /// write huge sizes.
    fn base256_header(name: &str, size: u64) -> [u8; BLOCK] {
        let mut h = raw_header(name, b'0', 0, "");
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
        h[148..156].fill(b' ');
        let sum = checksum(&h);
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn sizes_past_the_archive_are_refused_before_anything_is_sent() {
        // The review's tarball: one header claiming 2^62 bytes, nothing
        // after it. Nothing may be allocated or owed for that size.
        let a = base256_header("layer.tar", 1 << 62).to_vec();
        let (out, result, owed) = pass(&a);
        let why = match result {
            Err(ArchiveError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        assert!(why.contains("more than"), "{why}");
        assert!(out.is_empty());
        assert_eq!(owed, 0);
        // The largest size a header can hold, and one whose padding
        // overflows.
        for size in [u64::MAX >> 1, u64::MAX - 10] {
            let mut a = base256_header("layer.tar", size).to_vec();
            a.extend_from_slice(&[0u8; 4 * BLOCK]);
            let (out, result, owed) = pass(&a);
            assert!(matches!(result, Err(ArchiveError::Refused(_))), "{size}");
            assert!(out.is_empty());
            assert_eq!(owed, 0);
        }
        // A PAX size past the archive, and a tag file's.
        let a = archive(&[
            ("PaxHeaders/x", b'x', b"28 size=4611686018427387904\n", ""),
            ("layer.tar", b'0', b"abc", ""),
        ]);
        assert!(refusal(&a).contains("more than"));
        let mut a = raw_header("manifest.json", b'0', 1 << 30, "").to_vec();
        a.extend_from_slice(&[0u8; BLOCK]);
        assert!(refusal(&a).contains("more than"));
    }

    /// An entry as read back: cleaned path, type, body, link target.
    type ReadBack = (String, u8, Vec<u8>, String);

    /// Entries as the `tar` crate reads them.
    fn read_with_tar_crate(a: &[u8]) -> io::Result<Vec<ReadBack>> {
        let mut all = Vec::new();
        let mut archive = tar::Archive::new(a);
        for e in archive.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let path = normalize(&path).unwrap_or(path);
            let kind = e.header().entry_type().as_byte();
            let link = e
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut body = Vec::new();
            e.read_to_end(&mut body)?;
            all.push((path, kind, body, link));
        }
        Ok(all)
    }

    /// A valid archive the `tar` crate writes, from a seed: directories,
    /// files (some with PAX headers), symlinks, and a manifest.
    fn tar_crate_archive(seed: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = vec![String::new()];
        for (i, s) in seed.iter().enumerate() {
            let dir = dirs[usize::from(*s) % dirs.len()].clone();
            let name = format!("{dir}e{i}");
            let mut h = tar::Header::new_ustar();
            match s % 4 {
                0 => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, format!("{name}/"), io::empty())
                        .unwrap();
                    dirs.push(format!("{name}/"));
                }
                1 => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, &name, "../x").unwrap();
                }
                2 => {
                    // A PAX record the rewriter applies and drops.
                    b.append_pax_extensions([("comment", b"made by a test".as_slice())])
                        .unwrap();
                    let body = vec![*s; usize::from(*s) * 37];
                    h.set_size(body.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, &name, body.as_slice()).unwrap();
                }
                _ => {
                    let body = vec![*s; usize::from(*s) * 3 + i];
                    h.set_size(body.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, &name, body.as_slice()).unwrap();
                }
            }
        }
        let m = manifest();
        let mut h = tar::Header::new_ustar();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, MANIFEST, m.as_slice()).unwrap();
        b.into_inner().unwrap()
    }

    /// What the rewriter sent, as the `tar` crate reads it, is what the
    /// `tar` crate reads from the tenant's archive (PAX records applied,
    /// the manifest rewritten).
    fn same_as_tar_crate(input: &[u8]) {
        let (out, result, _) = pass(input);
        let Ok(_) = result else { return };
        let theirs = read_with_tar_crate(input).expect("accepted, so the tar crate reads it");
        let ours = read_with_tar_crate(&out).expect("what the engine gets is a tar");
        let strip = |v: Vec<ReadBack>| {
            v.into_iter()
                .filter(|e| e.0 != MANIFEST && !matches!(e.1, b'x' | b'g') && !e.0.is_empty())
                .map(|(p, k, b, l)| (p, if k == 0 || k == b'7' { b'0' } else { k }, b, l))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(ours), strip(theirs));
    }

    #[test]
    fn accepted_archives_read_the_same_through_the_tar_crate() {
        for seed in [
            &b""[..],
            b"\x03\x00\x02\x05\x01\x07",
            b"\x00\x04\x08\x0e\x02\x03\x06",
        ] {
            let a = tar_crate_archive(seed);
            let (_, result, _) = pass(&a);
            result.unwrap_or_else(|e| panic!("{seed:?}: {e}"));
            same_as_tar_crate(&a);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The same property as the fuzz target: any archive, valid ones
        /// cut or with bytes changed, is refused or read as the `tar`
        /// crate reads it; never a panic, never more owed than it holds.
        #[test]
        fn mutated_archives_are_refused_or_read_alike(
            seed in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..6),
            cut in proptest::option::of(proptest::num::usize::ANY),
        ) {
            let mut a = tar_crate_archive(&seed);
            for (at, b) in edits {
                let i = at % a.len();
                a[i] = b;
            }
            if let Some(cut) = cut {
                a.truncate(cut % (a.len() + 1));
            }
            let (out, _, owed) = pass(&a);
            proptest::prop_assert!(owed + out.len() as u64 <= a.len() as u64 + 4 * BLOCK as u64);
            same_as_tar_crate(&a);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let (_, _, owed) = pass(&bytes);
            proptest::prop_assert!(owed <= bytes.len() as u64);
        }
    }
}
