//! A tiny SigV4-signing HTTP client for the insitu API, built on aws-sigv4.

use std::time::SystemTime;

use anyhow::{anyhow, Context, Result};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

pub struct SignedClient {
    pub endpoint: String,
    access_key: String,
    secret_key: String,
    http: reqwest::Client,
}

impl SignedClient {
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a signed request and returns the status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        self.call_with(method, path, body, &[]).await
    }

    /// The last `bytes` of an object (`bucket/key`, URL-safe), as text.
    pub async fn object_tail(&self, loc: &str, bytes: u64) -> Result<(u16, String)> {
        let range = format!("bytes=-{bytes}");
        let (status, body) = self
            .call_with("GET", &format!("/{loc}"), None, &[("range", &range)])
            .await?;
        let text = match body {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        };
        Ok((status, text))
    }

    /// `call`, with extra (signed) headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        extra: &[(&str, &str)],
    ) -> Result<(u16, serde_json::Value)> {
        let resp = self.send(method, path, body, extra).await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    /// Sends a signed request and returns the response as it comes, for
    /// a body read as a stream.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        extra: &[(&str, &str)],
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.endpoint);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let identity =
            Credentials::new(&self.access_key, &self.secret_key, None, None, "insitu-cli").into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        // The gateway checks the region a request is signed for.
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_string());
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| anyhow!("cannot sign request: {e}"))?
            .into();
        let host = reqwest::Url::parse(&url)
            .with_context(|| format!("bad endpoint URL {url}"))?
            .host_str()
            .map(str::to_string)
            .unwrap_or_default();
        let port = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.port())
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let host_header = format!("{host}{port}");
        let mut headers = vec![
            ("host", host_header.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let signable = SignableRequest::new(
            method,
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&bytes),
        )
        .map_err(|e| anyhow!("cannot sign request: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| anyhow!("cannot sign request: {e}"))?
            .into_parts();
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, &url)
            .header("content-type", "application/json")
            .body(bytes);
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        req.send()
            .await
            .with_context(|| format!("cannot reach {}", self.endpoint))
    }
}
