//! Code store tests: zips built here, images checked with `debugfs`.

use std::io::Write;

use zip::write::SimpleFileOptions;

use super::*;

/// An entry of a test zip.
pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

/// Builds a zip in memory.
pub fn make_zip(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    for e in entries {
        match e {
            Entry::File(name, data, mode) => {
                let opts = SimpleFileOptions::default().unix_permissions(*mode);
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            Entry::Dir(name) => w
                .add_directory(*name, SimpleFileOptions::default())
                .unwrap(),
            Entry::Link(name, target) => w
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn invalid_message(r: Result<StoredCode, CodeError>) -> String {
    match r {
        Err(CodeError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_zip_becomes_a_read_only_image_with_modes_kept() {
    let data = tempfile::tempdir().unwrap();
    let store = CodeStore::open(data.path()).unwrap();
    let zip = make_zip(&[
        Entry::File("bootstrap", b"#!/bin/sh\necho hi\n", 0o700),
        Entry::Dir("lib/"),
        Entry::File("lib/data.txt", b"hello", 0o600),
        Entry::Link("lib/link", "data.txt"),
    ]);
    let stored = store.store(&zip).unwrap();
    assert_eq!(stored.size, zip.len() as u64);
    assert_eq!(stored.sha256_hex.len(), 64);
    assert!(store.contains(&stored.sha256_hex));
    let meta = fs::metadata(&stored.image).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);

    let boot = debugfs(&stored.image, "stat /bootstrap");
    assert!(boot.contains("Mode:  0755"), "{boot}");
    assert!(boot.contains("User:     0"), "{boot}");
    let txt = debugfs(&stored.image, "stat /lib/data.txt");
    assert!(txt.contains("Mode:  0644"), "{txt}");
    assert_eq!(debugfs(&stored.image, "cat /lib/data.txt"), "hello");
    let link = debugfs(&stored.image, "stat /lib/link");
    assert!(link.contains("Type: symlink"), "{link}");
    // Nothing left in tmp.
    assert_eq!(
        fs::read_dir(data.path().join("code/tmp")).unwrap().count(),
        0
    );

    // Equal zips are stored once, and the store survives a reopen.
    let again = CodeStore::open(data.path()).unwrap().store(&zip).unwrap();
    assert_eq!(again, stored);
    store.remove(&stored.sha256_hex);
    assert!(!store.contains(&stored.sha256_hex));
}

#[test]
fn bad_zips_are_refused_and_leave_nothing() {
    let data = tempfile::tempdir().unwrap();
    let store = CodeStore::open(data.path()).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not a zip".to_vec(), "Could not unzip"),
        (make_zip(&[Entry::File("../evil", b"x", 0o644)]), "outside"),
        (
            make_zip(&[Entry::File("/etc/evil", b"x", 0o644)]),
            "outside",
        ),
        (
            make_zip(&[Entry::File("a/../../evil", b"x", 0o644)]),
            "outside",
        ),
        (make_zip(&[Entry::Link("up", "../x")]), "outside"),
        (make_zip(&[Entry::Link("a/b", "../../x")]), "outside"),
        (make_zip(&[Entry::Link("abs", "/etc/passwd")]), "outside"),
        (
            make_zip(&[
                Entry::File("f", b"x", 0o644),
                Entry::File("f/g", b"y", 0o644),
            ]),
            "both as a file",
        ),
    ];
    for (zip, want) in cases {
        let msg = invalid_message(store.store(&zip));
        assert!(msg.contains(want), "{msg} should say {want}");
    }
    // Truncated: the central directory is gone.
    let good = make_zip(&[Entry::File("f", &[7u8; 10_000], 0o644)]);
    assert!(invalid_message(store.store(&good[..good.len() - 30])).contains("Could not unzip"));
    // Too large, zipped.
    let big = vec![0u8; MAX_ZIP_LEN + 1];
    assert!(invalid_message(store.store(&big)).contains("Zipped size"));
    assert_eq!(
        fs::read_dir(data.path().join("code/tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        fs::read_dir(data.path().join("code/images"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(data.path().join("code/zips")).unwrap().count(),
        0
    );
}

#[test]
fn links_inside_the_tree_are_fine() {
    assert!(check_link(Path::new("a/b/c"), "../d").is_ok());
    assert!(check_link(Path::new("a/b"), "../d/./e").is_ok());
    assert!(check_link(Path::new("a"), "b/../c").is_ok());
    assert!(check_link(Path::new("a"), "..").is_err());
}

#[test]
fn the_unzipped_limit_counts_real_bytes() {
    let tree = tempfile::tempdir().unwrap();
    let mut sink = Vec::new();
    let mut src = io::Cursor::new(vec![1u8; 100]);
    assert!(copy_limited(&mut src, &mut sink, 99).is_err());
    let mut src = io::Cursor::new(vec![1u8; 100]);
    assert_eq!(copy_limited(&mut src, &mut sink, 100).unwrap(), 100);
    drop(tree);
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Overwrites a stored (read-only) file with `bytes`.
fn damage(p: &Path, bytes: &[u8]) {
    durable::set_mode(p, 0o600).unwrap();
    fs::write(p, bytes).unwrap();
}

#[test]
fn contains_checks_what_it_finds_and_store_repairs_it() {
    let data = tempfile::tempdir().unwrap();
    let store = CodeStore::open(data.path()).unwrap();
    for d in ["code", "code/zips", "code/images", "code/tmp"] {
        assert_eq!(mode(&data.path().join(d)), 0o700, "{d}");
    }
    let zip = make_zip(&[Entry::File("bootstrap", &[5u8; 300_000], 0o755)]);
    let stored = store.store(&zip).unwrap();
    assert_eq!(mode(&store.zip_path(&stored.sha256_hex)), 0o400);
    assert!(store.contains(&stored.sha256_hex));
    let image = fs::read(&stored.image).unwrap();

    // A truncated image (a copy cut short, a disk that lost its tail).
    damage(&stored.image, &image[..image.len() / 2]);
    let why = store.check(&stored.sha256_hex).unwrap_err();
    assert!(why.contains("superblock counts"), "{why}");
    assert!(store.store(&zip).is_ok());
    assert!(store.contains(&stored.sha256_hex));
    assert_eq!(fs::read(&stored.image).unwrap().len(), image.len());

    // An image that is no file system at all.
    damage(&stored.image, &vec![0u8; image.len()]);
    assert!(store
        .check(&stored.sha256_hex)
        .unwrap_err()
        .contains("no ext4"));
    // A zip whose content is not what its name says (same size).
    store.store(&zip).unwrap();
    let mut bad = zip.clone();
    bad[10] ^= 0xff;
    damage(&store.zip_path(&stored.sha256_hex), &bad);
    assert!(!store.contains(&stored.sha256_hex));
    // A missing image.
    store.store(&zip).unwrap();
    fs::remove_file(&stored.image).unwrap();
    assert!(!store.contains(&stored.sha256_hex));
    assert_eq!(store.store(&zip).unwrap(), stored);
    assert!(store.contains(&stored.sha256_hex));
    assert_eq!(fs::read(store.zip_path(&stored.sha256_hex)).unwrap(), zip);
}

#[test]
fn sweep_keeps_used_code_and_removes_the_rest() {
    let data = tempfile::tempdir().unwrap();
    let store = CodeStore::open(data.path()).unwrap();
    let used = store
        .store(&make_zip(&[Entry::File("a", b"used", 0o644)]))
        .unwrap();
    let orphan = store
        .store(&make_zip(&[Entry::File("a", b"orphan", 0o644)]))
        .unwrap();
    let junk = data.path().join("code/images/partial.ext4.tmp");
    fs::write(&junk, b"x").unwrap();
    fs::create_dir(data.path().join("code/zips/stray")).unwrap();
    durable::set_mode(&store.zip_path(&used.sha256_hex), 0o444).unwrap();
    let keep = std::collections::HashSet::from([used.sha256_hex.clone()]);
    let removed = store.sweep(&keep).unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    assert!(store.contains(&used.sha256_hex));
    assert_eq!(mode(&store.zip_path(&used.sha256_hex)), 0o400);
    assert!(!orphan.image.exists());
    assert!(!store.zip_path(&orphan.sha256_hex).exists());
    assert!(!junk.exists());
    assert!(!data.path().join("code/zips/stray").exists());
}
