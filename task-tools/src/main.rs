//! `insitu-task`: the tools on every task's PATH at `/insitu/bin`, one
//! static binary called by the name of the link it runs as:
//! - `mget BUCKET/KEY...`: objects to stdout;
//! - `mls BUCKET[/PREFIX]`: `bucket/key` of each object, one per line;
//! - `mpipe [-r N] [NAME]`: stdin becomes the task's named output NAME
//!   (or an automatic name), routed to reducer N of the next phase if given;
//! - `mtee [-r N] NAME`: the same, while copying stdin to stdout;
//! - `mcat [-r N] BUCKET/KEY...`: each object becomes an output of the
//!   task by reference, with no bytes copied (a copy into the output place,
//!   `x-amz-copy-source`): the next phase reads the version it names now;
//! - `insitu-task relay ADDR SOCKET`: the container's first process; it
//!   relays the task's S3 endpoint (`AWS_ENDPOINT_URL`, TCP on the
//!   container's loopback) to the node's Unix socket, and reaps orphans.
//!
//! The helpers talk to the node's task endpoint over its socket, signed
//! with the task's own credentials from the environment. A refusal exits
//! non-zero with one line: what was refused and why.

mod http;
mod relay;
mod sign;

use std::io::{Read, Write};
use std::process::ExitCode;

/// Where the node's endpoint is inside every task container.
const DEFAULT_SOCKET: &str = "/insitu/sock/s3.sock";
/// Largest error document or listing page read.
const MAX_TEXT: usize = 4 << 20;

struct Endpoint {
    socket: String,
    host: String,
    creds: sign::Credentials,
}

impl Endpoint {
    fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let access_key =
            var("AWS_ACCESS_KEY_ID").ok_or("no AWS_ACCESS_KEY_ID: not inside an insitu task?")?;
        let secret_key = var("AWS_SECRET_ACCESS_KEY").ok_or("no AWS_SECRET_ACCESS_KEY")?;
        let host = var("INSITU_S3_ENDPOINT")
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .unwrap_or_else(|| "127.0.0.1".to_string());
        Ok(Self {
            socket: var("INSITU_S3_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.to_string()),
            host,
            creds: sign::Credentials {
                access_key,
                secret_key,
                region: var("AWS_DEFAULT_REGION").unwrap_or_else(|| "us-east-1".to_string()),
            },
        })
    }

    fn signed(
        &self,
        method: &str,
        path: &str,
        query: &str,
        payload: &str,
    ) -> Vec<(String, String)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut headers = sign::sign(&self.creds, method, path, query, &self.host, payload, now);
        headers.push(("host".into(), self.host.clone()));
        headers
    }

    /// A signed GET of `path` (encoded) with a canonical `query`.
    fn get(&self, path: &str, query: &str) -> Result<http::Response, String> {
        let headers = self.signed("GET", path, query, sign::EMPTY_SHA256);
        let target = match query {
            "" => path.to_string(),
            q => format!("{path}?{q}"),
        };
        let resp = http::request(&self.socket, "GET", &target, &headers, &[])
            .map_err(|e| format!("cannot reach the task endpoint at {}: {e}", self.socket))?;
        Self::checked(resp)
    }

    /// A PUT of `path` whose body is streamed from `body` (and copied to
    /// `tee`), unsigned: the signature covers the request, not the bytes.
    fn put_stream(
        &self,
        path: &str,
        reducer: Option<u32>,
        body: &mut dyn Read,
        tee: Option<&mut dyn Write>,
    ) -> Result<(), String> {
        let mut headers = self.signed("PUT", path, "", "UNSIGNED-PAYLOAD");
        if let Some(r) = reducer {
            headers.push(("x-insitu-reducer".into(), r.to_string()));
        }
        let resp = http::request_streaming(&self.socket, "PUT", path, &headers, body, tee)
            .map_err(|e| {
                format!(
                    "cannot write through the task endpoint at {}: {e}",
                    self.socket
                )
            })?;
        Self::checked(resp).map(|_| ())
    }

    /// A copy of `source` (`bucket/key`) into `path`: an output by
    /// reference.
    fn copy(&self, path: &str, source: &str, reducer: Option<u32>) -> Result<(), String> {
        let mut headers = self.signed_with(
            "PUT",
            path,
            &[("x-amz-copy-source", &sign::uri_encode(source, true))],
        );
        if let Some(r) = reducer {
            headers.push(("x-insitu-reducer".into(), r.to_string()));
        }
        let resp = http::request(&self.socket, "PUT", path, &headers, &[])
            .map_err(|e| format!("cannot reach the task endpoint at {}: {e}", self.socket))?;
        Self::checked(resp).map(|_| ())
    }

    /// Headers for a request with no body, signing `extra` too (every
    /// `x-amz-*` header sent must be signed).
    fn signed_with(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut headers = sign::sign_with(
            &self.creds,
            method,
            path,
            "",
            &self.host,
            sign::EMPTY_SHA256,
            extra,
            now,
        );
        headers.push(("host".into(), self.host.clone()));
        headers
    }

    fn checked(resp: http::Response) -> Result<http::Response, String> {
        if resp.status / 100 == 2 {
            return Ok(resp);
        }
        let status = resp.status;
        let doc = resp.text(MAX_TEXT).unwrap_or_default();
        let code = xml_values(&doc, "Code").into_iter().next();
        let message = xml_values(&doc, "Message").into_iter().next();
        Err(match (code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => format!("HTTP {status}"),
        })
    }
}

/// The unescaped text of every `<tag>...</tag>` in a flat XML document.
fn xml_values(doc: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&#xD;", "\r")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

fn split_location(loc: &str) -> (&str, &str) {
    let loc = loc.strip_prefix("s3://").unwrap_or(loc);
    loc.split_once('/').unwrap_or((loc, ""))
}

fn mget(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return Err("usage: mget BUCKET/KEY...".into());
    }
    let ep = Endpoint::from_env()?;
    let stdout = std::io::stdout();
    for loc in args {
        let (bucket, key) = split_location(loc);
        if bucket.is_empty() || key.is_empty() {
            return Err(format!("{loc}: give BUCKET/KEY"));
        }
        let path = format!("/{bucket}/{}", sign::uri_encode(key, true));
        let mut resp = ep.get(&path, "").map_err(|e| format!("{loc}: {e}"))?;
        let mut out = stdout.lock();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = resp.read(&mut buf).map_err(|e| format!("{loc}: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("{loc}: writing: {e}"))?;
        }
        out.flush().map_err(|e| format!("{loc}: writing: {e}"))?;
    }
    Ok(())
}

fn mls(args: &[String]) -> Result<(), String> {
    let [loc] = args else {
        return Err("usage: mls BUCKET[/PREFIX]".into());
    };
    let (bucket, prefix) = split_location(loc);
    if bucket.is_empty() {
        return Err("usage: mls BUCKET[/PREFIX]".into());
    }
    let ep = Endpoint::from_env()?;
    let mut token: Option<String> = None;
    let mut out = std::io::stdout().lock();
    loop {
        // Already in canonical order: continuation-token, list-type, prefix.
        let mut query = String::new();
        if let Some(t) = &token {
            query.push_str(&format!(
                "continuation-token={}&",
                sign::uri_encode(t, false)
            ));
        }
        query.push_str(&format!(
            "list-type=2&prefix={}",
            sign::uri_encode(prefix, false)
        ));
        let doc = ep
            .get(&format!("/{bucket}"), &query)
            .and_then(|r| r.text(MAX_TEXT).map_err(|e| e.to_string()))
            .map_err(|e| format!("{loc}: {e}"))?;
        for key in xml_values(&doc, "Key") {
            writeln!(out, "{bucket}/{key}").map_err(|e| format!("writing: {e}"))?;
        }
        let truncated = xml_values(&doc, "IsTruncated").first().map(String::as_str) == Some("true");
        token = xml_values(&doc, "NextContinuationToken").into_iter().next();
        if !truncated || token.is_none() {
            return Ok(());
        }
    }
}

/// `[-r N] ARG...`: the reducer, if given, and the other arguments.
fn reducer_and_args(args: &[String], usage: &str) -> Result<(Option<u32>, Vec<String>), String> {
    let (mut reducer, mut rest) = (None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-r" => {
                let n = it.next().ok_or(usage)?;
                reducer = Some(
                    n.parse::<u32>()
                        .map_err(|_| format!("-r {n}: not a reducer number"))?,
                );
            }
            _ if a.starts_with('-') => return Err(usage.to_string()),
            _ => rest.push(a.clone()),
        }
    }
    Ok((reducer, rest))
}

/// `[-r N] [NAME]`: the reducer and the name, if given.
fn output_args(args: &[String], usage: &str) -> Result<(Option<u32>, Option<String>), String> {
    let (reducer, mut names) = reducer_and_args(args, usage)?;
    if names.len() > 1 {
        return Err(usage.to_string());
    }
    Ok((reducer, names.pop()))
}

/// Streams stdin into the task's named output `name` (or an automatic
/// one), copying it to stdout too with `tee`.
fn write_output(args: &[String], tee: bool) -> Result<(), String> {
    let usage = if tee {
        "usage: mtee [-r N] NAME"
    } else {
        "usage: mpipe [-r N] [NAME]"
    };
    let (reducer, name) = output_args(args, usage)?;
    let name = match (name, tee) {
        (Some(n), _) => n,
        (None, true) => return Err(usage.into()),
        (None, false) => {
            let task = std::env::var("INSITU_TASK_ID").unwrap_or_else(|_| "task".into());
            format!("{task}.{}", std::process::id())
        }
    };
    let place = std::env::var("INSITU_OUTPUT_PLACE")
        .map_err(|_| "no INSITU_OUTPUT_PLACE: this task writes no named outputs")?;
    let (bucket, prefix) = split_location(&place);
    let ep = Endpoint::from_env()?;
    let path = format!(
        "/{bucket}/{}",
        sign::uri_encode(&format!("{prefix}{name}"), true)
    );
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let result = match tee {
        true => {
            let mut out = std::io::stdout().lock();
            ep.put_stream(&path, reducer, &mut input, Some(&mut out))
        }
        false => ep.put_stream(&path, reducer, &mut input, None),
    };
    result.map_err(|e| format!("{name}: {e}"))
}

/// Emits each `bucket/key` as an output of the task, by reference: named
/// by its location (so that one object routes the same way from any
/// task), to reducer N with `-r`.
fn mcat(args: &[String]) -> Result<(), String> {
    let usage = "usage: mcat [-r N] BUCKET/KEY...";
    let (reducer, objects) = reducer_and_args(args, usage)?;
    let objects: Vec<String> = objects
        .iter()
        .map(|o| o.trim_start_matches('/').to_string())
        .collect();
    if objects.is_empty() {
        return Err(usage.to_string());
    }
    let place = std::env::var("INSITU_OUTPUT_PLACE")
        .map_err(|_| "no INSITU_OUTPUT_PLACE: this task writes no named outputs")?;
    let (bucket, prefix) = split_location(&place);
    let ep = Endpoint::from_env()?;
    for loc in objects {
        let (b, k) = split_location(&loc);
        if b.is_empty() || k.is_empty() {
            return Err(format!("{loc}: not bucket/key"));
        }
        let path = format!(
            "/{bucket}/{}",
            sign::uri_encode(&format!("{prefix}{loc}"), true)
        );
        ep.copy(&path, &loc, reducer)
            .map_err(|e| format!("{loc}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let (cmd, rest) = match called.as_str() {
        "insitu-task" => match args.get(1) {
            Some(c) => (c.clone(), &args[2..]),
            None => (String::new(), &args[1..]),
        },
        _ => (called.clone(), &args[1..]),
    };
    let result = match cmd.as_str() {
        "mget" => mget(rest),
        "mls" => mls(rest),
        "mpipe" => write_output(rest, false),
        "mtee" => write_output(rest, true),
        "mcat" => mcat(rest),
        "relay" => relay::run(rest),
        _ => Err("usage: insitu-task mget|mls|mpipe|mtee|mcat|relay ...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_are_unescaped() {
        let doc = "<R><Key>a&amp;b</Key><Key>&lt;c&gt;</Key><IsTruncated>false</IsTruncated></R>";
        assert_eq!(xml_values(doc, "Key"), ["a&b", "<c>"]);
        assert_eq!(xml_values(doc, "IsTruncated"), ["false"]);
        assert!(xml_values(doc, "Missing").is_empty());
    }
}
