//! The router's end of one agent connection: the VMM's vsock handshake on
//! its Unix socket, then `ember-protocol` frames, both from
//! `ember_protocol::conn`. Every wait has a deadline, writes included: a
//! guest that stops reading (no vsock credit, no RX buffers) fails the
//! exchange at its deadline instead of blocking the router. Every frame is
//! bounded by the protocol's `MAX_BODY_LEN`; anything the agent sends that
//! does not decode ends the connection (the VM is then recycled, never
//! trusted again).

use std::io;
use std::path::Path;
use std::time::Duration;

use super::pacer::{self, Pacer};
use ember_protocol::conn::{self, SendError, UnixConnection};
use ember_protocol::handshake::HandshakeError;
use ember_protocol::{
    Configure, DecodeError, EncodeError, ErrorInfo, Hello, Invoke, InvokeResult, Message,
    MessageType, ProtocolError, Ready, LOG_TAIL_LEN,
};
use tokio::time::{timeout_at, Instant};

/// How long one handshake attempt may take before it is retried.
const HANDSHAKE_ATTEMPT: Duration = Duration::from_secs(2);
/// How long a `Shutdown` may take to be written.
pub const SHUTDOWN_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The deadline passed while waiting for `what`.
    #[error("no {0} from the agent in time")]
    Timeout(&'static str),
    /// The deadline passed while sending: the guest stopped reading.
    #[error("the agent did not take the {0:?} message in time (it stopped reading)")]
    SendTimeout(MessageType),
    /// The stream ended (the VM stopped or the agent closed it).
    #[error("the agent connection closed")]
    Closed,
    /// The vsock handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A socket error.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    /// The agent sent a frame that does not decode.
    #[error("protocol violation: {0}")]
    Decode(DecodeError),
    /// The agent sent a message out of turn.
    #[error("protocol violation: expected {expected}, got {got:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: MessageType,
    },
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
    conn: UnixConnection,
    /// The tail of output logged before the runtime became ready (for
    /// init-failure reports).
    init_log: Vec<u8>,
    /// Paces the frames read and dropped (see [`super::pacer`]).
    pacer: Pacer,
}

impl AgentConn {
    /// Connects to vsock `port` through the VMM's Unix socket `uds`,
    /// retrying until the guest listens or `deadline` passes.
    pub async fn connect(uds: &Path, port: u32, deadline: Instant) -> Result<AgentConn, ConnError> {
        let stream = conn::connect(uds, port, deadline, HANDSHAKE_ATTEMPT).await?;
        Ok(AgentConn {
            conn: UnixConnection::unix(stream),
            init_log: Vec::new(),
            pacer: Pacer::new(std::time::Instant::now()),
        })
    }

    /// Sends one message, giving up at `deadline`. A send cut short leaves
    /// the stream out of step: the caller must drop the connection.
    pub async fn send(&mut self, m: &Message, deadline: Instant) -> Result<(), ConnError> {
        match timeout_at(deadline, self.conn.write(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(SendError::Encode(e))) => Err(ConnError::Encode(e)),
            Ok(Err(SendError::Io(e))) => Err(ConnError::Io(e)),
            Err(_) => Err(ConnError::SendTimeout(m.message_type())),
        }
    }

    /// Receives the next message, whatever it is (cancel safe).
    pub async fn recv(&mut self) -> Result<Message, ConnError> {
        match self.conn.read().await {
            Ok(Some(Ok(m))) => Ok(m),
            Ok(Some(Err(e))) => Err(ConnError::Decode(e)),
            Ok(None) => Err(ConnError::Closed),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
            Err(e) => Err(ConnError::Io(e)),
        }
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

    /// Accounts for a frame of `cost` bytes ([`pacer::cost`]) read but not
    /// waited for; past the agent's burst, waits (until `deadline` at most)
    /// before the next read.
    async fn paced(
        &mut self,
        cost: usize,
        deadline: Instant,
        what: &'static str,
    ) -> Result<(), ConnError> {
        let wait = self.pacer.charge(cost, std::time::Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let until = Instant::now() + wait;
        if until > deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(ConnError::Timeout(what));
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    /// Waits for the agent's greeting.
    pub async fn hello(&mut self, deadline: Instant) -> Result<Hello, ConnError> {
        loop {
            let m = self.recv_until(deadline, "Hello").await?;
            let cost = pacer::cost(&m);
            match m {
                Message::Hello(h) => return Ok(h),
                Message::Log(l) => {
                    self.note_init_log(&l.data);
                    self.paced(cost, deadline, "Hello").await?;
                }
                other => {
                    return Err(ConnError::Unexpected {
                        expected: "Hello",
                        got: other.message_type(),
                    })
                }
            }
        }
    }

    /// Configures the function and waits for its runtime to be ready.
    pub async fn configure(&mut self, c: Configure, deadline: Instant) -> Result<Ready, ConnError> {
        self.send(&Message::Configure(c), deadline).await?;
        loop {
            let m = self.recv_until(deadline, "Ready").await?;
            let cost = pacer::cost(&m);
            match m {
                Message::Ready(r) => return Ok(r),
                Message::InitError(e) => return Err(ConnError::Init(e)),
                Message::Error(e) => return Err(ConnError::Refused(e)),
                Message::Log(l) => self.note_init_log(&l.data),
                _ => {}
            }
            self.paced(cost, deadline, "Ready").await?;
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

    /// Runs one invocation and waits for its result until `deadline` (the
    /// send included). Log records in between are dropped: the result
    /// carries their tail.
    pub async fn invoke(
        &mut self,
        inv: Invoke,
        deadline: Instant,
    ) -> Result<InvokeResult, ConnError> {
        let id = inv.request_id.clone();
        self.send(&Message::Invoke(inv), deadline).await?;
        loop {
            let m = self.recv_until(deadline, "Result").await?;
            let cost = pacer::cost(&m);
            match m {
                Message::Result(r) if r.request_id == id => return Ok(r),
                Message::Error(e)
                    if e.request_id.is_none() || e.request_id.as_deref() == Some(&id) =>
                {
                    return Err(ConnError::Refused(e))
                }
                // Logs, stale results or pongs of earlier exchanges.
                _ => self.paced(cost, deadline, "Result").await?,
            }
        }
    }

    /// Pings the agent and waits for the matching pong, all by `deadline`.
    pub async fn ping(&mut self, nonce: u64, deadline: Instant) -> Result<(), ConnError> {
        self.send(&Message::Ping(nonce), deadline).await?;
        loop {
            let m = self.recv_until(deadline, "Pong").await?;
            let cost = pacer::cost(&m);
            match m {
                Message::Pong(n) if n == nonce => return Ok(()),
                Message::Ping(n) => self.send(&Message::Pong(n), deadline).await?,
                _ => {}
            }
            self.paced(cost, deadline, "Pong").await?;
        }
    }

    /// Asks the agent to power the VM off (best effort: the caller waits
    /// for the VMM to exit and kills it if it does not).
    pub async fn shutdown(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_SEND_TIMEOUT;
        let _ = self.send(&Message::Shutdown, deadline).await;
    }
}
