//! One router connection: frames in, frames out. The agent greets with
//! `Hello`, then answers each frame and forwards what the function produces
//! (readiness, results, logs). A refused frame gets an `Error` reply and the
//! session goes on; only the end of the stream, or a header out of step,
//! ends it.

use ember_protocol::{DecodeError, FrameHeader, Hello, Message, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::agent::{Host, Stop};
use crate::listener::Stream;

/// What the frame reader hands the session.
enum Inbound {
    Frame(Result<Message, DecodeError>),
    /// The stream ended; with a reason when it ended badly.
    Closed(Option<String>),
}

/// Reads frames until the stream ends. A frame over the size limit is
/// skipped (its bytes are read and dropped, never stored).
async fn read_frames(mut r: impl AsyncRead + Unpin, tx: mpsc::Sender<Inbound>) {
    let closed = loop {
        let mut head = [0u8; HEADER_LEN];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break None,
            Err(e) => break Some(format!("read error: {e}")),
        }
        let header = match FrameHeader::parse(&head) {
            Ok(h) => h,
            Err(DecodeError::FrameTooLarge { len }) => {
                let skipped =
                    tokio::io::copy(&mut (&mut r).take(len as u64), &mut tokio::io::sink()).await;
                if tx
                    .send(Inbound::Frame(Err(DecodeError::FrameTooLarge { len })))
                    .await
                    .is_err()
                {
                    return;
                }
                match skipped {
                    Ok(n) if n == len as u64 => continue,
                    _ => break Some("stream ended inside an oversized frame".into()),
                }
            }
            Err(e) => {
                let _ = tx.send(Inbound::Frame(Err(e.clone()))).await;
                break Some(format!("{e}; closing the connection"));
            }
        };
        let mut body = vec![0u8; header.body_len];
        if r.read_exact(&mut body).await.is_err() {
            break Some(format!(
                "stream ended inside a frame (announced {} body bytes)",
                header.body_len
            ));
        }
        if tx
            .send(Inbound::Frame(header.decode_body(&body)))
            .await
            .is_err()
        {
            return;
        }
    };
    let _ = tx.send(Inbound::Closed(closed)).await;
}

async fn write(w: &mut (impl AsyncWrite + Unpin), m: &Message) -> std::io::Result<()> {
    match m.encode() {
        Ok(frame) => {
            w.write_all(&frame).await?;
            w.flush().await
        }
        Err(e) => {
            // Our own message broke the protocol: say so, keep serving.
            eprintln!(
                "ember-guest-agent: not sending a {:?}: {e}",
                m.message_type()
            );
            Ok(())
        }
    }
}

/// Serves one connection until it ends (`Stop::Disconnected`) or the VM
/// must stop.
pub async fn run(
    stream: Box<dyn Stream>,
    host: &mut Host,
    outgoing: &mut mpsc::Receiver<Message>,
) -> Stop {
    let (r, mut w) = tokio::io::split(stream);
    let (tx, mut inbound) = mpsc::channel(4);
    let reader = tokio::spawn(read_frames(r, tx));
    let stop = serve(&mut w, host, outgoing, &mut inbound).await;
    reader.abort();
    stop
}

async fn serve(
    w: &mut (impl AsyncWrite + Unpin),
    host: &mut Host,
    outgoing: &mut mpsc::Receiver<Message>,
    inbound: &mut mpsc::Receiver<Inbound>,
) -> Stop {
    let hello = Message::Hello(Hello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot: host.boot,
    });
    if write(w, &hello).await.is_err() {
        return Stop::Disconnected;
    }
    loop {
        tokio::select! {
            item = inbound.recv() => {
                let replies = match item {
                    None | Some(Inbound::Closed(None)) => return Stop::Disconnected,
                    Some(Inbound::Closed(Some(why))) => {
                        eprintln!("ember-guest-agent: router connection: {why}");
                        return Stop::Disconnected;
                    }
                    Some(Inbound::Frame(Err(e))) => vec![Message::Error(e.to_protocol_error())],
                    Some(Inbound::Frame(Ok(m))) => match host.handle(m).await {
                        Ok(replies) => replies,
                        Err(stop) => return stop,
                    },
                };
                for m in &replies {
                    if write(w, m).await.is_err() {
                        return Stop::Disconnected;
                    }
                }
            }
            Some(m) = outgoing.recv() => {
                host.sent(&m);
                if write(w, &m).await.is_err() {
                    return Stop::Disconnected;
                }
                if matches!(m, Message::InitError(_)) {
                    return Stop::InitFailed;
                }
            }
        }
    }
}
