//! An independent, minimal SigV4 signer for crafting raw (and deliberately
//! wrong) requests in tests. Written from the AWS specification, separately
//! from the gateway's verifier, so the two check each other.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-_.~".contains(c) || (keep_slash && c == '/') {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Signer {
    pub access_key: String,
    pub secret: String,
    pub region: String,
}

pub struct Signed {
    /// Headers to send, including Authorization and x-amz-date.
    pub headers: Vec<(String, String)>,
    pub signature: String,
    pub amz_date: String,
    pub scope: String,
    pub key: Vec<u8>,
}

impl Signer {
    pub fn new(access_key: &str, secret: &str) -> Self {
        Self {
            access_key: access_key.into(),
            secret: secret.into(),
            region: "us-east-1".into(),
        }
    }

    pub fn signing_key(&self, date: &str) -> Vec<u8> {
        let k = hmac(format!("AWS4{}", self.secret).as_bytes(), date);
        let k = hmac(&k, &self.region);
        let k = hmac(&k, "s3");
        hmac(&k, "aws4_request")
    }

    /// Signs a request. `path` is the unencoded path, `query` pairs are
    /// unencoded; `headers` must include `host`.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        payload_hash: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Signed {
        let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
        let date = time.format("%Y%m%d").to_string();
        let mut hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        hs.push(("x-amz-date".into(), amz_date.clone()));
        hs.push(("x-amz-content-sha256".into(), payload_hash.into()));
        hs.sort();
        let signed_headers = hs
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, false), encode(v, false)))
            .collect();
        q.sort();
        let cq = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let ch: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let creq = format!(
            "{method}\n{}\n{cq}\n{ch}\n{signed_headers}\n{payload_hash}",
            encode(path, true)
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(creq.as_bytes())
        );
        let key = self.signing_key(&date);
        let signature = hex::encode(hmac(&key, &sts));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        let mut out: Vec<(String, String)> = hs.into_iter().filter(|(k, _)| k != "host").collect();
        out.push(("authorization".into(), auth));
        Signed {
            headers: out,
            signature,
            amz_date,
            scope,
            key,
        }
    }

    /// A presigned URL for `method` on `path`, valid `expires` seconds from `time`.
    pub fn presign(
        &self,
        endpoint: &str,
        method: &str,
        path: &str,
        expires: u64,
        time: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
        let date = time.format("%Y%m%d").to_string();
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let cred = format!("{}/{scope}", self.access_key);
        let exp = expires.to_string();
        let mut q = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", cred.as_str()),
            ("X-Amz-Date", amz_date.as_str()),
            ("X-Amz-Expires", exp.as_str()),
            ("X-Amz-SignedHeaders", "host"),
        ]
        .map(|(k, v)| (encode(k, false), encode(v, false)));
        q.sort();
        let cq = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let creq = format!(
            "{method}\n{}\n{cq}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
            encode(path, true)
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(creq.as_bytes())
        );
        let sig = hex::encode(hmac(&self.signing_key(&date), &sts));
        format!(
            "{endpoint}{}?{cq}&X-Amz-Signature={sig}",
            encode(path, true)
        )
    }
}

/// Frames `data` as an `aws-chunked` body with chunk signatures.
pub fn chunked_body(signed: &Signed, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = signed.signature.clone();
    let mut pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    pieces.push(&[]);
    for piece in pieces {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{prev}\n{EMPTY_SHA256}\n{}",
            signed.amz_date,
            signed.scope,
            sha256_hex(piece)
        );
        let sig = hex::encode(hmac(&signed.key, &sts));
        out.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
        prev = sig;
    }
    out
}

/// SigV2, written from AWS's documentation: base64 HMAC-SHA1 of the
/// string to sign (method, Content-MD5, Content-Type, date or expiry,
/// the `x-amz-*` headers, the resource with its sub-resources).
pub fn sign_v2(secret: &str, string_to_sign: &str) -> String {
    use base64::Engine;
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}
