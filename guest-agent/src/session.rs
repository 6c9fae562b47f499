//! One router connection: frames in, frames out, through
//! `ember_protocol::conn`. The agent greets with `Hello`, then answers each
//! frame and forwards what the function produces (readiness, results,
//! logs). A refused frame gets an `Error` reply and the session goes on;
//! only the end of the stream, or a header out of step, ends it.

use ember_protocol::conn::{Connection, SendError};
use ember_protocol::{DecodeError, Hello, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::agent::{Host, Stop};
use crate::listener::Stream;

/// Sends `m`; a message of ours that breaks the protocol is dropped with a
/// note (the session goes on), a failed stream ends the session.
async fn send<R, W>(conn: &mut Connection<R, W>, m: &Message) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match conn.write(m).await {
        Ok(()) => Ok(()),
        Err(SendError::Encode(e)) => {
            eprintln!(
                "ember-guest-agent: not sending a {:?}: {e}",
                m.message_type()
            );
            Ok(())
        }
        Err(SendError::Io(e)) => Err(e),
    }
}

/// Serves one connection until it ends (`Stop::Disconnected`) or the VM
/// must stop.
pub async fn run(
    stream: Box<dyn Stream>,
    host: &mut Host,
    outgoing: &mut mpsc::Receiver<Message>,
) -> Stop {
    let (r, w) = tokio::io::split(stream);
    let mut conn = Connection::new(r, w);
    serve(&mut conn, host, outgoing).await
}

async fn serve<R, W>(
    conn: &mut Connection<R, W>,
    host: &mut Host,
    outgoing: &mut mpsc::Receiver<Message>,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = Message::Hello(Hello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot: host.boot,
    });
    if send(conn, &hello).await.is_err() {
        return Stop::Disconnected;
    }
    loop {
        tokio::select! {
            // Cancel safe: a frame half read when a result goes out first
            // is finished on the next turn.
            item = conn.reader.read() => {
                let replies = match item {
                    Ok(None) => return Stop::Disconnected,
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            // Out of step: say why before hanging up.
                            let why = Message::Error(DecodeError::BadHeader.to_protocol_error());
                            let _ = send(conn, &why).await;
                        }
                        eprintln!("ember-guest-agent: router connection: {e}");
                        return Stop::Disconnected;
                    }
                    Ok(Some(Err(e))) => vec![Message::Error(e.to_protocol_error())],
                    Ok(Some(Ok(m))) => match host.handle(m).await {
                        Ok(replies) => replies,
                        Err(stop) => return stop,
                    },
                };
                for m in &replies {
                    if send(conn, m).await.is_err() {
                        return Stop::Disconnected;
                    }
                }
            }
            Some(m) = outgoing.recv() => {
                host.sent(&m);
                if send(conn, &m).await.is_err() {
                    return Stop::Disconnected;
                }
                if matches!(m, Message::InitError(_)) {
                    return Stop::InitFailed;
                }
            }
        }
    }
}
