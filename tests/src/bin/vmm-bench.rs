//! `vmm-bench`: times one `ember-vmm` run from the host side (a benchmark
//! tool, run by `bench/vmm`, never by the tests).
//!
//!   vmm-bench MARKER [--vsock UDS PORT] -- VMM ARGS...
//!
//! Starts the VMM, reads the guest console from its stdout, and prints:
//!   TO_MARKER_MS      VMM start → the first console line containing MARKER
//!   TO_VSOCK_RTT_MS   VMM start → first completed vsock round trip (--vsock)
//!   RTT_P50_US / RTT_P99_US   64-byte vsock round trips (1000)
//!   ECHO_MIB_PER_S    8 MiB echoed through vsock
//!   RSS_OUTSIDE_GUEST_KIB    VMM resident memory minus the guest RAM mapping
//!   VMM_THREADS_CPU_MS  CPU time of the VMM's own threads (all but the
//!                     vCPU threads, which run the guest) up to the marker
//! With --vsock the guest must run `vsock-tool guest-echo PORT`; the VMM
//! is stopped with SIGTERM after the measurements (without, with SIGKILL).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ember_protocol::handshake;

fn main() {
    if let Err(e) = run() {
        eprintln!("vmm-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("missing -- VMM ARGS")?;
    let (ours, vmm_args) = (&args[..split], &args[split + 1..]);
    let (marker, vsock) = match ours {
        [m] => (m.clone(), None),
        [m, flag, uds, port] if flag == "--vsock" => (
            m.clone(),
            Some((uds.clone(), port.parse::<u32>().map_err(|_| "bad PORT")?)),
        ),
        _ => return Err("usage: vmm-bench MARKER [--vsock UDS PORT] -- VMM ARGS...".into()),
    };
    let (program, rest) = vmm_args.split_first().ok_or("no VMM command")?;
    let mem_mib = rest
        .windows(2)
        .find(|w| w[0] == "--mem-mib")
        .and_then(|w| w[1].parse::<u64>().ok())
        .unwrap_or(128);

    let start = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains(&marker) {
                let _ = tx.send(start.elapsed());
                sent = true;
            }
        }
    });
    let to_marker = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| "the marker never appeared on the console".to_string())?;
    println!("TO_MARKER_MS {:.1}", ms(to_marker));
    println!("VMM_THREADS_CPU_MS {:.1}", cpu_ms(child.id(), false)?);

    if let Some((uds, port)) = vsock {
        let mut conn = connect_retrying(&uds, port, start)?;
        let mut buf = [0u8; 64];
        roundtrip(&mut conn, &mut buf)?;
        println!("TO_VSOCK_RTT_MS {:.1}", ms(start.elapsed()));
        let mut samples: Vec<Duration> = (0..1000)
            .map(|_| {
                let t = Instant::now();
                roundtrip(&mut conn, &mut buf).map(|_| t.elapsed())
            })
            .collect::<Result<_, _>>()?;
        samples.sort();
        println!("RTT_P50_US {}", samples[500].as_micros());
        println!("RTT_P99_US {}", samples[990].as_micros());
        println!("ECHO_MIB_PER_S {:.2}", echo_throughput(&mut conn, 8 << 20)?);
        println!(
            "RSS_OUTSIDE_GUEST_KIB {}",
            rss_outside_guest(child.id(), mem_mib)?
        );
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    } else {
        println!(
            "RSS_OUTSIDE_GUEST_KIB {}",
            rss_outside_guest(child.id(), mem_mib)?
        );
        // Nothing more to measure, and the guest may run on forever.
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    let status = wait(&mut child)?;
    println!("VMM_EXIT {}", status.code().unwrap_or(-1));
    println!("TOTAL_MS {:.1}", ms(start.elapsed()));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn wait(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    child.wait().map_err(|e| format!("wait: {e}"))
}

/// Retries the protocol's handshake every millisecond (boot time is what
/// is measured, so the pause is kept short).
fn connect_retrying(uds: &str, port: u32, start: Instant) -> Result<UnixStream, String> {
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        match handshake::connect(std::path::Path::new(uds), port, Duration::from_secs(10)) {
            Ok(s) => {
                // Every later read is bounded too.
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.is_retryable() => last = e.to_string(),
            Err(e) => return Err(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!("no vsock connection: {last}"))
}

fn roundtrip(conn: &mut UnixStream, buf: &mut [u8; 64]) -> Result<(), String> {
    conn.write_all(&[0x5a; 64])
        .map_err(|e| format!("send: {e}"))?;
    conn.read_exact(buf).map_err(|e| format!("receive: {e}"))?;
    if buf.iter().any(|&b| b != 0x5a) {
        return Err("round trip echo differs".into());
    }
    Ok(())
}

fn echo_throughput(conn: &mut UnixStream, bytes: usize) -> Result<f64, String> {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let got = std::thread::scope(|s| {
        let sender = s.spawn(|| writer.write_all(&data));
        let mut got = vec![0u8; bytes];
        let r = conn.read_exact(&mut got);
        let w = sender.join();
        r.map_err(|e| format!("receive: {e}"))?;
        w.map_err(|_| "sender panicked".to_string())?
            .map_err(|e| format!("send: {e}"))?;
        Ok::<_, String>(got)
    })?;
    let secs = start.elapsed().as_secs_f64();
    if got != data {
        return Err("bulk echo differs".into());
    }
    Ok(bytes as f64 / f64::from(1 << 20) / secs)
}

/// Resident KiB of every mapping except the guest RAM (the mapping whose
/// size is the guest memory size).
fn rss_outside_guest(pid: u32, mem_mib: u64) -> Result<u64, String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("read smaps: {e}"))?;
    let guest_kib = mem_mib << 10;
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Size:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap_or(0);
            in_guest = kib == guest_kib;
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            if !in_guest {
                total += kib
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// utime + stime of the threads of `pid`: the vCPU threads (named vcpuN)
/// only when `vcpus`, else all the others.
fn cpu_ms(pid: u32, vcpus: bool) -> Result<f64, String> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("read tasks: {e}"))?;
    let mut ticks = 0.0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat"))
            .map_err(|e| format!("read stat: {e}"))?;
        let (head, after) = stat.rsplit_once(')').ok_or("bad stat")?;
        let is_vcpu = head
            .rsplit_once('(')
            .is_some_and(|(_, comm)| comm.starts_with("vcpu"));
        if is_vcpu != vcpus {
            continue;
        }
        let fields: Vec<&str> = after.split_whitespace().collect();
        ticks += fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .ok_or("bad utime")?
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or("bad stime")?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e3 / hz)
}
