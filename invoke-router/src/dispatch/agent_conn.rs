//! The router's end of one agent connection: the VMM's Firecracker-style
//! vsock handshake on its Unix socket (`CONNECT <port>\n` → `OK <n>\n`),
//! then `ember-protocol` frames. Every wait has a deadline; every frame is
//! bounded by the protocol's `MAX_BODY_LEN`; anything the agent sends that
//! does not decode ends the connection (the VM is then recycled, never
//! trusted again).

use std::io;
use std::path::Path;
use std::time::Duration;

use ember_protocol::{
    Configure, EncodeError, ErrorInfo, FrameHeader, Hello, Invoke, InvokeResult, Message,
    ProtocolError, Ready, HEADER_LEN, LOG_TAIL_LEN,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// The longest `OK <n>` line the VMM may answer with.
const MAX_HANDSHAKE_LINE: u64 = 64;
/// How long one handshake attempt may take before it is retried.
const HANDSHAKE_ATTEMPT: Duration = Duration::from_secs(2);
/// Pause between connection attempts while the guest boots.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The deadline passed while waiting for `what`.
    #[error("no {0} from the agent in time")]
    Timeout(&'static str),
    /// The stream ended (the VM stopped or the agent closed it).
    #[error("the agent connection closed")]
    Closed,
    /// A socket error.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    /// The agent sent something that breaks the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The agent refused our frame.
    #[error("the agent refused the frame: {:?}: {}", .0.code, .0.message)]
    Refused(ProtocolError),
    /// Our own message could not be encoded (nothing was sent).
    #[error("cannot encode the message: {0}")]
    Encode(#[from] EncodeError),
    /// The runtime could not start.
    #[error("{}: {}", .0.error_type, .0.error_message)]
    Init(ErrorInfo),
}

/// One connection to a guest agent.
#[derive(Debug)]
pub struct AgentConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The tail of output logged before the runtime became ready (for
    /// init-failure reports).
    init_log: Vec<u8>,
}

impl AgentConn {
    /// Connects to vsock `port` through the VMM's Unix socket `uds`,
    /// retrying until the guest listens or `deadline` passes. A guest that
    /// is not listening yet answers a `CONNECT` by closing the stream.
    pub async fn connect(uds: &Path, port: u32, deadline: Instant) -> Result<AgentConn, ConnError> {
        loop {
            if Instant::now() >= deadline {
                return Err(ConnError::Timeout("vsock connection"));
            }
            let attempt_end = deadline.min(Instant::now() + HANDSHAKE_ATTEMPT);
            if let Ok(Ok(Some(conn))) = timeout_at(attempt_end, handshake(uds, port)).await {
                return Ok(conn);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Result<(), ConnError> {
        let frame = m.encode()?;
        self.writer.write_all(&frame).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Receives the next message, whatever it is.
    pub async fn recv(&mut self) -> Result<Message, ConnError> {
        let mut head = [0u8; HEADER_LEN];
        match self.reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ConnError::Closed),
            Err(e) => return Err(e.into()),
        }
        let header = FrameHeader::parse(&head).map_err(|e| ConnError::Protocol(e.to_string()))?;
        let mut body = vec![0u8; header.body_len];
        match self.reader.read_exact(&mut body).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ConnError::Closed),
            Err(e) => return Err(e.into()),
        }
        header
            .decode_body(&body)
            .map_err(|e| ConnError::Protocol(e.to_string()))
    }

    async fn recv_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, ConnError> {
        timeout_at(deadline, self.recv())
            .await
            .map_err(|_| ConnError::Timeout(what))?
    }

    /// Waits for the agent's greeting.
    pub async fn hello(&mut self, deadline: Instant) -> Result<Hello, ConnError> {
        loop {
            match self.recv_until(deadline, "Hello").await? {
                Message::Hello(h) => return Ok(h),
                Message::Log(l) => self.note_init_log(&l.data),
                other => {
                    return Err(ConnError::Protocol(format!(
                        "expected Hello, got {:?}",
                        other.message_type()
                    )))
                }
            }
        }
    }

    /// Configures the function and waits for its runtime to be ready.
    pub async fn configure(&mut self, c: Configure, deadline: Instant) -> Result<Ready, ConnError> {
        self.send(&Message::Configure(c)).await?;
        loop {
            match self.recv_until(deadline, "Ready").await? {
                Message::Ready(r) => return Ok(r),
                Message::InitError(e) => return Err(ConnError::Init(e)),
                Message::Error(e) => return Err(ConnError::Refused(e)),
                Message::Log(l) => self.note_init_log(&l.data),
                _ => {}
            }
        }
    }

    /// Output logged before the runtime was ready (its last 4 KiB).
    pub fn init_log(&self) -> &[u8] {
        &self.init_log
    }

    fn note_init_log(&mut self, data: &[u8]) {
        self.init_log.extend_from_slice(data);
        if self.init_log.len() > LOG_TAIL_LEN {
            let cut = self.init_log.len() - LOG_TAIL_LEN;
            self.init_log.drain(..cut);
        }
    }

    /// Runs one invocation and waits for its result until `deadline`. Log
    /// records in between are dropped: the result carries their tail.
    pub async fn invoke(
        &mut self,
        inv: Invoke,
        deadline: Instant,
    ) -> Result<InvokeResult, ConnError> {
        let id = inv.request_id.clone();
        self.send(&Message::Invoke(inv)).await?;
        loop {
            match self.recv_until(deadline, "Result").await? {
                Message::Result(r) if r.request_id == id => return Ok(r),
                Message::Error(e)
                    if e.request_id.is_none() || e.request_id.as_deref() == Some(&id) =>
                {
                    return Err(ConnError::Refused(e))
                }
                // Logs, stale results or pongs of earlier exchanges.
                _ => {}
            }
        }
    }

    /// Pings the agent and waits for the matching pong.
    pub async fn ping(&mut self, nonce: u64, deadline: Instant) -> Result<(), ConnError> {
        self.send(&Message::Ping(nonce)).await?;
        loop {
            match self.recv_until(deadline, "Pong").await? {
                Message::Pong(n) if n == nonce => return Ok(()),
                Message::Ping(n) => self.send(&Message::Pong(n)).await?,
                _ => {}
            }
        }
    }

    /// Asks the agent to power the VM off (best effort: the caller waits
    /// for the VMM to exit and kills it if it does not).
    pub async fn shutdown(&mut self) {
        let _ = timeout_at(
            Instant::now() + Duration::from_secs(1),
            self.send(&Message::Shutdown),
        )
        .await;
    }
}

/// One connection attempt: `Ok(None)` when the guest is not listening yet.
async fn handshake(uds: &Path, port: u32) -> Result<Option<AgentConn>, ConnError> {
    let stream = match UnixStream::connect(uds).await {
        Ok(s) => s,
        // The VMM has not bound its socket yet, or is gone.
        Err(_) => return Ok(None),
    };
    let (r, mut writer) = stream.into_split();
    writer
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_HANDSHAKE_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        return Ok(None);
    }
    if !line.ends_with(b"\n") || !line.starts_with(b"OK ") {
        return Err(ConnError::Protocol(format!(
            "bad vsock handshake answer {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(Some(AgentConn {
        reader,
        writer,
        init_log: Vec::new(),
    }))
}
