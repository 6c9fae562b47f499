//! A small Lambda API client that signs its requests with SigV4, for `up`
//! (registering the sample function), the E2E tests and the benchmarks.

use std::net::SocketAddr;
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::sigv4::{self, ClientKey};

/// Why a call did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking HTTP failed.
    #[error("{what}: {message}")]
    Http {
        /// The step that failed.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The request could not be signed (a header is not ASCII, ...).
    #[error("signing: {0}")]
    Sign(String),
}

fn http(what: &'static str) -> impl FnOnce(String) -> ClientError {
    move |message| ClientError::Http { what, message }
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client for one endpoint with one key pair.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    access_key_id: String,
    secret: String,
    region: String,
}

impl Client {
    /// A client for the router at `addr`, signing as `access_key_id`.
    pub fn new(addr: SocketAddr, access_key_id: &str, secret: &str, region: &str) -> Self {
        Self {
            addr,
            access_key_id: access_key_id.into(),
            secret: secret.into(),
            region: region.into(),
        }
    }

    /// Sends one signed request; `extra` headers are signed too.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        let mut headers: Vec<(String, String)> = vec![("host".into(), self.addr.to_string())];
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())),
        );
        let key = ClientKey {
            access_key_id: &self.access_key_id,
            secret: &self.secret,
            region: &self.region,
            service: "lambda",
        };
        sigv4::sign_headers(
            method,
            path_and_query,
            &mut headers,
            &body,
            &key,
            SystemTime::now(),
        )
        .map_err(|e| ClientError::Sign(e.to_string()))?;

        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| http("connect")(e.to_string()))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| http("handshake")(e.to_string()))?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder().method(method).uri(path_and_query);
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http("request")(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http("send")(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http("body")(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// A zip of `files` (name, contents, unix mode), base64-encoded as
/// CreateFunction's `Code.ZipFile` wants it.
pub fn zip_base64(files: &[(&str, &[u8], u32)]) -> std::io::Result<String> {
    use base64::Engine;
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).map_err(std::io::Error::other)?;
        w.write_all(data)?;
    }
    let bytes = w.finish().map_err(std::io::Error::other)?.into_inner();
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}
