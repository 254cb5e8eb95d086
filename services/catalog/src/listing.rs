//! The S3 listing rules, once for every backend. A backend scans its keys
//! in byte order from `list_start` and offers each to a `Lister`, which says
//! whether to go on, to seek past a common prefix, or to stop.

use crate::api::{ListQuery, ObjectPage, UploadPage, UploadQuery};
use crate::records::{ObjectRecord, UploadRecord};

/// Turns `key` into the smallest byte string greater than every string that
/// starts with `key` (empty if there is none).
pub(crate) fn increment(key: &mut Vec<u8>) {
    while let Some(last) = key.pop() {
        if last < 0xff {
            key.push(last + 1);
            return;
        }
    }
}

fn delimiter(d: &Option<String>) -> Option<&str> {
    d.as_deref().filter(|d| !d.is_empty())
}

/// The common prefix that `key` rolls up into, if any.
fn common_prefix<'k>(key: &'k str, prefix: &str, delim: Option<&str>) -> Option<&'k str> {
    let d = delim?;
    let rest = key.strip_prefix(prefix)?;
    let pos = rest.find(d)?;
    Some(&key[..prefix.len() + pos + d.len()])
}

/// The first key (inclusive) a listing must look at.
pub(crate) fn list_start(q: &ListQuery) -> Vec<u8> {
    let mut seek = q.prefix.as_bytes().to_vec();
    if let Some(after) = &q.start_after {
        if after.as_bytes() >= q.prefix.as_bytes() {
            seek = after.as_bytes().to_vec();
            seek.push(0);
        }
        // Resuming after a rolled-up common prefix: every key under it was
        // already reported as that prefix, so skip them all.
        if let Some(cp) = common_prefix(after, &q.prefix, delimiter(&q.delimiter)) {
            seek = cp.as_bytes().to_vec();
            increment(&mut seek);
        }
    }
    seek
}

/// The exclusive upper bound of a prefix scan, if there is one.
pub(crate) enum Listed {
    /// Offer the next key.
    More,
    /// Seek to this key (inclusive) and go on from there.
    Seek(Vec<u8>),
    /// The page is complete.
    Done,
}

pub(crate) struct Lister<'q> {
    q: &'q ListQuery,
    page: ObjectPage,
}

impl<'q> Lister<'q> {
    pub(crate) fn new(q: &'q ListQuery) -> Self {
        Self {
            q,
            page: ObjectPage::default(),
        }
    }

    /// Takes the next key in byte order at or after the last seek.
    pub(crate) fn offer(&mut self, key: String, rec: ObjectRecord) -> Listed {
        let q = self.q;
        if !key.starts_with(&q.prefix) {
            return Listed::Done;
        }
        if q.start_after.as_deref().is_some_and(|a| key.as_str() <= a) {
            return Listed::More;
        }
        if self.page.objects.len() + self.page.common_prefixes.len() >= q.max {
            self.page.is_truncated = true;
            return Listed::Done;
        }
        if let Some(cp) = common_prefix(&key, &q.prefix, delimiter(&q.delimiter)) {
            let cp = cp.to_string();
            let mut seek = cp.as_bytes().to_vec();
            increment(&mut seek);
            self.page.last = Some(cp.clone());
            self.page.common_prefixes.push(cp);
            return if seek.is_empty() {
                Listed::Done
            } else {
                Listed::Seek(seek)
            };
        }
        self.page.last = Some(key.clone());
        self.page.objects.push((key, rec));
        Listed::More
    }

    pub(crate) fn finish(self) -> ObjectPage {
        self.page
    }
}

/// Multipart uploads are listed with every upload under the prefix offered
/// in (key, upload id) order; there are few, and they do not hide keys.
pub(crate) struct UploadLister<'q> {
    q: &'q UploadQuery,
    page: UploadPage,
}

impl<'q> UploadLister<'q> {
    pub(crate) fn new(q: &'q UploadQuery) -> Self {
        Self {
            q,
            page: UploadPage::default(),
        }
    }

    /// Takes the next upload; false once the page is complete.
    pub(crate) fn offer(&mut self, up: UploadRecord) -> bool {
        let q = self.q;
        let delim = delimiter(&q.delimiter);
        // A byte-prefix scan can match keys shorter than the requested
        // prefix (one holding a NUL, say): only keys that really start with
        // it are listed.
        if !up.key.starts_with(&q.prefix) {
            return true;
        }
        if let Some(km) = &q.key_marker {
            // Resuming after a rolled-up common prefix skips everything
            // under it.
            if common_prefix(km, &q.prefix, delim).is_some_and(|cp| up.key.starts_with(cp)) {
                return true;
            }
            let after_marker = match &q.upload_id_marker {
                Some(um) => (up.key.as_str(), up.upload_id.as_str()) > (km.as_str(), um.as_str()),
                None => up.key.as_str() > km.as_str(),
            };
            if !after_marker {
                return true;
            }
        }
        let page = &mut self.page;
        if let Some(cp) = common_prefix(&up.key, &q.prefix, delim) {
            if page.common_prefixes.last().map(String::as_str) != Some(cp) {
                if page.uploads.len() + page.common_prefixes.len() >= q.max {
                    page.is_truncated = true;
                    return false;
                }
                page.next_key_marker = Some(cp.to_string());
                page.next_upload_id_marker = None;
                page.common_prefixes.push(cp.to_string());
            }
            return true;
        }
        if page.uploads.len() + page.common_prefixes.len() >= q.max {
            page.is_truncated = true;
            return false;
        }
        page.next_key_marker = Some(up.key.clone());
        page.next_upload_id_marker = Some(up.upload_id.clone());
        page.uploads.push(up);
        true
    }

    pub(crate) fn finish(self) -> UploadPage {
        self.page
    }
}
