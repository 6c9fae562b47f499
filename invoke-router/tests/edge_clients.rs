//! Real sizes end to end through the edge, with the fake VMM running the
//! real guest agent (host tier): a 45 MiB zip and a 5 MiB payload from our
//! client over HTTP, then the same with boto3 over HTTPS as users drive
//! it, with Lambda's 413s as boto3 reports them.

mod common;
mod edge_support;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use edge_support::*;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

/// Not a test: the fake VMM's entry point (see `support`). The router
/// hands a VMM an ext4 image; the fake one unpacks it (debugfs, no mount)
/// into a directory to use as `/var/task`.
#[test]
fn fake_vmm_entry() {
    if let Ok(args) = std::env::var("EMBER_FAKE_VMM_ARGS") {
        std::env::set_var("EMBER_FAKE_VMM_ARGS", unpack_drive(&args));
    }
    support::fake_vmm_main();
}

fn unpack_drive(args: &str) -> String {
    let mut lines: Vec<String> = args.lines().map(String::from).collect();
    let at = |flag: &str| lines.iter().position(|a| a == flag).map(|i| i + 1);
    let (Some(drive), Some(uds)) = (at("--drive"), at("--vsock-uds")) else {
        return args.to_string();
    };
    let image = PathBuf::from(lines[drive].trim_end_matches(",ro"));
    if !image.is_file() {
        return args.to_string();
    }
    let task = Path::new(&lines[uds]).parent().unwrap().join("task");
    std::fs::create_dir_all(&task).unwrap();
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", task.display()))
        .arg(&image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs: {out:?}");
    lines[drive] = format!("{},ro", task.display());
    lines.join("\n")
}

/// A zip (stored, not deflated: the content is incompressible anyway).
fn stored_zip(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(*mode)
            .large_file(false);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

const MIB: usize = 1024 * 1024;

/// A zip just over 45 MiB: one incompressible 45 MiB file.
fn zip_45_mib() -> Vec<u8> {
    let zip = stored_zip(&[("blob.bin", &noise(45 * MIB), 0o644)]);
    assert!(
        zip.len() > 45 * MIB && zip.len() < 45 * MIB + 4096,
        "{}",
        zip.len()
    );
    zip
}

fn exec_function(name: &str, handler: &str, zip: &[u8]) -> Value {
    json!({
        "FunctionName": name,
        "Runtime": "exec",
        "Role": "arn:aws:iam::123456789012:role/lambda",
        "Handler": handler,
        "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
        "MemorySize": 128,
        "Timeout": 60,
    })
}

/// A JSON string document of exactly `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let mut v = vec![b'a'; len];
    v[0] = b'"';
    v[len - 1] = b'"';
    v
}

#[tokio::test]
async fn a_45_mib_zip_and_a_5_mib_payload_work_end_to_end() {
    let env = support::env(support::Settings::default());
    let data = env.dir.path().join("data");
    let vmm = env.dir.path().join("fake-vmm");
    let server = start(&data, |c| c.guest.vmm = vmm).await;
    let addr = server.local_addr;
    let zip = zip_45_mib();
    let doc = exec_function("big", "wc -c < blob.bin", &zip).to_string();
    assert!(doc.len() > 60 * MIB, "{}", doc.len());
    let r = call(addr, "POST", "/2015-03-31/functions", doc.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["CodeSize"], json!(zip.len()));
    let r = call(addr, "POST", "/2015-03-31/functions/big/invocations", b"{}").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-amz-function-error"), None);
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim(),
        (45 * MIB).to_string()
    );

    let small = stored_zip(&[("README", b"counts its event\n", 0o644)]);
    let doc = exec_function("count", "wc -c", &small).to_string();
    let r = call(addr, "POST", "/2015-03-31/functions", doc.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let payload = json_of_len(5 * MIB);
    let r = call(
        addr,
        "POST",
        "/2015-03-31/functions/count/invocations",
        &payload,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim(),
        (5 * MIB).to_string()
    );
    server.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM files in
/// `dir`): (ca.pem, cert.pem, key.pem).
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Ember test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ember router");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test]
async fn tls_round_trip_and_plain_http_on_the_tls_port_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let server = start(&dir.path().join("data"), |c| {
        c.edge.tls_cert = Some(cert);
        c.edge.tls_key = Some(key);
    })
    .await;
    assert!(server.tls);
    let addr = server.local_addr;

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = "/2015-03-31/functions/";
    let mut req = hyper::Request::builder().method("GET").uri(uri);
    for (k, v) in signed_headers(addr, "GET", uri, b"", &[]) {
        req = req.header(k, v);
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Full::new(hyper::body::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let r = reply_of(resp).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "Functions": [] }));

    // Plain HTTP to the TLS port: no HTTP answer, the connection closes.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    write(
        &mut plain,
        &head_bytes("GET", uri, &[("host".into(), addr.to_string())]),
    )
    .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf),
    )
    .await
    .expect("the TLS port kept a plain-HTTP connection open");
    let _ = read;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    server.shutdown().await;
}

/// The Python with boto3: `EMBER_PYTHON`, else the venv `tests/run` and
/// `.ci/run` install, else `python3`. Fails loudly without boto3.
fn python_with_boto3() -> PathBuf {
    let candidates = [
        std::env::var_os("EMBER_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("/opt/ember-awscli/bin/python3")),
        Some(PathBuf::from("python3")),
    ];
    for py in candidates.into_iter().flatten() {
        let ok = Command::new(&py)
            .args(["-c", "import boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py;
        }
    }
    panic!(
        "no Python with boto3: tests/run installs it into /opt/ember-awscli \
         (or set EMBER_PYTHON to a python3 that has boto3)"
    );
}

#[tokio::test]
async fn boto3_over_https_uploads_45_mib_invokes_5_mib_and_sees_lambdas_413s() {
    let python = python_with_boto3();
    let env = support::env(support::Settings::default());
    let (ca, cert, key) = tls_files(env.dir.path());
    let vmm = env.dir.path().join("fake-vmm");
    let server = start(&env.dir.path().join("data"), |c| {
        c.guest.vmm = vmm;
        c.edge.tls_cert = Some(cert);
        c.edge.tls_key = Some(key);
    })
    .await;
    let big = env.dir.path().join("big.zip");
    let big_zip = zip_45_mib();
    std::fs::write(&big, &big_zip).unwrap();
    let small = env.dir.path().join("small.zip");
    std::fs::write(&small, stored_zip(&[("README", b"x\n", 0o644)])).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/edge_boto3.py");
    let endpoint = format!("https://{}", server.local_addr);
    let run = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .env("ENDPOINT", endpoint)
            .env("CA_BUNDLE", &ca)
            .env("ACCESS_KEY", KEY_A)
            .env("SECRET_KEY", SECRET_A)
            .env("BIG_ZIP", &big)
            .env("SMALL_ZIP", &small)
            .output()
            .expect("run python")
    });
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the boto3 script ran over 300 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 script failed:\n{stdout}\n{stderr}"
    );
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(got["create_big"], json!(201), "{got}");
    assert_eq!(got["code_size"], json!(big_zip.len()), "{got}");
    assert_eq!(got["big_result"], json!((45 * MIB).to_string()), "{got}");
    assert_eq!(
        got["five_mib_result"],
        json!((5 * MIB).to_string()),
        "{got}"
    );
    assert_eq!(got["tail_has_log"], json!(true), "{got}");
    assert_eq!(
        got["over_6_mib"],
        json!(["RequestEntityTooLargeException", 413]),
        "{got}"
    );
    assert_eq!(
        got["event_over_256_kib"],
        json!(["RequestEntityTooLargeException", 413]),
        "{got}"
    );
    assert_eq!(got["event_small"], json!(202), "{got}");
    server.shutdown().await;
}
