//! `router-bench`: measures `ember-invoke-router` with real VMs, as the
//! router's client on the same host (`bench/router` runs it in the soft
//! host).
//!
//!   router-bench tenant
//!       prints a tenants file (`--tenants-file`) holding the key it signs with
//!   router-bench HOST:PORT BOOTSTRAP [--cold N] [--warm N] [--secs S] [--idle N]
//!
//! Creates N functions (`provided.al2023`, the zip holding BOOTSTRAP),
//! invokes each once (a cold start each), then invokes the last one N
//! times in a row on one keep-alive connection (warm), then runs as many
//! warm invocations of it as it can for S seconds from 1 and from 4
//! concurrent connections. Prints one line per sample, `COLD_MS <ms>` and
//! `WARM_MS <ms>`, and `RPS_C1 <n>`, `RPS_C4 <n>`; any failure ends it with
//! status 1. With `--idle N`, it then opens N connections that send
//! nothing and measures again from new connections: `WARM_IDLE_MS <ms>`,
//! `RPS_IDLE_C1 <n>`, `RPS_IDLE_C4 <n>`; a router that cannot answer then
//! prints `IDLE_FAILED <why>` (and the run still succeeds).

use std::time::{Duration, Instant};

use ember_e2e::lambda_api::{zip_file, Connection, Key, Reply};

const KEY: Key = Key {
    id: "AKIAEMBERBENCH000000",
    secret: "bench-secret-0123456789",
};
const TENANT: &str = "bench";
const PAYLOAD: &[u8] = b"{}";

fn main() {
    if let Err(e) = run() {
        eprintln!("router-bench: {e}");
        std::process::exit(1);
    }
}

struct Args {
    host: String,
    bootstrap: String,
    cold: usize,
    warm: usize,
    secs: u64,
    idle: usize,
}

fn parse() -> Result<Option<Args>, String> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: router-bench tenant | router-bench HOST:PORT BOOTSTRAP [--cold N] [--warm N] [--secs S] [--idle N]";
    let host = it.next().ok_or(usage)?;
    if host == "tenant" {
        print!("{}", KEY.tenant_entry(TENANT));
        return Ok(None);
    }
    let mut args = Args {
        host,
        bootstrap: it.next().ok_or(usage)?,
        cold: 10,
        warm: 200,
        secs: 5,
        idle: 0,
    };
    while let Some(flag) = it.next() {
        let n = it
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or(format!("{flag} needs a positive number"))?;
        match flag.as_str() {
            "--cold" => args.cold = n,
            "--warm" => args.warm = n,
            "--secs" => args.secs = n as u64,
            "--idle" => args.idle = n,
            _ => return Err(format!("unknown option {flag}; {usage}")),
        }
    }
    Ok(Some(args))
}

fn connect(host: &str) -> Result<Connection, String> {
    connect_within(host, Duration::from_secs(120))
}

fn connect_within(host: &str, read_timeout: Duration) -> Result<Connection, String> {
    Connection::open(host, KEY, read_timeout).map_err(|e| format!("connect {host}: {e}"))
}

fn expect(r: std::io::Result<Reply>, status: u16, what: &str) -> Result<Reply, String> {
    match r {
        Ok(r) if r.status == status && r.header("x-amz-function-error").is_none() => Ok(r),
        Ok(r) => Err(format!("{what}:\n{r}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One synchronous invocation; returns its latency and whether it cold started.
fn invoke(c: &mut Connection, name: &str) -> Result<(Duration, bool), String> {
    let uri = format!("/2015-03-31/functions/{name}/invocations");
    let started = Instant::now();
    let r = expect(
        c.send("POST", &uri, PAYLOAD, &[]),
        200,
        &format!("invoke {name}"),
    )?;
    Ok((
        started.elapsed(),
        r.header("x-ember-cold-start") == Some("true"),
    ))
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Warm invocations per second of `name` from `clients` connections.
fn throughput(host: &str, name: &str, clients: usize, secs: u64) -> Result<f64, String> {
    let run = Duration::from_secs(secs);
    let counts: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || -> Result<u64, String> {
                    let mut c = connect(host)?;
                    // Each client first gets a warm slot of its own.
                    for _ in 0..3 {
                        invoke(&mut c, name)?;
                    }
                    let start = Instant::now();
                    let mut n = 0;
                    while start.elapsed() < run {
                        invoke(&mut c, name)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("a client panicked".into())))
            .collect()
    });
    let mut total = 0;
    for n in counts {
        total += n?;
    }
    Ok(total as f64 / run.as_secs_f64())
}

fn run() -> Result<(), String> {
    let Some(args) = parse()? else {
        return Ok(());
    };
    let bootstrap =
        std::fs::read(&args.bootstrap).map_err(|e| format!("read {}: {e}", args.bootstrap))?;
    let code = zip_file(&[("bootstrap", &bootstrap, 0o755)]);
    // The router may still be starting.
    let mut c = Connection::open_within(
        &args.host,
        KEY,
        Duration::from_secs(120),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("connect {}: {e}", args.host))?;
    let names: Vec<String> = (0..args.cold).map(|i| format!("noop-{i}")).collect();
    for name in &names {
        let body = serde_json::json!({
            "FunctionName": name,
            "Runtime": "provided.al2023",
            "Role": "arn:aws:iam::123456789012:role/ember",
            "Handler": "bootstrap",
            "Code": { "ZipFile": code },
            "MemorySize": 128,
            "Timeout": 10,
        });
        expect(
            c.send(
                "POST",
                "/2015-03-31/functions",
                body.to_string().as_bytes(),
                &[],
            ),
            201,
            &format!("create {name}"),
        )?;
    }
    for name in &names {
        let (took, cold) = invoke(&mut c, name)?;
        if !cold {
            return Err(format!(
                "the first invocation of {name} was not a cold start"
            ));
        }
        println!("COLD_MS {}", ms(took));
    }
    // The most recently used VM: still warm whatever the capacity evicted.
    let warm = &names[names.len() - 1];
    for _ in 0..args.warm {
        let (took, cold) = invoke(&mut c, warm)?;
        if cold {
            return Err("a warm invocation cold started".into());
        }
        println!("WARM_MS {}", ms(took));
    }
    for clients in [1, 4] {
        let rps = throughput(&args.host, warm, clients, args.secs)?;
        println!("RPS_C{clients} {rps:.1}");
    }
    if args.idle > 0 {
        if let Err(e) = under_idle(&args, warm) {
            println!("IDLE_FAILED {e}");
        }
    }
    Ok(())
}

/// The warm measurements again, from new connections, while `args.idle`
/// other connections sit open sending nothing.
fn under_idle(args: &Args, warm: &str) -> Result<(), String> {
    raise_nofile();
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let s = std::net::TcpStream::connect(&args.host)
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        idle.push(s);
    }
    let mut c = connect_within(&args.host, Duration::from_secs(10))?;
    for _ in 0..args.warm {
        let (took, _) = invoke(&mut c, warm)?;
        println!("WARM_IDLE_MS {}", ms(took));
    }
    for clients in [1, 4] {
        let rps = throughput(&args.host, warm, clients, args.secs)?;
        println!("RPS_IDLE_C{clients} {rps:.1}");
    }
    drop(idle);
    Ok(())
}

/// This process holds both ends' worth of idle sockets: soft limit to hard.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
