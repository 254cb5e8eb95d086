//! Rewrites an image tarball (`docker save` format) so the engine loads it
//! by id only, never under a name.
//!
//! A node shares its engine's tag namespace with every tenant. If a
//! tenant's tarball were loaded as written, its `RepoTags` would point a
//! name such as `python:3.12` at the tenant's image, if only for the moment
//! before the node put it back, and another job starting in that moment
//! would run it. Two loads of the same tarball at once also undo each
//! other's restores. So the tags never reach the engine: `manifest.json`
//! goes through with `RepoTags` emptied, and the legacy `repositories` file
//! goes through as `{}`. Every other byte is copied as it is, in chunks, so
//! memory does not grow with the image.
//!
//! The engine extracts the archive to a directory and then reads those two
//! files by path, so an archive that could put them there by another route
//! is refused: a tag file that is a link, a path through a symlink the
//! archive made, a path that climbs out, or a tag file named by an extended
//! header. `docker save` writes none of these.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

/// The files the engine reads image names from.
const TAG_FILES: [&str; 2] = ["manifest.json", "repositories"];
/// The largest tag file or extended header rewritten or parsed in memory.
const MAX_META_BYTES: u64 = 16 << 20;
/// Bytes per chunk sent to the engine.
const CHUNK: usize = 64 << 10;
const BLOCK: u64 = 512;

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

/// Streams `tarball` to `tx` without its tags. Returns the image ids the
/// manifest names (`sha256:<hex>` of each image's config).
pub fn send_untagged(
    tarball: &Path,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Vec<String>, ArchiveError> {
    let file = std::fs::File::open(tarball)?;
    let mut rewriter = Rewriter {
        input: io::BufReader::with_capacity(CHUNK, file),
        out: |b: Bytes| tx.blocking_send(b).map_err(|_| ArchiveError::Closed),
    };
    rewriter.run()
}

/// The state of one pass over an archive.
struct Rewriter<R, F> {
    input: R,
    out: F,
}

/// Name overrides from the extended headers before an entry.
#[derive(Default)]
struct Pending {
    path: Option<String>,
    linkpath: Option<String>,
    size: Option<u64>,
    any: bool,
}

impl<R: Read, F: FnMut(Bytes) -> Result<(), ArchiveError>> Rewriter<R, F> {
    fn run(&mut self) -> Result<Vec<String>, ArchiveError> {
        let mut symlinks: HashSet<String> = HashSet::new();
        let mut pending = Pending::default();
        let mut ids = None;
        loop {
            let mut header = [0u8; BLOCK as usize];
            if !read_block(&mut self.input, &mut header)? {
                break;
            }
            if header.iter().all(|b| *b == 0) {
                // End of archive: the engine reads no further.
                (self.out)(Bytes::copy_from_slice(&header))?;
                (self.out)(Bytes::from_static(&[0u8; BLOCK as usize]))?;
                break;
            }
            let kind = header[156];
            let stored = parse_size(&header)?;
            match kind {
                b'x' | b'L' | b'K' => {
                    let body = self.read_meta(stored)?;
                    match kind {
                        b'x' => parse_pax(&body, &mut pending)?,
                        b'L' => pending.path = Some(c_string(&body)),
                        _ => pending.linkpath = Some(c_string(&body)),
                    }
                    pending.any = true;
                    self.forward(&header, &body)?;
                    continue;
                }
                b'g' => {
                    // A global header is an entry of its own to the engine's
                    // reader; it names nothing.
                    (self.out)(Bytes::copy_from_slice(&header))?;
                    self.copy(stored)?;
                    continue;
                }
                _ => {}
            }
            let ext = std::mem::take(&mut pending);
            let name = match ext.path.clone() {
                Some(p) => p,
                None => header_name(&header),
            };
            let path = normalize(&name)?;
            if let Some(parent) = through_symlink(&path, &symlinks) {
                return Err(refused(format!(
                    "{name:?} is written through the symlink {parent:?}"
                )));
            }
            let size = ext.size.unwrap_or(stored);
            match kind {
                b'2' => {
                    symlinks.insert(path.clone());
                }
                b'1' => {
                    let target = ext.linkpath.clone().unwrap_or_else(|| link_name(&header));
                    let target = normalize(&target)?;
                    if symlinks.contains(&target) || through_symlink(&target, &symlinks).is_some() {
                        return Err(refused(format!("{name:?} links to a symlink")));
                    }
                }
                _ => {}
            }
            if TAG_FILES.contains(&path.as_str()) {
                if !matches!(kind, b'0' | 0 | b'7') {
                    return Err(refused(format!("{path} is not a plain file")));
                }
                if ext.any {
                    return Err(refused(format!("{path} is named by an extended header")));
                }
                let body = self.read_meta(stored)?;
                let body = if path == "manifest.json" {
                    let (body, found) = untag_manifest(&body)?;
                    ids = Some(found);
                    body
                } else {
                    b"{}".to_vec()
                };
                let header = with_size(&header, body.len() as u64);
                self.forward(&header, &body)?;
            } else {
                (self.out)(Bytes::copy_from_slice(&header))?;
                self.copy(size)?;
            }
        }
        ids.ok_or_else(|| refused("the tarball has no manifest.json".into()))
    }

    /// Reads a small entry body whole, and its padding.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        if size > MAX_META_BYTES {
            return Err(refused(format!("a metadata entry of {size} bytes")));
        }
        let mut body = vec![0u8; size as usize];
        self.input.read_exact(&mut body)?;
        let mut pad = vec![0u8; padding(size) as usize];
        self.input.read_exact(&mut pad)?;
        Ok(body)
    }

    /// Sends a header and a body with its padding.
    fn forward(&mut self, header: &[u8], body: &[u8]) -> Result<(), ArchiveError> {
        let mut buf = Vec::with_capacity(header.len() + body.len() + BLOCK as usize);
        buf.extend_from_slice(header);
        buf.extend_from_slice(body);
        buf.resize(buf.len() + padding(body.len() as u64) as usize, 0);
        (self.out)(Bytes::from(buf))
    }

    /// Copies an entry's body and padding through unchanged.
    fn copy(&mut self, size: u64) -> Result<(), ArchiveError> {
        let mut left = size + padding(size);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            self.input.read_exact(&mut buf)?;
            (self.out)(Bytes::from(buf))?;
            left -= n as u64;
        }
        Ok(())
    }
}

fn refused(why: String) -> ArchiveError {
    ArchiveError::Refused(why)
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Fills `block`; false at a clean end of input.
fn read_block(input: &mut impl Read, block: &mut [u8]) -> Result<bool, ArchiveError> {
    let mut filled = 0;
    while filled < block.len() {
        match input.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(refused("the tarball ends inside a header".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// The size field: octal, or base-256 when its first byte's top bit is set.
fn parse_size(header: &[u8]) -> Result<u64, ArchiveError> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(*b)))
                .ok_or_else(|| refused("an entry size overflows".into()))?;
        }
        return Ok(n);
    }
    let text = String::from_utf8_lossy(field);
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| refused(format!("a bad entry size {text:?}")))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The entry's name, with the USTAR prefix where the format has one.
fn header_name(header: &[u8]) -> String {
    let name = c_string(&header[..100]);
    if &header[257..265] == b"ustar\x0000" {
        let prefix = c_string(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn link_name(header: &[u8]) -> String {
    c_string(&header[157..257])
}

/// Reads `len key=value\n` records, keeping what renames or resizes the
/// next entry.
fn parse_pax(body: &[u8], pending: &mut Pending) -> Result<(), ArchiveError> {
    let bad = || refused("a malformed extended header".into());
    let mut rest = body;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let value = String::from_utf8_lossy(value).into_owned();
        match key {
            b"path" => pending.path = Some(value),
            b"linkpath" => pending.linkpath = Some(value),
            b"size" => pending.size = Some(value.parse().map_err(|_| bad())?),
            _ => {}
        }
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
    Ok(parts.join("/"))
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

/// Empties every image's `RepoTags`; returns the new manifest and the ids.
fn untag_manifest(body: &[u8]) -> Result<(Vec<u8>, Vec<String>), ArchiveError> {
    let bad = |why: &str| refused(format!("manifest.json {why}"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    let images = manifest
        .as_array_mut()
        .ok_or_else(|| bad("is not a list of images"))?;
    let mut ids = Vec::new();
    for image in images.iter_mut() {
        let image = image
            .as_object_mut()
            .ok_or_else(|| bad("lists something other than an image"))?;
        let config = image
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| bad("names an image without a Config"))?;
        let hex = config
            .rsplit('/')
            .next()
            .unwrap_or(config)
            .trim_end_matches(".json");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("names a Config that is not a sha256 digest"));
        }
        ids.push(format!("sha256:{}", hex.to_ascii_lowercase()));
        image.insert("RepoTags".into(), serde_json::Value::Null);
    }
    let body = serde_json::to_vec(&manifest).map_err(|e| bad(&e.to_string()))?;
    Ok((body, ids))
}

/// `header` with a new size and checksum.
fn with_size(header: &[u8; BLOCK as usize], size: u64) -> [u8; BLOCK as usize] {
    let mut h = *header;
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A USTAR header block for one entry.
    fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..265].copy_from_slice(b"ustar\x0000");
        with_size(&h, size)
    }

    fn entry(out: &mut Vec<u8>, name: &str, kind: u8, body: &[u8], link: &str) {
        out.extend_from_slice(&header(name, kind, body.len() as u64, link));
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

    fn rewrite(archive: &[u8]) -> Result<(Vec<u8>, Vec<String>), ArchiveError> {
        let mut out = Vec::new();
        let mut r = Rewriter {
            input: archive,
            out: |b: Bytes| {
                out.extend_from_slice(&b);
                Ok(())
            },
        };
        let ids = r.run()?;
        Ok((out, ids))
    }

    /// The entries of an archive: (name, kind, body).
    fn entries(mut archive: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
        let mut all = Vec::new();
        while archive.len() >= 512 && archive[..512].iter().any(|b| *b != 0) {
            let h: [u8; 512] = archive[..512].try_into().unwrap();
            assert_eq!(with_size(&h, parse_size(&h).unwrap()), h, "checksum");
            let size = parse_size(&h).unwrap() as usize;
            all.push((header_name(&h), h[156], archive[512..512 + size].to_vec()));
            archive = &archive[512 + size + padding(size as u64) as usize..];
        }
        all
    }

    #[test]
    fn tags_are_removed_and_everything_else_is_copied() {
        let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Vec::new();
        entry(&mut a, "l/", b'5', b"", "");
        entry(&mut a, "l/layer.tar", b'0', &layer, "");
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
        end(&mut a);
        let (out, ids) = rewrite(&a).unwrap();
        assert_eq!(ids, vec![format!("sha256:{CONFIG}")]);
        let got = entries(&out);
        let want = entries(&a);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            match g.0.as_str() {
                "manifest.json" => {
                    let m: serde_json::Value = serde_json::from_slice(&g.2).unwrap();
                    assert!(m[0]["RepoTags"].is_null(), "{m}");
                    assert_eq!(m[0]["Layers"][0], "l/layer.tar");
                }
                "repositories" => assert_eq!(g.2, b"{}"),
                _ => assert_eq!(g, w),
            }
        }
    }

    fn refusal(a: &[u8]) -> String {
        match rewrite(a) {
            Err(ArchiveError::Refused(why)) => why,
            other => panic!("not refused: {:?}", other.map(|(_, ids)| ids)),
        }
    }

    #[test]
    fn a_manifest_written_through_a_symlink_is_refused() {
        let mut a = Vec::new();
        entry(&mut a, "d", b'2', b"", ".");
        entry(&mut a, "d/manifest.json", b'0', &manifest(), "");
        end(&mut a);
        assert!(refusal(&a).contains("through the symlink"));
        // Or through a link to that symlink.
        let mut a = Vec::new();
        entry(&mut a, "d", b'2', b"", ".");
        entry(&mut a, "e", b'1', b"", "d");
        end(&mut a);
        assert!(refusal(&a).contains("links to a symlink"));
    }

    #[test]
    fn a_tag_file_that_is_a_link_is_refused() {
        for kind in [b'1', b'2'] {
            let mut a = Vec::new();
            entry(&mut a, "other.json", b'0', &manifest(), "");
            entry(&mut a, "./manifest.json", kind, b"", "other.json");
            end(&mut a);
            assert!(refusal(&a).contains("not a plain file"));
        }
    }

    #[test]
    fn a_manifest_named_by_an_extended_header_is_refused() {
        let record = "22 path=manifest.json\n";
        let mut a = Vec::new();
        entry(&mut a, "PaxHeaders/x", b'x', record.as_bytes(), "");
        entry(&mut a, "innocent", b'0', &manifest(), "");
        end(&mut a);
        assert!(refusal(&a).contains("extended header"));
        let mut a = Vec::new();
        entry(&mut a, "././@LongLink", b'L', b"a/../manifest.json\0", "");
        entry(&mut a, "innocent", b'0', &manifest(), "");
        end(&mut a);
        assert!(refusal(&a).contains("extended header"));
    }

    #[test]
    fn paths_are_cleaned_as_the_engine_cleans_them() {
        let mut a = Vec::new();
        entry(&mut a, "x/../manifest.json", b'0', &manifest(), "");
        end(&mut a);
        let (out, _) = rewrite(&a).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&entries(&out)[0].2).unwrap();
        assert!(m[0]["RepoTags"].is_null());
        let mut a = Vec::new();
        entry(&mut a, "../manifest.json", b'0', &manifest(), "");
        end(&mut a);
        assert!(refusal(&a).contains("climbs out"));
    }

    #[test]
    fn an_archive_without_a_manifest_is_refused() {
        let mut a = Vec::new();
        entry(&mut a, "layer.tar", b'0', b"abc", "");
        end(&mut a);
        assert!(refusal(&a).contains("no manifest.json"));
        assert!(refusal(b"not a tar").contains("ends inside a header"));
    }
}
