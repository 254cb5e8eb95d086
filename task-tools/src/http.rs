//! A minimal HTTP/1.1 client over the task's Unix socket: one request per
//! connection, the response body streamed (by Content-Length, chunked, or
//! to the end of the connection). Header lines are bounded.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// Longest status or header line accepted from the endpoint.
const MAX_LINE: usize = 16 * 1024;
/// Headers accepted in one response.
const MAX_HEADERS: usize = 100;

pub struct Response {
    pub status: u16,
    body: Body,
}

enum Body {
    Length(io::Take<BufReader<UnixStream>>),
    Chunked {
        r: BufReader<UnixStream>,
        left: u64,
        done: bool,
    },
    ToEnd(BufReader<UnixStream>),
}

fn read_line(r: &mut BufReader<UnixStream>) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the endpoint closed the connection",
        ));
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::other("a response line is too long"));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Sends `method target` with `headers` and a body read from `body` as it
/// comes (chunked), each piece also written to `tee` if given.
pub fn request_streaming(
    socket: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &mut dyn Read,
    mut tee: Option<&mut dyn Write>,
) -> io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let reader = s.try_clone()?;
    let mut send = || -> io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(t) = tee.as_mut() {
                t.write_all(&buf[..n])?;
            }
            s.write_all(format!("{n:x}\r\n").as_bytes())?;
            s.write_all(&buf[..n])?;
            s.write_all(b"\r\n")?;
        }
        if let Some(t) = tee.as_mut() {
            t.flush()?;
        }
        s.write_all(b"0\r\n\r\n")
    };
    match send() {
        Ok(()) => read_response(BufReader::new(reader)),
        // The endpoint may have answered (a refusal) and closed before
        // the body was all sent: its answer says why.
        Err(e) => read_response(BufReader::new(reader)).map_err(|_| e),
    }
}

/// Sends `method path?query` with `headers` and `body` to the socket.
pub fn request(
    socket: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(BufReader::new(s))
}

fn read_response(mut r: BufReader<UnixStream>) -> io::Result<Response> {
    let status_line = read_line(&mut r)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {status_line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    for _ in 0..MAX_HEADERS {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            let body = match (chunked, length) {
                (true, _) => Body::Chunked {
                    r,
                    left: 0,
                    done: false,
                },
                (false, Some(n)) => Body::Length(r.take(n)),
                (false, None) => Body::ToEnd(r),
            };
            return Ok(Response { status, body });
        }
        let (k, v) = line.split_once(':').unwrap_or((&line, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    Err(io::Error::other("too many response headers"))
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.body {
            Body::Length(r) => r.read(buf),
            Body::ToEnd(r) => r.read(buf),
            Body::Chunked { r, left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let size = read_line(r)?;
                    let size = size.split(';').next().unwrap_or("").trim();
                    *left = u64::from_str_radix(size, 16)
                        .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
                    if *left == 0 {
                        *done = true;
                        return Ok(0);
                    }
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a chunk was cut short",
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    read_line(r)?;
                }
                Ok(n)
            }
        }
    }
}

impl Response {
    /// The whole body, at most `max` bytes (error documents, listings).
    pub fn text(mut self, max: usize) -> io::Result<String> {
        let mut out = Vec::new();
        self.by_ref().take(max as u64 + 1).read_to_end(&mut out)?;
        if out.len() > max {
            return Err(io::Error::other("the response is too large"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
