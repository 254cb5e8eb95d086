//! One byte-range type for the whole system: a GET's `Range`, an
//! `x-amz-copy-source-range`, and the range the gateway asks a node for.

/// An inclusive range of byte offsets, `start..=end`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// A range that starts at or past the end of the object (or asks for the
/// last zero bytes): HTTP 416.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Unsatisfiable;

impl ByteRange {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never empty: `end` is inclusive.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `bytes=FIRST-LAST` with both offsets given and FIRST ≤ LAST, the
    /// only form a copy range may take and the one the gateway sends nodes.
    pub fn parse_exact(value: &str) -> Option<Self> {
        let (start, end) = Self::parse_pair(value)?;
        (start <= end).then_some(Self { start, end })
    }

    /// The two offsets of `bytes=FIRST-LAST`, in whatever order they came
    /// (a caller may answer a reversed pair differently from garbage).
    pub fn parse_pair(value: &str) -> Option<(u64, u64)> {
        let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    }

    /// A GET's `Range` against an object of `size` bytes, as S3 reads it:
    /// `bytes=F-L`, `bytes=F-` and `bytes=-N`, clipped to the object.
    /// `Ok(None)` means "ignore the header", which S3 does with forms it
    /// does not support (several ranges, other units, garbage).
    pub fn parse_for_get(value: &str, size: u64) -> Result<Option<Self>, Unsatisfiable> {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Ok(None);
        }
        let Some((a, b)) = spec.split_once('-') else {
            return Ok(None);
        };
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            let Ok(n) = b.parse::<u64>() else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(Unsatisfiable);
            }
            return Ok(Some(Self {
                start: size.saturating_sub(n),
                end: size - 1,
            }));
        }
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            u64::MAX
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e,
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(Unsatisfiable);
        }
        Ok(Some(Self {
            start,
            end: end.min(size - 1),
        }))
    }

    /// The `Range` request header naming this range.
    pub fn header_value(&self) -> String {
        format!("bytes={}-{}", self.start, self.end)
    }

    /// The `Content-Range` of this range of an object of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Option<ByteRange> {
        Some(ByteRange { start, end })
    }

    #[test]
    fn get_ranges_as_s3_reads_them() {
        let p = |s: &str| ByteRange::parse_for_get(s, 100);
        assert_eq!(p("bytes=0-9"), Ok(r(0, 9)));
        assert_eq!(p("bytes=90-"), Ok(r(90, 99)));
        assert_eq!(p("bytes=-10"), Ok(r(90, 99)));
        assert_eq!(p("bytes=-1000"), Ok(r(0, 99)));
        assert_eq!(p("bytes=50-1000"), Ok(r(50, 99)));
        assert_eq!(p("bytes=100-"), Err(Unsatisfiable));
        assert_eq!(p("bytes=-0"), Err(Unsatisfiable));
        assert_eq!(p("bytes=0-1,5-6"), Ok(None));
        assert_eq!(p("items=0-1"), Ok(None));
        assert_eq!(p("bytes=5-2"), Ok(None));
        assert_eq!(ByteRange::parse_for_get("bytes=0-0", 0), Err(Unsatisfiable));
    }

    #[test]
    fn exact_ranges_need_both_ends_in_order() {
        assert_eq!(ByteRange::parse_exact("bytes=3-7"), r(3, 7));
        assert_eq!(ByteRange::parse_exact(" bytes=0-0 "), r(0, 0));
        assert_eq!(ByteRange::parse_exact("bytes=7-3"), None);
        assert_eq!(ByteRange::parse_pair("bytes=7-3"), Some((7, 3)));
        assert_eq!(ByteRange::parse_exact("bytes=3-"), None);
        assert_eq!(ByteRange::parse_exact("bytes=-3"), None);
        let range = ByteRange { start: 3, end: 7 };
        assert_eq!(ByteRange::parse_exact(&range.header_value()), Some(range));
        assert_eq!(range.len(), 5);
        assert_eq!(range.content_range(10), "bytes 3-7/10");
    }
}
