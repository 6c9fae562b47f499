//! The host side of a vsock connection through a VMM's Unix socket
//! (Firecracker's convention, which Ember's VMM follows): the host writes
//! `CONNECT <port>\n`, the VMM answers `OK <host port>\n` once the guest
//! accepted, or closes the stream when nobody listens on `port` (yet).
//! After the answer the stream carries the guest's bytes.
//!
//! The answer is read one byte at a time up to its newline, so nothing the
//! guest sends right after it (the agent's `Hello`) is swallowed.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest `OK <n>` answer accepted, newline included.
pub const MAX_ANSWER_LEN: usize = 32;
/// Pause between connection attempts while the guest boots.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The Unix socket could not be reached (no VMM yet, or it is gone).
    Unreachable(io::Error),
    /// The VMM closed the stream: nobody listens on the port (yet).
    Refused,
    /// The VMM answered something else than `OK <n>\n`.
    BadAnswer(String),
    /// The socket failed mid-handshake.
    Io(io::Error),
    /// The deadline passed.
    Timeout,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Unreachable(e) => write!(f, "cannot reach the VMM's vsock socket: {e}"),
            HandshakeError::Refused => f.write_str("nobody listens on the guest port"),
            HandshakeError::BadAnswer(a) => write!(f, "bad vsock handshake answer {a:?}"),
            HandshakeError::Io(e) => write!(f, "vsock handshake: {e}"),
            HandshakeError::Timeout => f.write_str("the vsock handshake timed out"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Unreachable(e) | HandshakeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl HandshakeError {
    /// Whether trying again may help (the guest may not listen yet).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HandshakeError::Unreachable(_) | HandshakeError::Refused | HandshakeError::Timeout
        )
    }
}

/// The request line for guest `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The VMM side: the port of a `CONNECT <port>` line (newline removed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"CONNECT ")?;
    let text = std::str::from_utf8(rest).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The VMM side: the answer once the guest accepted.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// Checks a whole answer (newline included); the host port it names.
pub fn parse_answer(answer: &[u8]) -> Result<u32, HandshakeError> {
    let bad = || HandshakeError::BadAnswer(String::from_utf8_lossy(answer).into_owned());
    let line = answer.strip_suffix(b"\n").ok_or_else(bad)?;
    let port = line.strip_prefix(b"OK ").ok_or_else(bad)?;
    std::str::from_utf8(port)
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)
}

/// Collects answer bytes; `Some` once the newline came.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    bytes: Vec<u8>,
}

impl Answer {
    /// Takes one byte (`None`: end of stream).
    pub(crate) fn push(&mut self, b: Option<u8>) -> Result<Option<u32>, HandshakeError> {
        match b {
            None if self.bytes.is_empty() => Err(HandshakeError::Refused),
            None => Err(HandshakeError::BadAnswer(
                String::from_utf8_lossy(&self.bytes).into_owned(),
            )),
            Some(b) => {
                self.bytes.push(b);
                if b == b'\n' {
                    parse_answer(&self.bytes).map(Some)
                } else if self.bytes.len() >= MAX_ANSWER_LEN {
                    Err(HandshakeError::BadAnswer(
                        String::from_utf8_lossy(&self.bytes).into_owned(),
                    ))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// One blocking attempt: connects to `uds`, asks for guest `port`, reads
/// the answer within `timeout`. The stream keeps no read timeout.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HandshakeError> {
    let mut s = UnixStream::connect(uds).map_err(HandshakeError::Unreachable)?;
    let timeout = timeout.max(Duration::from_millis(1));
    s.set_read_timeout(Some(timeout))
        .map_err(HandshakeError::Io)?;
    s.set_write_timeout(Some(timeout))
        .map_err(HandshakeError::Io)?;
    s.write_all(connect_line(port).as_bytes())
        .map_err(HandshakeError::Io)?;
    let mut answer = Answer::default();
    loop {
        let mut b = [0u8; 1];
        let got = match s.read(&mut b) {
            Ok(0) => None,
            Ok(_) => Some(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::Timeout)
            }
            // A reset while the guest is not listening is a refusal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
            Err(e) => return Err(HandshakeError::Io(e)),
        };
        if answer.push(got)?.is_some() {
            s.set_read_timeout(None).map_err(HandshakeError::Io)?;
            s.set_write_timeout(None).map_err(HandshakeError::Io)?;
            return Ok(s);
        }
    }
}

/// Blocking: retries [`connect`] while the guest boots, until `deadline`;
/// a bad answer ends it at once.
pub fn connect_until(
    uds: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, HandshakeError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Timeout);
        }
        match connect(uds, port, left.min(Duration::from_secs(2))) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() && Instant::now() + RETRY_PAUSE < deadline => {
                std::thread::sleep(RETRY_PAUSE)
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 5000"), Some(5000));
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_answer(ok_line(7).as_bytes()).unwrap(), 7);
        assert!(parse_answer(b"OK 7").is_err());
        assert!(parse_answer(b"NO 7\n").is_err());
        assert!(parse_answer(b"OK \n").is_err());
    }

    #[test]
    fn an_answer_is_bounded_and_an_early_close_is_a_refusal() {
        let mut a = Answer::default();
        assert!(matches!(a.push(None), Err(HandshakeError::Refused)));
        let mut a = Answer::default();
        let mut last = Ok(None);
        for _ in 0..MAX_ANSWER_LEN {
            last = a.push(Some(b'O'));
            if last.is_err() {
                break;
            }
        }
        assert!(matches!(last, Err(HandshakeError::BadAnswer(_))));
    }

    #[test]
    fn blocking_connect_keeps_what_follows_the_answer() {
        let dir = std::env::temp_dir().join(format!("ember-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut line = [0u8; 13];
            c.read_exact(&mut line).unwrap();
            assert_eq!(parse_connect(&line[..12]), Some(5000));
            // The answer and the guest's first bytes in one write.
            c.write_all(b"OK 1024\nhello").unwrap();
        });
        let mut s = connect_until(&path, 5000, Instant::now() + Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
