//! A guest that floods its agent connection with log records cannot make
//! the router read (and spend CPU) faster than its pace: past a 4 MiB
//! burst, 4 MiB/s. The flood only delays that guest's own result, and an
//! invocation deadline still ends the wait.

use std::time::Duration;

use ember_invoke_router::dispatch::agent_conn::{AgentConn, ConnError};
use ember_protocol::conn::{read_connect, UnixConnection};
use ember_protocol::handshake::ok_line;
use ember_protocol::{Invoke, InvokeResult, LogRecord, LogStream, Message, Outcome};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::time::Instant;

const RECORD: usize = 16 * 1024;

/// A fake agent: answers the vsock handshake, takes one Invoke, then sends
/// `log_mib` MiB of log records before the Result.
async fn flooding_agent(listener: UnixListener, log_mib: usize) {
    let (mut s, _) = listener.accept().await.unwrap();
    assert!(read_connect(&mut s).await.is_some());
    s.write_all(ok_line(1).as_bytes()).await.unwrap();
    let mut conn = UnixConnection::unix(s);
    let Ok(Some(Ok(Message::Invoke(inv)))) = conn.read().await else {
        panic!("no Invoke");
    };
    for _ in 0..log_mib * (1 << 20) / RECORD {
        let log = Message::Log(LogRecord {
            request_id: Some(inv.request_id.clone()),
            stream: LogStream::Stderr,
            data: vec![b'E'; RECORD],
        });
        if conn.write(&log).await.is_err() {
            return;
        }
    }
    let result = Message::Result(InvokeResult {
        request_id: inv.request_id,
        outcome: Outcome::Ok,
        payload: b"done".to_vec(),
        duration_us: 1,
        init_duration_us: None,
        peak_memory_bytes: None,
        log_tail: Vec::new(),
    });
    let _ = conn.write(&result).await;
}

async fn connect(log_mib: usize) -> (AgentConn, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    tokio::spawn(flooding_agent(listener, log_mib));
    let deadline = Instant::now() + Duration::from_secs(5);
    (AgentConn::connect(&uds, 1, deadline).await.unwrap(), dir)
}

fn invoke() -> Invoke {
    Invoke {
        request_id: "flood-1".into(),
        timeout_ms: 60_000,
        payload: b"{}".to_vec(),
        client_context: None,
        trace_id: None,
    }
}

#[tokio::test]
async fn a_log_flood_is_read_at_the_pace_and_delays_only_its_own_result() {
    let (mut conn, _dir) = connect(12).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let r = conn.invoke(invoke(), deadline).await.unwrap();
    let took = start.elapsed();
    assert_eq!(r.payload, b"done");
    // 12 MiB: 4 MiB of burst, then 8 MiB at 4 MiB/s.
    assert!(
        took >= Duration::from_millis(1800),
        "read 12 MiB in {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn the_deadline_still_ends_a_flooded_wait() {
    let (mut conn, _dir) = connect(64).await;
    let start = Instant::now();
    let e = conn
        .invoke(invoke(), start + Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnError::Timeout("Result")), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
}
