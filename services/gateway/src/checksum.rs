//! Flexible checksums (`x-amz-checksum-*`): computed while a body streams,
//! and combined from parts for a multipart object, either over the parts'
//! checksums (COMPOSITE, `-N` at the end) or, for the CRCs, into the
//! checksum of the whole object's bytes (FULL_OBJECT) without reading them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use insitu_catalog::{ChecksumAlgorithm, ChecksumType};
use sha2::{Digest, Sha256};

/// The request or response header that carries `alg`'s value.
pub fn header_name(alg: ChecksumAlgorithm) -> &'static str {
    match alg {
        ChecksumAlgorithm::Crc32 => "x-amz-checksum-crc32",
        ChecksumAlgorithm::Crc32c => "x-amz-checksum-crc32c",
        ChecksumAlgorithm::Crc64nvme => "x-amz-checksum-crc64nvme",
        ChecksumAlgorithm::Sha1 => "x-amz-checksum-sha1",
        ChecksumAlgorithm::Sha256 => "x-amz-checksum-sha256",
    }
}

/// The algorithm a `x-amz-checksum-<alg>` header name stands for.
pub fn from_header_name(name: &str) -> Option<ChecksumAlgorithm> {
    let alg = ChecksumAlgorithm::parse(name.strip_prefix("x-amz-checksum-")?)?;
    (header_name(alg) == name).then_some(alg)
}

/// The element name in XML bodies (`ChecksumSHA256`, `ChecksumCRC64NVME`).
pub fn xml_name(alg: ChecksumAlgorithm) -> &'static str {
    match alg {
        ChecksumAlgorithm::Crc32 => "ChecksumCRC32",
        ChecksumAlgorithm::Crc32c => "ChecksumCRC32C",
        ChecksumAlgorithm::Crc64nvme => "ChecksumCRC64NVME",
        ChecksumAlgorithm::Sha1 => "ChecksumSHA1",
        ChecksumAlgorithm::Sha256 => "ChecksumSHA256",
    }
}

/// The type an upload gets when it names none: FULL_OBJECT for CRC64NVME
/// (the only type S3 allows for it), COMPOSITE for the others. `None` if
/// the pair is one S3 refuses (a SHA cannot be combined into a full-object
/// checksum; CRC64NVME has no composite form).
pub fn upload_type(alg: ChecksumAlgorithm, asked: Option<ChecksumType>) -> Option<ChecksumType> {
    match (alg, asked) {
        (ChecksumAlgorithm::Crc64nvme, None | Some(ChecksumType::FullObject)) => {
            Some(ChecksumType::FullObject)
        }
        (ChecksumAlgorithm::Crc64nvme, Some(ChecksumType::Composite)) => None,
        (a, Some(ChecksumType::FullObject)) if !a.combines() => None,
        (_, t) => Some(t.unwrap_or(ChecksumType::Composite)),
    }
}

/// A running checksum over streamed bytes.
pub enum Checksummer {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Checksummer {
    pub fn new(alg: ChecksumAlgorithm) -> Self {
        match alg {
            ChecksumAlgorithm::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Self::Crc32c(0),
            ChecksumAlgorithm::Crc64nvme => Self::Crc64(crc64fast_nvme::Digest::new()),
            ChecksumAlgorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(data),
            Self::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Self::Crc64(h) => h.write(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Self::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Self::Crc32c(c) => c.to_be_bytes().to_vec(),
            Self::Crc64(h) => h.sum64().to_be_bytes().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        }
    }

    pub fn finish_base64(self) -> String {
        B64.encode(self.finish())
    }
}

/// Why parts' checksums could not be combined.
#[derive(Debug, PartialEq, Eq)]
pub enum CombineError {
    /// A part has no checksum of the upload's algorithm.
    Missing(u32),
    /// A stored value is not valid base64 of the algorithm's width.
    Corrupt(u32),
}

fn decode(alg: ChecksumAlgorithm, value: &str) -> Option<Vec<u8>> {
    let raw = B64.decode(value).ok()?;
    let width = match alg {
        ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
        ChecksumAlgorithm::Crc64nvme => 8,
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    };
    (raw.len() == width).then_some(raw)
}

/// One part as Complete combines it: its number, size and checksum.
pub struct PartSum<'a> {
    pub number: u32,
    pub size: u64,
    pub checksum: Option<&'a str>,
}

/// The object checksum of a multipart upload from its parts' checksums.
pub fn combine(
    alg: ChecksumAlgorithm,
    kind: ChecksumType,
    parts: &[PartSum],
) -> Result<String, CombineError> {
    let mut raws = Vec::with_capacity(parts.len());
    for p in parts {
        let v = p.checksum.ok_or(CombineError::Missing(p.number))?;
        raws.push(decode(alg, v).ok_or(CombineError::Corrupt(p.number))?);
    }
    match kind {
        ChecksumType::Composite => {
            let mut c = Checksummer::new(alg);
            for r in &raws {
                c.update(r);
            }
            Ok(format!("{}-{}", c.finish_base64(), parts.len()))
        }
        ChecksumType::FullObject => {
            let crc = Crc::of(alg).ok_or(CombineError::Corrupt(0))?;
            let width = crc.width;
            let mut combiner = Combiner::new(crc);
            let mut whole: Option<u64> = None;
            for (p, raw) in parts.iter().zip(&raws) {
                let value = raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
                whole = Some(match whole {
                    None => value,
                    Some(w) => combiner.combine(w, value, p.size),
                });
            }
            let w = whole.unwrap_or(0);
            let bytes = w.to_be_bytes();
            Ok(B64.encode(&bytes[8 - width / 8..]))
        }
    }
}

/// A reflected CRC whose initial value and final XOR are all ones (CRC32,
/// CRC32C and CRC64/NVME are), for which crc(A‖B) is crc(A) advanced over
/// len(B) zero bytes, XOR crc(B). Advancing is a multiplication by a power
/// of the GF(2) matrix of one zero bit, found by squaring; a matrix is the
/// images of the basis vectors, one `u64` per bit of the CRC.
struct Crc {
    poly: u64,
    width: usize,
}

impl Crc {
    fn of(alg: ChecksumAlgorithm) -> Option<Self> {
        let (poly, width) = match alg {
            ChecksumAlgorithm::Crc32 => (0xEDB8_8320, 32),
            ChecksumAlgorithm::Crc32c => (0x82F6_3B78, 32),
            ChecksumAlgorithm::Crc64nvme => (0x9A6C_9329_AC4B_C9B5, 64),
            _ => return None,
        };
        Some(Self { poly, width })
    }

    fn times(&self, mat: &[u64; 64], mut vec: u64) -> u64 {
        let mut sum = 0;
        let mut i = 0;
        while vec != 0 && i < self.width {
            if vec & 1 != 0 {
                sum ^= mat[i];
            }
            vec >>= 1;
            i += 1;
        }
        sum
    }

    fn square(&self, mat: &[u64; 64]) -> [u64; 64] {
        let mut out = [0u64; 64];
        for (n, o) in out.iter_mut().enumerate().take(self.width) {
            *o = self.times(mat, mat[n]);
        }
        out
    }

    /// The matrix `a` after `b`: applying it is applying `b`, then `a`.
    fn compose(&self, a: &[u64; 64], b: &[u64; 64]) -> [u64; 64] {
        let mut out = [0u64; 64];
        for (n, o) in out.iter_mut().enumerate().take(self.width) {
            *o = self.times(a, b[n]);
        }
        out
    }

    /// The operator that advances a CRC over `len` zero bytes.
    fn zeros(&self, mut len: u64) -> [u64; 64] {
        let mut op = [0u64; 64];
        for (n, o) in op.iter_mut().enumerate().take(self.width) {
            *o = 1 << n;
        }
        // One zero bit, then squared to one zero byte (eight bits).
        let mut power = [0u64; 64];
        power[0] = self.poly;
        for (n, p) in power.iter_mut().enumerate().take(self.width).skip(1) {
            *p = 1 << (n - 1);
        }
        for _ in 0..3 {
            power = self.square(&power);
        }
        while len != 0 {
            if len & 1 != 0 {
                op = self.compose(&power, &op);
            }
            len >>= 1;
            if len != 0 {
                power = self.square(&power);
            }
        }
        op
    }
}

/// Combines the CRCs of consecutive parts, computing the zero-byte operator
/// once per distinct part size (parts mostly share one), so that even
/// 10,000 parts cost little.
struct Combiner {
    crc: Crc,
    operators: std::collections::HashMap<u64, [u64; 64]>,
}

impl Combiner {
    fn new(crc: Crc) -> Self {
        Self {
            crc,
            operators: std::collections::HashMap::new(),
        }
    }

    /// crc(A‖B) from crc(A), crc(B) and len(B) in bytes.
    fn combine(&mut self, crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
        if len_b == 0 {
            return crc_a;
        }
        let crc = &self.crc;
        let op = self
            .operators
            .entry(len_b)
            .or_insert_with(|| crc.zeros(len_b));
        crc.times(op, crc_a) ^ crc_b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut c = Checksummer::new(alg);
        c.update(data);
        c.finish_base64()
    }

    #[test]
    fn full_object_crcs_combine_to_the_crc_of_the_concatenation() {
        let parts: [&[u8]; 4] = [b"hello, ", b"", b"world", &[7u8; 1000]];
        let whole: Vec<u8> = parts.concat();
        for alg in [
            ChecksumAlgorithm::Crc32,
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Crc64nvme,
        ] {
            let sums: Vec<String> = parts.iter().map(|p| sum(alg, p)).collect();
            let ps: Vec<PartSum> = parts
                .iter()
                .zip(&sums)
                .enumerate()
                .map(|(i, (p, s))| PartSum {
                    number: i as u32 + 1,
                    size: p.len() as u64,
                    checksum: Some(s),
                })
                .collect();
            assert_eq!(
                combine(alg, ChecksumType::FullObject, &ps).unwrap(),
                sum(alg, &whole),
                "{alg:?}"
            );
        }
    }

    /// The values ceph/s3-tests expects for three 5 MiB parts of 'A', 'B'
    /// and 'C' (its `test_multipart_use_cksum_helper_*`).
    #[test]
    fn s3_tests_vectors() {
        let mib5 = 5 * 1024 * 1024;
        let bodies: Vec<Vec<u8>> = [b'A', b'B', b'C'].iter().map(|c| vec![*c; mib5]).collect();
        for (alg, kind, want_parts, want) in [
            (
                ChecksumAlgorithm::Sha256,
                ChecksumType::Composite,
                [
                    "275VF5loJr1YYawit0XSHREhkFXYkkPKGuoK0x9VKxI=",
                    "mrHwOfjTL5Zwfj74F05HOQGLdUb7E5szdCbxgUSq6NM=",
                    "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow=",
                ],
                "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3",
            ),
            (
                ChecksumAlgorithm::Crc64nvme,
                ChecksumType::FullObject,
                ["L/E4WYn8v98=", "xW1l19VobYM=", "cK5MnNaWrW4="],
                "i+6LR0y3eFo=",
            ),
            (
                ChecksumAlgorithm::Crc32,
                ChecksumType::FullObject,
                ["JRTCyQ==", "QoZTGg==", "YAgjqw=="],
                "WgDhBQ==",
            ),
            (
                ChecksumAlgorithm::Crc32c,
                ChecksumType::FullObject,
                ["MDaLrw==", "TH4EZg==", "Z7mBIQ=="],
                "xU+Krw==",
            ),
            (
                ChecksumAlgorithm::Sha1,
                ChecksumType::Composite,
                [
                    "iIaTCGbm+vdVjNqIMF2S0T7ibMk=",
                    "LS/TJ32bAVKEwRu+sE3X7awh/lk=",
                    "6DDwovUaHwrKNXDMzOGbuvj9kxI=",
                ],
                "sizjvY4eud3MrcHdZM3cQ/ol39o=-3",
            ),
        ] {
            let sums: Vec<String> = bodies.iter().map(|b| sum(alg, b)).collect();
            assert_eq!(sums, want_parts, "{alg:?}");
            let ps: Vec<PartSum> = sums
                .iter()
                .enumerate()
                .map(|(i, s)| PartSum {
                    number: i as u32 + 1,
                    size: mib5 as u64,
                    checksum: Some(s),
                })
                .collect();
            assert_eq!(combine(alg, kind, &ps).unwrap(), want, "{alg:?}");
        }
    }

    #[test]
    fn missing_and_corrupt_part_checksums_are_named() {
        let ps = [PartSum {
            number: 2,
            size: 1,
            checksum: None,
        }];
        assert_eq!(
            combine(ChecksumAlgorithm::Sha256, ChecksumType::Composite, &ps),
            Err(CombineError::Missing(2))
        );
        let ps = [PartSum {
            number: 1,
            size: 1,
            checksum: Some("AAAA"),
        }];
        assert_eq!(
            combine(ChecksumAlgorithm::Crc32, ChecksumType::FullObject, &ps),
            Err(CombineError::Corrupt(1))
        );
    }

    #[test]
    fn upload_types_follow_s3() {
        use ChecksumAlgorithm::*;
        use ChecksumType::*;
        assert_eq!(upload_type(Crc64nvme, None), Some(FullObject));
        assert_eq!(upload_type(Crc64nvme, Some(Composite)), None);
        assert_eq!(upload_type(Sha256, None), Some(Composite));
        assert_eq!(upload_type(Sha256, Some(FullObject)), None);
        assert_eq!(upload_type(Crc32, Some(FullObject)), Some(FullObject));
        assert_eq!(upload_type(Crc32c, None), Some(Composite));
        assert_eq!(from_header_name("x-amz-checksum-crc32c"), Some(Crc32c));
        assert_eq!(from_header_name("x-amz-checksum-algorithm"), None);
        assert_eq!(from_header_name("x-amz-checksum-SHA1"), None);
    }
}
