//! Durability of the control plane against the real server (no VMs): state
//! file modes, a crash between storing code and committing its registry
//! row, a disk that fills up during an upload, and per-tenant quotas.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::*;
use ember_invoke_router::codestore::CodeStore;
use ember_invoke_router::quotas::Quotas;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const FUNCTIONS: &str = "/2015-03-31/functions";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// `n` bytes no compressor shrinks.
fn noise(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = Sha256::digest([seed]);
    while out.len() < n {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(n);
    out
}

fn create_with_zip(name: &str, zip_b64: &str) -> Value {
    json!({
        "FunctionName": name,
        "Runtime": "provided.al2023",
        "Role": "arn:aws:iam::123456789012:role/lambda",
        "Handler": "bootstrap",
        "Code": { "ZipFile": zip_b64 },
    })
}

fn noise_zip(n: usize, seed: u8) -> String {
    zip_of(&[
        ("bootstrap", b"#!/bin/sh\necho hi\n", 0o755),
        ("blob", &noise(n, seed), 0o644),
    ])
}

fn names(r: &Reply) -> Vec<String> {
    r.json()["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn state_files_are_private_whatever_the_umask() {
    // The laxest umask: without explicit modes, everything would be 0666/0777.
    // SAFETY: umask(2) swaps the process's mask; the other tests here only
    // get more permissive defaults, which their own files do not rely on.
    unsafe { libc::umask(0) };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    assert_eq!(mode(&data), 0o777);
    let api = Api::start(&data).await;
    let r = api.call("POST", FUNCTIONS, create_body("f")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = api
        .raw(
            "POST",
            "/2015-03-31/functions/f/invocations",
            b"{}".to_vec(),
            &[("x-amz-invocation-type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    api.stop().await;
    let dirs = ["", "code", "code/zips", "code/images", "code/tmp", "events"];
    let files = [
        "registry.sqlite3",
        "registry.sqlite3-wal",
        "registry.sqlite3-shm",
        "events/journal.jsonl",
    ];
    let check = || {
        for d in dirs {
            assert_eq!(mode(&data.join(d)), 0o700, "{d}/");
        }
        for f in files {
            let p = data.join(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            } else {
                assert!(f.ends_with("-wal") || f.ends_with("-shm"), "{f} missing");
            }
        }
        assert_eq!(mode(&data.join("registry.sqlite3")), 0o600);
        for zip in entries(&data.join("code/zips")) {
            assert_eq!(mode(&zip), 0o400, "{}", zip.display());
        }
    };
    check();

    // What an older version left world-readable is fixed at start.
    for d in dirs {
        std::fs::set_permissions(data.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in files {
        let _ = std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644));
    }
    let api = Api::start(&data).await;
    api.stop().await;
    check();
}

#[tokio::test]
async fn a_crash_between_code_write_and_registry_commit_leaves_a_consistent_state() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let kept = api.call("POST", FUNCTIONS, create_body("kept")).await;
    assert_eq!(kept.status, 201);
    api.stop().await;
    let before_zips = entries(&data.path().join("code/zips"));
    let before_images = entries(&data.path().join("code/images"));
    assert_eq!((before_zips.len(), before_images.len()), (1, 1));

    // The crash: an upload stored its code, then the process died before
    // the registry row was committed; and one died in the middle of a
    // store, leaving its work dir and a half-written image.
    let orphan_zip = base64::engine::general_purpose::STANDARD
        .decode(noise_zip(50_000, 1))
        .unwrap();
    let orphan = CodeStore::open(data.path())
        .unwrap()
        .store(&orphan_zip)
        .unwrap();
    assert!(orphan.image.is_file());
    let work = data.path().join("code/tmp/interrupted");
    std::fs::create_dir_all(work.join("tree")).unwrap();
    std::fs::write(work.join("image.ext4"), b"half").unwrap();
    std::fs::write(data.path().join("code/images/stray.ext4.part"), b"x").unwrap();

    // Restart: the orphans are gone, the function's code is not.
    let api = Api::start(data.path()).await;
    assert_eq!(entries(&data.path().join("code/zips")), before_zips);
    assert_eq!(entries(&data.path().join("code/images")), before_images);
    assert!(entries(&data.path().join("code/tmp")).is_empty());
    let list = api.call("GET", &format!("{FUNCTIONS}/"), Value::Null).await;
    assert_eq!(names(&list), ["kept"]);
    // The interrupted upload, sent again, works.
    let again = api
        .call(
            "POST",
            FUNCTIONS,
            create_with_zip("again", &noise_zip(50_000, 1)),
        )
        .await;
    assert_eq!(
        again.status,
        201,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let store = CodeStore::open(data.path()).unwrap();
    assert!(store.contains(&orphan.sha256_hex));
    let got = api
        .call("GET", &format!("{FUNCTIONS}/kept"), Value::Null)
        .await;
    assert_eq!(got.status, 200);
    api.stop().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as the full disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a failed test may leave the server holding files.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn disk_full_during_an_upload_leaves_no_half_created_function() {
    let disk = SmallDisk::mount("4m");
    let data = disk.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let api = Api::start(&data).await;
    let small = api.call("POST", FUNCTIONS, create_body("small")).await;
    assert_eq!(
        small.status,
        201,
        "{}",
        String::from_utf8_lossy(&small.body)
    );
    let zips = entries(&data.join("code/zips"));
    let images = entries(&data.join("code/images"));

    // 1.4 MB of incompressible code: unpacked, imaged and copied it needs
    // more than the disk has left.
    let big = api
        .call(
            "POST",
            FUNCTIONS,
            create_with_zip("big", &noise_zip(1_400_000, 2)),
        )
        .await;
    big.assert_error(500, "ServiceException");
    let msg = big.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("No space left"), "{msg}");
    // Nothing of it is left: no function, no code, no work files.
    api.call("GET", &format!("{FUNCTIONS}/big"), Value::Null)
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(entries(&data.join("code/zips")), zips);
    assert_eq!(entries(&data.join("code/images")), images);
    assert!(entries(&data.join("code/tmp")).is_empty());
    // A disk with no byte left: a registry commit fails too, and changes
    // nothing.
    let filler = disk.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[7u8; 4096]).is_ok() {}
    }
    let conf = format!("{FUNCTIONS}/small/configuration");
    let r = api
        .call("PUT", &conf, json!({ "Description": "changed" }))
        .await;
    r.assert_error(500, "ServiceException");
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("full"), "{msg}");
    let got = api.call("GET", &conf, Value::Null).await;
    assert_eq!(got.json()["Description"], "", "{}", got.json());
    api.call("POST", FUNCTIONS, create_body("none"))
        .await
        .assert_error(500, "ServiceException");
    std::fs::remove_file(&filler).unwrap();
    assert!(entries(&data.join("code/tmp")).is_empty());
    assert_eq!(entries(&data.join("code/zips")), zips);

    // The router still works, and keeps working after a restart.
    let next = api.call("POST", FUNCTIONS, create_body("next")).await;
    assert_eq!(next.status, 201, "{}", String::from_utf8_lossy(&next.body));
    api.stop().await;
    let api = Api::start(&data).await;
    let list = api.call("GET", &format!("{FUNCTIONS}/"), Value::Null).await;
    assert_eq!(names(&list), ["next", "small"]);
    api.stop().await;
}

#[tokio::test]
async fn tenant_quotas_on_functions_and_code_bytes() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path());
    cfg.tenants[0].quotas = Quotas {
        max_functions: 2,
        max_code_bytes: 30_000,
        ..Quotas::default()
    };
    cfg.tenants[1].quotas = Quotas {
        max_functions: 3,
        ..Quotas::default()
    };
    let api = Api::start_with(cfg).await;

    // Function count: the third is refused, and nothing of it is stored.
    for name in ["f1", "f2"] {
        let r = api.call("POST", FUNCTIONS, create_body(name)).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let zips = entries(&data.path().join("code/zips"));
    let r = api
        .call(
            "POST",
            FUNCTIONS,
            create_with_zip("f3", &noise_zip(1000, 3)),
        )
        .await;
    r.assert_error(409, "ResourceConflictException");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("quota of 2 functions"));
    assert_eq!(entries(&data.path().join("code/zips")), zips);

    // Code bytes: an update past the quota is refused and changes nothing.
    let before = api
        .call("GET", &format!("{FUNCTIONS}/f1"), Value::Null)
        .await
        .json()["Configuration"]["CodeSha256"]
        .clone();
    let r = api
        .call(
            "PUT",
            &format!("{FUNCTIONS}/f1/code"),
            json!({ "ZipFile": noise_zip(30_000, 4) }),
        )
        .await;
    r.assert_error(400, "CodeStorageExceededException");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("30000 bytes"));
    let after = api
        .call("GET", &format!("{FUNCTIONS}/f1"), Value::Null)
        .await
        .json()["Configuration"]["CodeSha256"]
        .clone();
    assert_eq!(before, after);
    // One that fits is fine; deleting frees the count.
    let r = api
        .call(
            "PUT",
            &format!("{FUNCTIONS}/f1/code"),
            json!({ "ZipFile": noise_zip(20_000, 5) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = api
        .call("DELETE", &format!("{FUNCTIONS}/f2"), Value::Null)
        .await;
    assert_eq!(r.status, 204);
    api.call(
        "POST",
        FUNCTIONS,
        create_with_zip("f3", &noise_zip(20_000, 6)),
    )
    .await
    .assert_error(400, "CodeStorageExceededException");
    let r = api.call("POST", FUNCTIONS, create_body("f3")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // Concurrent creates cannot overshoot: tenant B may have 3 of 8.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (addr, body) = (api.addr, create_body(&format!("b{i}")).to_string());
        creates.spawn(async move {
            let signing = Signing::Key(KEY_B, SECRET_B);
            send(addr, "POST", FUNCTIONS, body.into_bytes(), &[], signing).await
        });
    }
    let replies = creates.join_all().await;
    let ok = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        ok,
        3,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 201) {
        r.assert_error(409, "ResourceConflictException");
    }
    api.stop().await;
}

/// The test runtime has one thread, which the server shares: a registry
/// commit on it would stall every request.
#[tokio::test]
async fn a_stalled_registry_commit_does_not_stall_other_requests() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(data.path()).await;
    let r = api.call("POST", FUNCTIONS, create_body("f")).await;
    assert_eq!(r.status, 201);
    // Another writer holds the database's write lock for 3 s (as a slow
    // fsync would hold the router's own commit).
    let db = data.path().join("registry.sqlite3");
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked.recv().unwrap();
    let start = std::time::Instant::now();
    let (addr, body) = (api.addr, create_body("g").to_string().into_bytes());
    let create = tokio::spawn(async move {
        let signing = Signing::Key(KEY_A, SECRET_A);
        let r = send(addr, "POST", FUNCTIONS, body, &[], signing).await;
        (r, start.elapsed())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let get = api
        .call("GET", &format!("{FUNCTIONS}/f"), Value::Null)
        .await;
    assert_eq!(get.status, 200);
    let list = api
        .call_as_b("GET", &format!("{FUNCTIONS}/"), Value::Null)
        .await;
    assert_eq!(list.status, 200);
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2000),
        "reads waited {took:?} for a blocked commit"
    );
    let (r, create_took) = create.await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        create_took >= std::time::Duration::from_millis(2500),
        "the create did not wait for the lock: {create_took:?}"
    );
    holder.join().unwrap();
    api.stop().await;
}
