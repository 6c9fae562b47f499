//! `runtime-bench`: cold and warm invoke latency of a hello handler in each
//! runtime, as the router's client on the same host (`bench/runtimes` runs
//! it in the soft host next to the router).
//!
//!   runtime-bench tenant
//!       prints a tenants file (`--tenants-file`) holding the key it signs with
//!   runtime-bench HOST:PORT BOOTSTRAP [--cold N] [--warm N]
//!
//! For each runtime (`provided.al2023` with BOOTSTRAP, the yardstick;
//! `python3.13`; `nodejs20.x`) creates N hello functions and invokes each
//! once (a cold start each: boot, runtime init, invoke), then invokes the
//! last one N times in a row on one keep-alive connection (warm). Prints
//! `COLD_MS <runtime> <ms>` and `WARM_MS <runtime> <ms>` per sample; any
//! failure ends it with status 1.

use std::time::{Duration, Instant};

use ember_e2e::lambda_api::{zip_file, Connection, Key, Reply};

const KEY: Key = Key {
    id: "AKIAEMBERRTBENCH0000",
    secret: "bench-secret-0123456789",
};
const TENANT: &str = "bench";

const HELLO_PY: &[u8] =
    b"def lambda_handler(event, context):\n    return {'message': 'hello', 'event': event}\n";
const HELLO_JS: &[u8] = b"export const handler = async (event) => ({ message: 'hello', event });\n";

fn main() {
    if let Err(e) = run() {
        eprintln!("runtime-bench: {e}");
        std::process::exit(1);
    }
}

fn expect(r: std::io::Result<Reply>, status: u16, what: &str) -> Result<Reply, String> {
    match r {
        Ok(r) if r.status == status && r.header("x-amz-function-error").is_none() => Ok(r),
        Ok(r) => Err(format!("{what}:\n{r}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn invoke(c: &mut Connection, name: &str) -> Result<Duration, String> {
    let uri = format!("/2015-03-31/functions/{name}/invocations");
    let started = Instant::now();
    expect(
        c.send("POST", &uri, b"{}", &[]),
        200,
        &format!("invoke {name}"),
    )?;
    Ok(started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn run() -> Result<(), String> {
    let mut it = std::env::args().skip(1);
    let usage =
        "usage: runtime-bench tenant | runtime-bench HOST:PORT BOOTSTRAP [--cold N] [--warm N]";
    let host = it.next().ok_or(usage)?;
    if host == "tenant" {
        print!("{}", KEY.tenant_entry(TENANT));
        return Ok(());
    }
    let bootstrap_path = it.next().ok_or(usage)?;
    let (mut cold, mut warm) = (5usize, 100usize);
    while let Some(flag) = it.next() {
        let n = it
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or(format!("{flag} needs a positive number"))?;
        match flag.as_str() {
            "--cold" => cold = n,
            "--warm" => warm = n,
            _ => return Err(format!("unknown option {flag}; {usage}")),
        }
    }
    let bootstrap =
        std::fs::read(&bootstrap_path).map_err(|e| format!("read {bootstrap_path}: {e}"))?;
    let runtimes: [(&str, &str, &str, &[u8], u32); 3] = [
        (
            "provided.al2023",
            "bootstrap",
            "bootstrap",
            &bootstrap,
            0o755,
        ),
        (
            "python3.13",
            "lambda_function.lambda_handler",
            "lambda_function.py",
            HELLO_PY,
            0o644,
        ),
        ("nodejs20.x", "index.handler", "index.mjs", HELLO_JS, 0o644),
    ];
    // The router may still be starting.
    let mut c = Connection::open_within(
        &host,
        KEY,
        Duration::from_secs(120),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("connect {host}: {e}"))?;
    for (runtime, handler, file, code, mode) in runtimes {
        let zip = zip_file(&[(file, code, mode)]);
        let tag = runtime.split('.').next().unwrap_or(runtime);
        let names: Vec<String> = (0..cold).map(|i| format!("hello-{tag}-{i}")).collect();
        for name in &names {
            let body = serde_json::json!({
                "FunctionName": name, "Runtime": runtime, "Handler": handler,
                "Role": "arn:aws:iam::123456789012:role/ember",
                "Code": { "ZipFile": zip }, "MemorySize": 128, "Timeout": 30,
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
            println!("COLD_MS {runtime} {}", ms(invoke(&mut c, name)?));
        }
        let last = names.last().ok_or("no functions")?;
        for _ in 0..warm {
            println!("WARM_MS {runtime} {}", ms(invoke(&mut c, last)?));
        }
        // Free the capacity for the next runtime's cold starts.
        for name in &names {
            expect(
                c.send("DELETE", &format!("/2015-03-31/functions/{name}"), b"", &[]),
                204,
                &format!("delete {name}"),
            )?;
        }
    }
    Ok(())
}
