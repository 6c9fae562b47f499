//! Control-plane locks are per function: one tenant's slow upload (here a
//! `mkfs.ext4` that takes 15 s) does not hold up another tenant's create or
//! get, nor the same tenant's other functions; two changes to one function
//! still wait for each other.
//!
//! The slow mkfs is a script named `mkfs.ext4` first on PATH: it sleeps when
//! the tree it images holds a file `SLOW_MKFS`, then runs the real one. PATH
//! is process-wide, so this file holds this one test only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const FUNCTIONS: &str = "/2015-03-31/functions";
const SLOW: Duration = Duration::from_secs(15);

const SLOW_MKFS: &str = r#"#!/bin/sh
# Test stand-in: a slow mkfs.ext4 for trees holding SLOW_MKFS.
tree=""
prev=""
for a in "$@"; do
    [ "$prev" = "-d" ] && tree="$a"
    prev="$a"
done
if [ -n "$tree" ] && [ -e "$tree/SLOW_MKFS" ]; then
    touch "$tree/../mkfs-started"
    sleep "$(cat "$tree/SLOW_MKFS")"
fi
for d in /usr/sbin /sbin /usr/bin /bin; do
    [ -x "$d/mkfs.ext4" ] && exec "$d/mkfs.ext4" "$@"
done
echo "no real mkfs.ext4" >&2
exit 1
"#;

fn install_slow_mkfs(dir: &Path) {
    let script = dir.join("mkfs.ext4");
    std::fs::write(&script, SLOW_MKFS).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
}

fn create(name: &str, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    json!({
        "FunctionName": name,
        "Runtime": "provided.al2023",
        "Role": "arn:aws:iam::123456789012:role/lambda",
        "Handler": "bootstrap",
        "Code": { "ZipFile": zip_of(files) },
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_slow_upload_does_not_hold_up_others() {
    let bin = tempfile::tempdir().unwrap();
    install_slow_mkfs(bin.path());
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let addr = api.addr;
    let a = Signing::Key(KEY_A, SECRET_A);
    let b = Signing::Key(KEY_B, SECRET_B);
    // Tenant B has a function already.
    let r = send(
        addr,
        "POST",
        FUNCTIONS,
        create_body("b-old").to_string().into_bytes(),
        &[],
        b,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // Tenant A's slow upload.
    let secs = SLOW.as_secs().to_string();
    let slow_body = create(
        "slow",
        &[
            ("bootstrap", b"#!/bin/sh\necho slow\n", 0o755),
            ("SLOW_MKFS", secs.as_bytes(), 0o644),
        ],
    );
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        let r = send(addr, "POST", FUNCTIONS, slow_body, &[], a).await;
        (r, started.elapsed())
    });
    // Until its mkfs runs.
    let tmp = data.path().join("code/tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&tmp)
        .unwrap()
        .any(|e| e.unwrap().path().join("mkfs-started").exists())
    {
        assert!(Instant::now() < deadline, "the slow mkfs never started");
        assert!(!slow.is_finished(), "the slow create ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second change to the same function waits for the first.
    let same_body = create("slow", &[("bootstrap", b"#!/bin/sh\necho other\n", 0o755)]);
    let same = tokio::spawn(async move {
        let r = send(addr, "POST", FUNCTIONS, same_body, &[], a).await;
        (r, started.elapsed())
    });

    // Meanwhile: B creates, gets and lists; A creates another function.
    let quick = Instant::now();
    let r = send(
        addr,
        "POST",
        FUNCTIONS,
        create_body("b-new").to_string().into_bytes(),
        &[],
        b,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = send(addr, "GET", &format!("{FUNCTIONS}/b-old"), vec![], &[], b).await;
    assert_eq!(r.status, 200);
    let r = send(addr, "GET", &format!("{FUNCTIONS}/"), vec![], &[], b).await;
    assert_eq!(r.status, 200);
    let r = send(
        addr,
        "POST",
        FUNCTIONS,
        create_body("a-other").to_string().into_bytes(),
        &[],
        a,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let took = quick.elapsed();
    assert!(
        took < SLOW * 3 / 4,
        "other tenants' and functions' calls took {took:?} during a {SLOW:?} mkfs"
    );
    assert!(
        !slow.is_finished(),
        "the slow create should still be running"
    );

    let (r, slow_took) = slow.await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(slow_took >= SLOW, "{slow_took:?}");
    let (r, same_took) = same.await.unwrap();
    r.assert_error(409, "ResourceConflictException");
    assert!(
        same_took >= SLOW,
        "the second create of 'slow' did not wait: {same_took:?}"
    );
    api.stop().await;
}
