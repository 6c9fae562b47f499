//! The runtime's output: forwarded to the router as log records as it is
//! produced, with the last [`LOG_TAIL_LEN`] bytes of each invocation kept
//! for its result.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ember_protocol::{LogRecord, LogStream, Message, LOG_TAIL_LEN, MAX_LOG_RECORD_LEN};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// A ring buffer holding the most recent [`LOG_TAIL_LEN`] bytes written.
#[derive(Debug, Default)]
pub struct LogTail {
    buf: VecDeque<u8>,
}

impl LogTail {
    /// Appends `data`, dropping the oldest bytes beyond the limit.
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(LOG_TAIL_LEN)..];
        let overflow = (self.buf.len() + data.len()).saturating_sub(LOG_TAIL_LEN);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// Takes the buffered bytes, leaving the tail empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf).into()
    }
}

/// Where a runtime's output goes: the router (best effort) and the tail of
/// the current invocation. Cheap to clone; clones share the tail.
#[derive(Clone)]
pub struct LogSink {
    out: mpsc::Sender<Message>,
    tail: Arc<Mutex<LogTail>>,
    request_id: Arc<Mutex<Option<String>>>,
}

impl LogSink {
    /// A sink sending records into `out`, the agent's outgoing messages.
    pub fn new(out: mpsc::Sender<Message>) -> Self {
        LogSink {
            out,
            tail: Arc::default(),
            request_id: Arc::default(),
        }
    }

    /// Starts a new invocation's tail; later records name `request_id`.
    pub fn begin(&self, request_id: Option<&str>) {
        lock(&self.tail).take();
        *lock(&self.request_id) = request_id.map(str::to_string);
    }

    /// Ends the invocation and returns its tail.
    pub fn finish(&self) -> Vec<u8> {
        *lock(&self.request_id) = None;
        lock(&self.tail).take()
    }

    /// Records `data` from `stream`. Never waits: when the router does not
    /// keep up, records are dropped (the tail still has the latest output).
    pub fn write(&self, stream: LogStream, data: &[u8]) {
        lock(&self.tail).push(data);
        let request_id = lock(&self.request_id).clone();
        for chunk in data.chunks(MAX_LOG_RECORD_LEN) {
            let _ = self.out.try_send(Message::Log(LogRecord {
                request_id: request_id.clone(),
                stream,
                data: chunk.to_vec(),
            }));
        }
    }

    /// Records a line of the agent's own (runtime started, killed, ...).
    pub fn note(&self, line: &str) {
        self.write(
            LogStream::Agent,
            format!("ember-agent: {line}\n").as_bytes(),
        );
    }

    /// Copies `pipe` into the sink until it ends.
    pub async fn pump(self, stream: LogStream, mut pipe: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; MAX_LOG_RECORD_LEN];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.write(stream, &buf[..n]),
            }
        }
    }
}

/// Locks `m`, ignoring poisoning: the data (bytes, an id) stays valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_4_kib() {
        let mut t = LogTail::default();
        t.push(b"abc");
        assert_eq!(t.take(), b"abc");
        assert!(t.take().is_empty());
        t.push(&[1; 3000]);
        t.push(&[2; 3000]);
        let got = t.take();
        assert_eq!(got.len(), LOG_TAIL_LEN);
        assert_eq!(got[..LOG_TAIL_LEN - 3000], vec![1; LOG_TAIL_LEN - 3000][..]);
        assert!(got[LOG_TAIL_LEN - 3000..].iter().all(|&b| b == 2));
        t.push(&[3; 10_000]);
        assert_eq!(t.take(), vec![3; LOG_TAIL_LEN]);
    }
}
