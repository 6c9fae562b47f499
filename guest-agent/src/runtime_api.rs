//! Lambda's Runtime API, served to the function's runtime on
//! `127.0.0.1:9001`: the runtime long-polls `invocation/next` for an event
//! and posts its response or error; `init/error` reports a failed start.
//! One invocation at a time; a post naming any other request id is refused.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use ember_protocol::{ErrorInfo, MAX_PAYLOAD_LEN};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify, Semaphore};

/// The Runtime API's address inside the guest.
pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";

/// Path prefix of every Runtime API route.
const PREFIX: &str = "/2018-06-01/runtime/";

/// The most Runtime API connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// An event waiting for (or handed to) the runtime.
pub struct Event {
    /// The invocation's id.
    pub request_id: String,
    /// The payload.
    pub payload: Bytes,
    /// `Lambda-Runtime-Deadline-Ms`: Unix epoch milliseconds.
    pub deadline_ms: u64,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// `Lambda-Runtime-Trace-Id`.
    pub trace_id: Option<String>,
    /// `Lambda-Runtime-Client-Context`.
    pub client_context: Option<String>,
    /// Receives how the runtime answered.
    pub done: oneshot::Sender<Completion>,
}

/// How the runtime answered an event.
#[derive(Debug)]
pub enum Completion {
    /// `invocation/{id}/response` with this body.
    Response(Vec<u8>),
    /// `invocation/{id}/error`: the error and the document posted.
    Error(ErrorInfo, Vec<u8>),
    /// The response or error body exceeded [`MAX_PAYLOAD_LEN`].
    TooLarge,
}

#[derive(Default)]
struct State {
    /// The runtime has called `invocation/next` since it started.
    next_seen: bool,
    init_error: Option<ErrorInfo>,
    /// The document the runtime posted to `init/error`, as posted.
    init_document: Option<Vec<u8>>,
    offered: Option<Event>,
    delivered: Option<(String, oneshot::Sender<Completion>)>,
}

/// The state the HTTP server shares with the supervisor. Cheap to clone.
#[derive(Clone, Default)]
pub struct RuntimeApi {
    state: Arc<Mutex<State>>,
    /// Wakes a `next` poller when an event is offered.
    offered: Arc<Notify>,
    /// Wakes the supervisor when the runtime calls `next` or `init/error`.
    progress: Arc<Notify>,
}

/// What the runtime did during its init phase.
#[derive(Debug)]
pub enum InitProgress {
    /// It asked for its first event.
    Ready,
    /// It posted `init/error`.
    Failed(ErrorInfo),
}

impl RuntimeApi {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything about the previous runtime: a new one starts.
    pub fn reset(&self) {
        *self.lock() = State::default();
    }

    /// Waits until the new runtime asks for an event or reports an init
    /// error.
    pub async fn init_progress(&self) -> InitProgress {
        loop {
            {
                let mut s = self.lock();
                if let Some(e) = s.init_error.take() {
                    return InitProgress::Failed(e);
                }
                if s.next_seen {
                    return InitProgress::Ready;
                }
            }
            self.progress.notified().await;
        }
    }

    /// The init error the runtime posted, if any: a runtime that posts one
    /// and exits at once must be reported by what it said, not its exit.
    pub fn take_init_error(&self) -> Option<ErrorInfo> {
        self.lock().init_error.take()
    }

    /// The document the runtime posted to `init/error` since the last
    /// [`RuntimeApi::reset`], if it posted one.
    pub fn init_document(&self) -> Option<Vec<u8>> {
        self.lock().init_document.clone()
    }

    /// Hands `event` to the runtime's next (or pending) `invocation/next`.
    pub fn offer(&self, event: Event) {
        self.lock().offered = Some(event);
        self.offered.notify_one();
    }

    /// Withdraws the current event, offered or delivered: later posts for
    /// it are refused.
    pub fn withdraw(&self) {
        let mut s = self.lock();
        s.offered = None;
        s.delivered = None;
    }

    async fn next(&self) -> Event {
        loop {
            {
                let mut s = self.lock();
                if !s.next_seen {
                    s.next_seen = true;
                    self.progress.notify_one();
                }
                if let Some(event) = s.offered.take() {
                    return event;
                }
            }
            self.offered.notified().await;
        }
    }
}

/// Serves the Runtime API on `listener` forever.
pub async fn serve(listener: TcpListener, api: RuntimeApi) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(&api, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Lambda's error document as an HTTP reply.
fn refuse(status: StatusCode, error_type: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message });
    reply(status, body.to_string())
}

fn accepted() -> Reply {
    reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#.into())
}

async fn route(api: &RuntimeApi, req: Request<Incoming>) -> Reply {
    let Some(path) = req.uri().path().strip_prefix(PREFIX).map(str::to_string) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such Runtime API route",
        );
    };
    let parts: Vec<&str> = path.split('/').collect();
    let method = req.method().clone();
    match (parts.as_slice(), method) {
        (["invocation", "next"], Method::GET) => next(api).await,
        (["invocation", id, "response"], Method::POST) => {
            let id = id.to_string();
            post_result(api, req, &id, false).await
        }
        (["invocation", id, "error"], Method::POST) => {
            let id = id.to_string();
            post_result(api, req, &id, true).await
        }
        (["init", "error"], Method::POST) => init_error(api, req).await,
        (["invocation", "next"], _)
        | (["invocation", _, "response" | "error"], _)
        | (["init", "error"], _) => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "wrong method for this Runtime API route",
        ),
        _ => refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such Runtime API route",
        ),
    }
}

async fn next(api: &RuntimeApi) -> Reply {
    let event = api.next().await;
    api.lock().delivered = Some((event.request_id.clone(), event.done));
    let mut r = Response::new(Full::new(event.payload));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Every value below was validated as header-safe by the protocol.
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &event.request_id);
    set("lambda-runtime-deadline-ms", &event.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &event.function_arn);
    if let Some(t) = &event.trace_id {
        set("lambda-runtime-trace-id", t);
    }
    if let Some(c) = &event.client_context {
        set("lambda-runtime-client-context", c);
    }
    r
}

/// A body is read to its end up to this many bytes even when it is over
/// the limit, so the client can read our 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 4 * MAX_PAYLOAD_LEN;

/// Reads a body of at most [`MAX_PAYLOAD_LEN`] bytes; `None` if larger.
async fn read_body(req: Request<Incoming>) -> Result<Option<Vec<u8>>, Reply> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = req.into_body();
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(MAX_PAYLOAD_LEN));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("cannot read the request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= MAX_PAYLOAD_LEN {
            kept.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    Ok((total <= MAX_PAYLOAD_LEN).then_some(kept))
}

fn invalid_request_id(id: &str) -> Reply {
    refuse(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("no invocation with request id {id:?} is in progress"),
    )
}

fn too_large() -> Reply {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!("body exceeds the limit of {MAX_PAYLOAD_LEN} bytes"),
    )
}

async fn post_result(api: &RuntimeApi, req: Request<Incoming>, id: &str, is_error: bool) -> Reply {
    let current = |api: &RuntimeApi| {
        api.lock()
            .delivered
            .as_ref()
            .is_some_and(|(d, _)| d.as_str() == id)
    };
    // Refuse early, before reading a body nobody wants.
    if !current(api) {
        return invalid_request_id(id);
    }
    let header_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // The invocation may have timed out while the body was read.
    let done = {
        let mut s = api.lock();
        match s.delivered.take() {
            Some((d, done)) if d == id => done,
            other => {
                s.delivered = other;
                return invalid_request_id(id);
            }
        }
    };
    let Some(body) = body else {
        let _ = done.send(Completion::TooLarge);
        return too_large();
    };
    let completion = if is_error {
        Completion::Error(error_info(&body, header_type), body)
    } else {
        Completion::Response(body)
    };
    let _ = done.send(completion);
    accepted()
}

async fn init_error(api: &RuntimeApi, req: Request<Incoming>) -> Reply {
    if api.lock().next_seen {
        return refuse(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "init/error is only accepted before the first invocation/next",
        );
    }
    let header_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(req).await {
        Ok(Some(b)) => b,
        Ok(None) => return too_large(),
        Err(r) => return r,
    };
    {
        let mut s = api.lock();
        s.init_error = Some(error_info(&body, header_type));
        s.init_document = Some(body);
    }
    api.progress.notify_one();
    accepted()
}

/// Lambda's error document from a posted body: `errorType` from the body,
/// else from the `Lambda-Runtime-Function-Error-Type` header, else
/// `Unhandled`.
fn error_info(body: &[u8], header_type: Option<String>) -> ErrorInfo {
    let doc: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .and_then(|v| v.as_str())
            .map(|s| truncate(s, 4096))
    };
    // The protocol refuses NUL bytes in strings; a runtime may post them.
    let error_type = field("errorType")
        .or(header_type.map(|s| truncate(&s, 256)))
        .unwrap_or_else(|| "Unhandled".into());
    let error_message =
        field("errorMessage").unwrap_or_else(|| truncate(&String::from_utf8_lossy(body), 4096));
    ErrorInfo {
        error_type: error_type.replace('\0', ""),
        error_message: error_message.replace('\0', ""),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
