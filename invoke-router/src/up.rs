//! `ember-invoke-router up`: the README's start command. Builds the guest
//! images if needed, serves the Lambda API on 127.0.0.1:9000 with data under
//! the user's data home, registers sample functions (`hello` in shell,
//! `hello-python` on python3.13, `hello-node` on nodejs20.x), prints the
//! endpoint, the default tenant's credentials and an invoke line for each,
//! and runs until interrupted, then stops every VM.
//!
//! Where `/dev/kvm` is hardware KVM the router runs here, as a child
//! `serve`. Elsewhere the router and its VMs run inside the soft KVM host
//! (`images/softhost`) with the API port forwarded to 127.0.0.1 here; the
//! router's data then lives on an ext4 image in the data directory
//! (`softhost-state.ext4`), attached to the soft host, so it survives too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;

use ember_invoke_router::client::{self, Client};
use ember_invoke_router::durable;
use ember_invoke_router::runtime_images::RuntimeImages;

/// Flags of `up`.
#[derive(Args)]
pub struct UpArgs {
    /// Data directory [default: $XDG_DATA_HOME/ember or ~/.local/share/ember].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Port of the API on 127.0.0.1.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Memory of the soft KVM host in MiB (only without hardware KVM).
    #[arg(long, default_value_t = 4096)]
    softhost_mem_mib: u32,
}

impl Default for UpArgs {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: 9000,
            softhost_mem_mib: 4096,
        }
    }
}

/// The sample function: an `exec` handler that greets and echoes the event.
const HELLO_SH: &[u8] = b"#!/bin/sh\n\
read -r event\n\
printf '{\"message\":\"Hello from Ember\",\"event\":%s}\\n' \"${event:-null}\"\n";

/// The Python sample, as a Lambda tutorial writes it.
const HELLO_PY: &[u8] = b"import json\n\n\n\
def lambda_handler(event, context):\n\
    print('hello-python got', json.dumps(event))\n\
    return {'message': 'Hello from Ember (Python)', 'event': event}\n";

/// The Node.js sample, as a Lambda tutorial writes it.
const HELLO_JS: &[u8] = b"export const handler = async (event) => {\n\
  console.log('hello-node got', JSON.stringify(event));\n\
  return { message: 'Hello from Ember (Node.js)', event };\n\
};\n";

/// A sample function: one file in its zip.
struct Sample {
    name: &'static str,
    runtime: &'static str,
    handler: &'static str,
    file: &'static str,
    code: &'static [u8],
    mode: u32,
}

/// The sample functions `up` registers.
const SAMPLES: &[Sample] = &[
    Sample {
        name: "hello",
        runtime: "exec",
        handler: "./hello.sh",
        file: "hello.sh",
        code: HELLO_SH,
        mode: 0o755,
    },
    Sample {
        name: "hello-python",
        runtime: "python3.13",
        handler: "lambda_function.lambda_handler",
        file: "lambda_function.py",
        code: HELLO_PY,
        mode: 0o644,
    },
    Sample {
        name: "hello-node",
        runtime: "nodejs20.x",
        handler: "index.handler",
        file: "index.mjs",
        code: HELLO_JS,
        mode: 0o644,
    },
];

/// The default tenant's key pair, created on first use. The data directory
/// is 0700 and the file 0600 (both fixed if an older version left them
/// open); the file is written whole or not at all.
fn default_credentials(data_dir: &Path) -> std::io::Result<(String, String)> {
    durable::private_dir(data_dir)?;
    let path = data_dir.join("default-tenant.toml");
    durable::set_mode_if_exists(&path, durable::FILE_MODE)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if let (Some(id), Some(secret)) = (get("access_key_id ="), get("secret_access_key =")) {
            return Ok((id, secret));
        }
    }
    let raw = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let id = format!("AKIAEMBER{}", &raw[..11]);
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let text = format!(
        "# The default tenant of `ember-invoke-router up`.\n[[tenants]]\nid = \"default\"\n\
         [[tenants.keys]]\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
    );
    durable::write_atomic(&path, text.as_bytes(), durable::FILE_MODE)?;
    Ok((id, secret))
}

/// The checkout this binary was built from (it holds `images/`).
fn checkout_root() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no checkout root")?;
    if !root.join("images/build").is_file() {
        return Err(format!(
            "{} has no images/build: run `up` from an Ember checkout (cargo run -p ember-invoke-router -- up)",
            root.display()
        ));
    }
    Ok(root)
}

/// Runs `cmd` and returns its stdout, or why it failed.
fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guest kernel, initramfs and runtime images, built (or found in the
/// cache) by images/build.
fn build_images(repo: &Path) -> Result<(PathBuf, PathBuf, RuntimeImages), String> {
    let text = output(
        Command::new(repo.join("images/build")).arg("--print-paths"),
        "images/build",
    )?;
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .ok_or(format!("images/build printed no {key} line"))
    };
    Ok((
        find("vmlinux=")?,
        find("initramfs=")?,
        RuntimeImages::from_print_paths(&text),
    ))
}

/// A static build of `bin` from `package` (what the soft host needs).
fn static_binary(repo: &Path, package: &str, bin: &str) -> Result<PathBuf, String> {
    let script =
        format!("repo=\"$1\"; source \"$1/images/lib.sh\"; build_static_bin {package} {bin}");
    let path = output(
        Command::new("bash").args(["-c", &script, "up"]).arg(repo),
        &format!("static build of {bin}"),
    )?;
    Ok(PathBuf::from(path.trim()))
}

/// The soft host's persistent disk (the router's whole state): a sparse
/// ext4 image, made once, 0600.
fn state_image(data_dir: &Path, mkfs: &Path) -> Result<PathBuf, String> {
    let image = data_dir.join("softhost-state.ext4");
    if image.is_file() {
        durable::set_mode(&image, durable::FILE_MODE)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        return Ok(image);
    }
    let partial = data_dir.join("softhost-state.ext4.partial");
    durable::create_file(&partial, durable::FILE_MODE)
        .and_then(|f| f.set_len(16 << 30))
        .map_err(|e| format!("creating {}: {e}", partial.display()))?;
    output(
        Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-L",
                "ember-state",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&partial),
        "mkfs.ext4 of the soft host's state image",
    )?;
    std::fs::rename(&partial, &image).map_err(|e| format!("{}: {e}", image.display()))?;
    Ok(image)
}

/// Whether `/dev/kvm` is hardware KVM (else the soft host is needed).
fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Starts the router: here, or inside the soft host.
fn start_router(repo: &Path, args: &UpArgs, data_dir: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let (kernel, initramfs, runtimes) = build_images(repo)?;
    let tenants = data_dir.join("default-tenant.toml");
    let mut cmd = if hardware_kvm() {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", args.port))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(&tenants)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initramfs")
            .arg(&initramfs);
        for (name, image) in runtimes.iter() {
            cmd.arg("--runtime-image")
                .arg(format!("{name}={}", image.display()));
        }
        cmd
    } else {
        eprintln!("ember-invoke-router up: no hardware KVM here: running router and VMs in the soft KVM host");
        let vmm = static_binary(repo, "ember-vmm", "ember-vmm")?;
        let router = static_binary(repo, "ember-invoke-router", "ember-invoke-router")?;
        let mkfs =
            find_in_path("mkfs.ext4").ok_or("mkfs.ext4 not found: apt-get install e2fsprogs")?;
        let state = state_image(data_dir, &mkfs)?;
        let put = |src: &Path, dst: &str| format!("{}:{dst}", src.display());
        let mut cmd = Command::new(repo.join("images/softhost"));
        cmd.args(["--timeout", "0", "--cpus", "2"])
            .arg("--mem")
            .arg(args.softhost_mem_mib.to_string())
            .arg("--forward")
            .arg(args.port.to_string())
            .arg("--disk")
            .arg(&state)
            .args(["--put", &put(&router, "ember-invoke-router")])
            .args(["--put", &put(&vmm, "ember-vmm")])
            .args(["--put", &put(&kernel, "vmlinux")])
            .args(["--put", &put(&initramfs, "initramfs")])
            .args(["--put", &put(&mkfs, "bin/mkfs.ext4")])
            .args(["--put", &put(&tenants, "tenants.toml")]);
        for (name, image) in runtimes.iter() {
            cmd.args(["--put", &put(image, &format!("runtime-{name}.ext4"))]);
        }
        cmd.args(["--env", "PATH=/work/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .arg("--")
            .args(["./ember-invoke-router", "serve", "--listen"])
            .arg(format!("0.0.0.0:{}", args.port))
            .args([
                "--data-dir",
                "/work/disk/router",
                "--config",
                "tenants.toml",
            ])
            .args([
                "--kernel",
                "vmlinux",
                "--initramfs",
                "initramfs",
                "--vmm",
                "./ember-vmm",
            ])
            .arg("--capacity-mem-mib")
            .arg((args.softhost_mem_mib.saturating_sub(512)).to_string());
        for (name, _) in runtimes.iter() {
            cmd.arg("--runtime-image")
                .arg(format!("{name}=runtime-{name}.ext4"));
        }
        cmd
    };
    // Its own process group: an interrupt stops the whole tree in order.
    cmd.process_group(0);
    cmd.spawn().map_err(|e| format!("starting the router: {e}"))
}

/// Waits until the API answers (or the router exits, or 5 minutes pass).
async fn wait_ready(client: &Client, child: &mut Child) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the router exited during start-up ({status})"));
        }
        if let Ok(r) = client
            .call("GET", "/2015-03-31/functions/", vec![], &[])
            .await
        {
            if r.status == 200 {
                return Ok(());
            }
            return Err(format!("the router answers {}: {}", r.status, r.text()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("the router did not answer within 5 minutes".into())
}

/// Registers the sample functions that do not exist yet.
async fn register_hello(client: &Client) -> Result<(), String> {
    for Sample {
        name,
        runtime,
        handler,
        file,
        code,
        mode,
    } in SAMPLES
    {
        let zip = client::zip_base64(&[(file, code, *mode)]).map_err(|e| e.to_string())?;
        let body = serde_json::json!({
            "FunctionName": name,
            "Runtime": runtime,
            "Handler": handler,
            "Role": "arn:aws:iam::000000000000:role/ember",
            "Code": { "ZipFile": zip },
            "MemorySize": 128,
            // Room for a first invocation that finishes a slow init (soft host).
            "Timeout": 30,
        });
        let r = client
            .call(
                "POST",
                "/2015-03-31/functions",
                body.to_string().into_bytes(),
                &[("content-type", "application/json")],
            )
            .await
            .map_err(|e| e.to_string())?;
        match r.status {
            201 | 409 => {}
            other => return Err(format!("registering {name}: {other} {}", r.text())),
        }
    }
    Ok(())
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) of the router's own process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above, now forcefully.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

async fn up(args: UpArgs, default_data_dir: &Path) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir.to_path_buf());
    let (id, secret) = default_credentials(&data_dir)
        .map_err(|e| format!("cannot keep credentials in {}: {e}", data_dir.display()))?;
    let repo = checkout_root()?;
    let mut child = start_router(&repo, &args, &data_dir)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let client = Client::new(addr, &id, &secret, "us-east-1");
    let ready = async {
        wait_ready(&client, &mut child).await?;
        register_hello(&client).await
    };
    if let Err(e) = ready.await {
        stop(&mut child);
        return Err(e);
    }
    let endpoint = format!("http://127.0.0.1:{}", args.port);
    println!(
        "Ember is up: the Lambda API at {endpoint}, with sample functions 'hello' (shell), 'hello-python' and 'hello-node'."
    );
    println!("ENDPOINT={endpoint}");
    println!("AWS_ACCESS_KEY_ID={id}");
    println!("AWS_SECRET_ACCESS_KEY={secret}");
    for Sample { name, .. } in SAMPLES {
        println!(
            "AWS_ACCESS_KEY_ID={id} AWS_SECRET_ACCESS_KEY={secret} aws lambda invoke --endpoint-url {endpoint} --region us-east-1 --function-name {name} out.json && cat out.json"
        );
    }
    println!("Press Ctrl-C to stop (every VM stops with it).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the router stopped ({status})"));
                }
            }
        }
    }
    eprintln!("ember-invoke-router up: stopping");
    stop(&mut child);
    Ok(())
}

/// Runs `up`.
pub fn run(args: UpArgs, default_data_dir: &Path) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember-invoke-router up: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(up(args, default_data_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-invoke-router up: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn credentials_are_private_and_kept() {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("share/ember");
        let (id, secret) = default_credentials(&data).unwrap();
        let file = data.join("default-tenant.toml");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert!(!durable::temp_name(&file).exists());
        // An older version's world-readable files: fixed, same key kept.
        durable::set_mode(&data, 0o755).unwrap();
        durable::set_mode(&file, 0o644).unwrap();
        assert_eq!(default_credentials(&data).unwrap(), (id, secret));
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
