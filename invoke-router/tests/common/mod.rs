//! Shared helpers of the HTTP tests: a server on a temporary data dir with
//! two tenants, and a client that signs its requests with SigV4.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ember_invoke_router::config::{GuestSettings, ServeConfig, TenantConfig, TimingSettings};
use ember_invoke_router::server::{self, RunningServer};
use ember_invoke_router::sigv4;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

pub const KEY_A: &str = "AKIAEMBERTESTTENANTA";
pub const SECRET_A: &str = "secret-of-tenant-a-0123456789";
pub const KEY_B: &str = "AKIAEMBERTESTTENANTB";
pub const SECRET_B: &str = "secret-of-tenant-b-0123456789";

pub fn config(data_dir: &Path) -> ServeConfig {
    let dummy = data_dir.join("dummy-guest-file");
    std::fs::write(&dummy, b"").unwrap();
    let tenant = |id: &str, key: &str, secret: &str| TenantConfig {
        concurrency: 10,
        ..TenantConfig::new(id, key, secret)
    };
    let guest = GuestSettings {
        kernel: dummy.clone(),
        initramfs: dummy,
        vmm: PathBuf::from("/nonexistent/ember-vmm"),
        runtime_images: Default::default(),
    };
    let mut c = ServeConfig::new(
        data_dir.to_path_buf(),
        guest,
        vec![
            tenant("alpha", KEY_A, SECRET_A),
            tenant("beta", KEY_B, SECRET_B),
        ],
    );
    c.listen = "127.0.0.1:0".parse().unwrap();
    // No VM ever starts here (the VMM does not exist): nothing to jail.
    c.jail.unjailed_development = true;
    c.capacity.mem_mib = 1024;
    c.capacity.vcpus = 2;
    c.timing = TimingSettings {
        keep_alive: Duration::from_secs(60),
        queue_wait: Duration::from_millis(100),
        health_interval: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(2),
    };
    c
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a Lambda-shaped error.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("x-amzn-errortype"),
            Some(code),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let doc = self.json();
        assert!(doc["message"].is_string(), "{doc}");
        assert!(doc["Type"] == "User" || doc["Type"] == "Service", "{doc}");
    }
}

#[derive(Clone, Copy)]
pub enum Signing<'a> {
    Key(&'a str, &'a str),
    KeyAt(&'a str, &'a str, SystemTime),
    None,
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
    signing: Signing<'_>,
) -> Reply {
    let host = addr.to_string();
    let mut headers: Vec<(String, String)> = vec![("host".into(), host)];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (key, secret, at) = match signing {
        Signing::Key(k, s) => (Some(k), s, SystemTime::now()),
        Signing::KeyAt(k, s, t) => (Some(k), s, t),
        Signing::None => (None, "", SystemTime::now()),
    };
    if let Some(key) = key {
        sigv4::sign_headers(
            method,
            uri,
            &mut headers,
            &body,
            &sigv4::ClientKey {
                access_key_id: key,
                secret,
                region: "us-east-1",
                service: "lambda",
            },
            at,
        )
        .unwrap();
    }
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in &headers {
        builder = builder.header(k, v);
    }
    let resp = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
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

pub struct Api {
    server: Option<RunningServer>,
    pub addr: SocketAddr,
}

impl Api {
    pub async fn start(data: &Path) -> Self {
        Self::start_with(config(data)).await
    }
    pub async fn start_with(config: ServeConfig) -> Self {
        let server = server::start(config).await.unwrap();
        Self {
            addr: server.local_addr,
            server: Some(server),
        }
    }
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
    pub async fn call(&self, method: &str, uri: &str, body: Value) -> Reply {
        self.call_with(method, uri, body, Signing::Key(KEY_A, SECRET_A))
            .await
    }
    pub async fn call_as_b(&self, method: &str, uri: &str, body: Value) -> Reply {
        self.call_with(method, uri, body, Signing::Key(KEY_B, SECRET_B))
            .await
    }
    /// A JSON call (no body when `body` is null) signed as `signing` says.
    async fn call_with(&self, method: &str, uri: &str, body: Value, signing: Signing<'_>) -> Reply {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        send(self.addr, method, uri, bytes, &[], signing).await
    }
    /// Like [`Api::raw`], signed as tenant beta.
    pub async fn call_as_b_raw(
        &self,
        method: &str,
        uri: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Reply {
        send(
            self.addr,
            method,
            uri,
            body,
            extra,
            Signing::Key(KEY_B, SECRET_B),
        )
        .await
    }
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Reply {
        send(
            self.addr,
            method,
            uri,
            body,
            extra,
            Signing::Key(KEY_A, SECRET_A),
        )
        .await
    }
}

pub fn zip_of(files: &[(&str, &[u8], u32)]) -> String {
    ember_invoke_router::client::zip_base64(files).unwrap()
}

pub fn hello_zip() -> String {
    zip_of(&[("bootstrap", b"#!/bin/sh\necho hello\n", 0o755)])
}

pub fn create_body(name: &str) -> Value {
    json!({
        "FunctionName": name,
        "Runtime": "provided.al2023",
        "Role": "arn:aws:iam::123456789012:role/lambda",
        "Handler": "bootstrap",
        "Code": { "ZipFile": hello_zip() },
        "MemorySize": 256,
        "Timeout": 10,
        "Environment": { "Variables": { "GREETING": "hi" } },
    })
}
