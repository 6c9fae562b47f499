//! A tiny Lambda runtime for tests, speaking the Runtime API over
//! `std::net`, driven by its events:
//!
//! | event | what the runtime does |
//! | --- | --- |
//! | `echo:X` | responds `X` (and prints `log:X` to stdout) |
//! | `headers` | responds with the Lambda headers and env it saw, one per line |
//! | `pid` | responds with its pid |
//! | `fail` | posts `invocation/error` with errorType `MyError` |
//! | `runtime-fail` | posts `invocation/error` with errorType `Runtime.Broken` |
//! | `sleep:MS` | sleeps, then responds `slept` |
//! | `crash:N` | prints `dying` on stderr and exits with status N |
//! | `abort` | aborts (SIGABRT) |
//! | `big` | posts a response over the limit, then responds with the status |
//! | `wrong-id` | posts to an unknown request id, then responds with the status |
//!
//! `EMBER_TEST_INIT` picks a misbehaviour at init: `error` posts
//! `init/error`, `exit` exits with status 7 before asking for an event.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

pub fn http(method: &str, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap();
    let mut s = TcpStream::connect(&api).unwrap();
    let mut req = format!(
        "{method} /2018-06-01/runtime/{path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may refuse early and close; a failed write is fine then.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn respond(id: &str, body: &[u8]) -> u16 {
    http("POST", &format!("invocation/{id}/response"), body, &[]).status
}

pub fn run() -> ! {
    match std::env::var("EMBER_TEST_INIT").as_deref() {
        Ok("error") => {
            let r = http(
                "POST",
                "init/error",
                br#"{"errorType":"Init.Bad","errorMessage":"cannot load handler"}"#,
                &[],
            );
            assert_eq!(r.status, 202);
            std::process::exit(1);
        }
        Ok("exit") => std::process::exit(7),
        _ => {}
    }
    loop {
        let next = http("GET", "invocation/next", b"", &[]);
        assert_eq!(next.status, 200);
        let id = next.headers["lambda-runtime-aws-request-id"].clone();
        let event = String::from_utf8(next.body.clone()).unwrap();
        let (verb, arg) = event.split_once(':').unwrap_or((event.as_str(), ""));
        match verb {
            "echo" => {
                println!("log:{arg}");
                respond(&id, arg.as_bytes());
            }
            "headers" => {
                let mut out = String::new();
                for h in [
                    "lambda-runtime-aws-request-id",
                    "lambda-runtime-deadline-ms",
                    "lambda-runtime-invoked-function-arn",
                    "lambda-runtime-trace-id",
                    "lambda-runtime-client-context",
                ] {
                    out.push_str(&format!("{h}={}\n", next.headers.get(h).map_or("-", |v| v)));
                }
                for v in [
                    "_HANDLER",
                    "LAMBDA_TASK_ROOT",
                    "AWS_LAMBDA_FUNCTION_NAME",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    "AWS_LAMBDA_FUNCTION_VERSION",
                    "MY_VAR",
                ] {
                    out.push_str(&format!("{v}={}\n", std::env::var(v).unwrap_or_default()));
                }
                respond(&id, out.as_bytes());
            }
            "pid" => {
                respond(&id, std::process::id().to_string().as_bytes());
            }
            "fail" | "runtime-fail" => {
                let ty = if verb == "fail" {
                    "MyError"
                } else {
                    "Runtime.Broken"
                };
                let doc =
                    format!(r#"{{"errorType":"{ty}","errorMessage":"boom","stackTrace":[]}}"#);
                let r = http(
                    "POST",
                    &format!("invocation/{id}/error"),
                    doc.as_bytes(),
                    &[],
                );
                assert_eq!(r.status, 202);
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg.parse().unwrap()));
                respond(&id, b"slept");
            }
            "crash" => {
                eprintln!("dying");
                std::process::exit(arg.parse().unwrap());
            }
            "abort" => std::process::abort(),
            "big" => {
                let big = vec![b'x'; ember_protocol::MAX_PAYLOAD_LEN + 1];
                let status = respond(&id, &big);
                // The invocation is over; this post must be refused too.
                let again = respond(&id, status.to_string().as_bytes());
                println!("big={status} again={again}");
            }
            "wrong-id" => {
                let r = http("POST", "invocation/no-such-id/response", b"x", &[]);
                let body = String::from_utf8_lossy(&r.body).into_owned();
                respond(&id, format!("{} {body}", r.status).as_bytes());
            }
            other => panic!("unknown test event {other:?}"),
        }
    }
}
