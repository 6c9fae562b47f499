//! Helpers of the edge tests: a server with edge settings of the test's
//! choosing, requests signed over one body and sent with another (or with
//! headers added after signing), and raw sockets for what no well-behaved
//! client does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ember_invoke_router::config::ServeConfig;
use ember_invoke_router::server::{self, RunningServer};
use ember_invoke_router::sigv4;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, Reply, KEY_A, SECRET_A};

/// Starts a server on `data` with the tests' two tenants, after `tune`.
pub async fn start(data: &Path, tune: impl FnOnce(&mut ServeConfig)) -> RunningServer {
    std::fs::create_dir_all(data).unwrap();
    let mut cfg = common::config(data);
    tune(&mut cfg);
    server::start(cfg).await.unwrap()
}

/// Headers of a request signed by tenant A over `signed_body`; `extra`
/// headers are signed too.
pub fn signed_headers(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    signed_body: &[u8],
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = vec![("host".into(), addr.to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    sigv4::sign_headers(
        method,
        uri,
        &mut headers,
        signed_body,
        &sigv4::ClientKey {
            access_key_id: KEY_A,
            secret: SECRET_A,
            region: "us-east-1",
            service: "lambda",
        },
        SystemTime::now(),
    )
    .unwrap();
    headers
}

/// Sends a request with exactly these headers and body over a new
/// connection (hyper's client: Content-Length from the body).
pub async fn send_with(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let resp = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    reply_of(resp).await
}

/// A response read whole.
pub async fn reply_of(resp: hyper::Response<hyper::body::Incoming>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A signed JSON call of tenant A (one request on a new connection).
pub async fn call(addr: SocketAddr, method: &str, uri: &str, body: &[u8]) -> Reply {
    let headers = signed_headers(addr, method, uri, body, &[]);
    send_with(addr, method, uri, &headers, body.to_vec()).await
}

/// A request head as bytes: request line, headers, blank line.
pub fn head_bytes(method: &str, uri: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("{method} {uri} HTTP/1.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// What came back on a raw socket.
#[derive(Debug)]
pub struct RawReply {
    /// The status line and headers.
    pub head: String,
    /// The body (Content-Length bytes, or up to EOF).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads one response (head and Content-Length body) within `within`.
pub async fn read_reply(stream: &mut TcpStream, within: Duration) -> RawReply {
    tokio::time::timeout(within, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut reply = RawReply {
                    head,
                    body: buf[end + 4..].to_vec(),
                };
                let len: usize = reply
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                while reply.body.len() < len {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.body.extend_from_slice(&chunk[..n]),
                    }
                }
                return reply;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    return RawReply {
                        head: String::from_utf8_lossy(&buf).into_owned(),
                        body: Vec::new(),
                    }
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {within:?}"))
}

/// Waits (at most `within`) for the server to close `stream`; returns how
/// many bytes it sent meanwhile.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> usize {
    let mut got = 0;
    let mut chunk = [0u8; 4096];
    let wait = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    });
    wait.await
        .unwrap_or_else(|_| panic!("the server kept the connection open for {within:?}"));
    got
}

/// Writes all of `bytes`.
pub async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether a JSON error reply has Lambda's shape with this code.
pub fn assert_lambda_error(head: &str, body: &[u8], status: u16, code: &str) {
    let reply = RawReply {
        head: head.to_string(),
        body: body.to_vec(),
    };
    assert_eq!(reply.status(), status, "{head}");
    assert_eq!(
        reply.header("x-amzn-errortype").as_deref(),
        Some(code),
        "{head}"
    );
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(doc["message"].is_string(), "{doc}");
    assert!(doc["Type"] == "User" || doc["Type"] == "Service", "{doc}");
}

/// `len` incompressible bytes (xorshift).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
