//! A small blocking client of the router's Lambda API: HTTP/1.1 over one
//! TCP connection (kept alive between requests), every request signed with
//! SigV4 by the router's own signer. Used by the router's E2E tests (from
//! this machine, through the soft host's forwarded port) and by
//! `router-bench` (inside the soft host).

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use ember_invoke_router::sigv4::{self, ClientKey};

/// A tenant's key pair.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The access key id.
    pub id: &'static str,
    /// Its secret.
    pub secret: &'static str,
}

impl Key {
    /// A `[[tenants]]` entry (for a `--tenants-file`) that registers this
    /// key as `tenant`.
    pub fn tenant_entry(&self, tenant: &str) -> String {
        format!(
            "[[tenants]]\nid = \"{tenant}\"\nkeys = [{{ access_key_id = \"{}\", secret_access_key = \"{}\" }}]\n",
            self.id, self.secret
        )
    }
}

/// An HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text, lossily.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        for (k, v) in &self.headers {
            write!(f, "\n{k}: {v}")?;
        }
        write!(f, "\n\n{}", self.text())
    }
}

/// One keep-alive connection to the API at `host` (`ADDR:PORT`), signing
/// as one tenant.
pub struct Connection {
    host: String,
    key: Key,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `host`; every read waits at most `read_timeout`.
    pub fn open(host: &str, key: Key, read_timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            host: host.to_string(),
            key,
            reader: BufReader::new(stream),
        })
    }

    /// [`Connection::open`], retried until `host` accepts or `wait` has
    /// passed (a server that is still starting).
    pub fn open_within(
        host: &str,
        key: Key,
        read_timeout: Duration,
        wait: Duration,
    ) -> io::Result<Self> {
        let started = std::time::Instant::now();
        loop {
            match Self::open(host, key, read_timeout) {
                Err(_) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                r => return r,
            }
        }
    }

    /// Sends one signed request (`uri`: path and query) with `extra`
    /// headers and reads the reply.
    pub fn send(
        &mut self,
        method: &str,
        uri: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> io::Result<Reply> {
        let mut headers = vec![("host".to_string(), self.host.clone())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let key = ClientKey {
            access_key_id: self.key.id,
            secret: self.key.secret,
            region: "us-east-1",
            service: "lambda",
        };
        sigv4::sign_headers(method, uri, &mut headers, body, &key, SystemTime::now())
            .map_err(|e| io::Error::other(format!("signing: {e}")))?;
        let mut head = format!("{method} {uri} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        read_reply(&mut self.reader)
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads a reply whose body has a `content-length` or is chunked (or,
/// for 1xx, 204 and 304, none).
fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let status_line = read_line(r)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let value = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size = read_line(r)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        // No body by definition (RFC 9110), with or without a length.
    } else {
        let len: usize = value("content-length")
            .ok_or_else(|| bad("a reply without content-length".into()))?
            .parse()
            .map_err(|_| bad("bad content-length".into()))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Sends one request on a fresh connection.
pub fn request(
    host: &str,
    key: Key,
    method: &str,
    uri: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> io::Result<Reply> {
    Connection::open(host, key, Duration::from_secs(120))?.send(method, uri, body, extra)
}

/// A zip of `files` (name, contents, unix mode), base64-encoded as
/// CreateFunction's `Code.ZipFile` wants it.
pub fn zip_file(files: &[(&str, &[u8], u32)]) -> String {
    ember_invoke_router::client::zip_base64(files).expect("zip in memory")
}

/// A CreateFunction body for an `exec` function: `handler` is a shell
/// command reading the event on stdin and answering on stdout.
pub fn exec_function(
    name: &str,
    handler: &str,
    memory_mib: u32,
    timeout_s: u32,
) -> serde_json::Value {
    serde_json::json!({
        "FunctionName": name,
        "Runtime": "exec",
        "Role": "arn:aws:iam::123456789012:role/ember",
        "Handler": handler,
        "Code": { "ZipFile": zip_file(&[("README", b"exec functions need no code\n", 0o644)]) },
        "MemorySize": memory_mib,
        "Timeout": timeout_s,
    })
}
