//! Function code: zip validation, content-addressed storage, and one
//! read-only ext4 image per code version.
//!
//! Layout under `DATA/code/`: `zips/<sha256>.zip` (the upload as sent),
//! `images/<sha256>.ext4` (what VMs mount at `/var/task`), `tmp/` (work in
//! progress, cleared on open). Both files are named by the SHA-256 of the zip,
//! so equal uploads share them; a store either completes both renames or
//! leaves nothing but a `tmp/` entry that is removed.
//!
//! Durability: both files are written and fsynced under `tmp/`, renamed into
//! place (the image last) and their directories fsynced before `store`
//! returns, so a registry row committed afterwards never points at code a
//! crash can take away. [`CodeStore::contains`] checks what it finds (the
//! zip's SHA-256, the image's ext4 superblock and size) rather than trusting
//! a name, and [`CodeStore::sweep`] removes at start what no function uses
//! (code stored by an upload whose registry commit never happened). The
//! store's directories are 0700; zips are 0400 and images 0444 (a jailed
//! VMM reads them), none writable.
//!
//! Modes: Lambda keeps the modes a zip records, so a `bootstrap` without an
//! execute bit fails to start there too. We keep the execute bit and make
//! everything world-readable, because the handler runs as an unprivileged user
//! and the image's files belong to root: a file with any execute bit becomes
//! 0755, any other file 0644, directories 0755. Symlinks are kept when they
//! stay inside the tree.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::durable;

/// Largest zip accepted (Lambda: 50 MiB for a direct upload).
pub const MAX_ZIP_LEN: usize = 50 * 1024 * 1024;
/// Largest unzipped size (Lambda: 250 MiB).
pub const MAX_UNZIPPED_LEN: u64 = 250 * 1024 * 1024;
/// Most entries one zip may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest symlink target.
const MAX_LINK_LEN: u64 = 4096;

/// Why code could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The zip is unusable (corrupt, too large, escaping paths): the client's fault.
    #[error("{0}")]
    Invalid(String),
    /// Our side failed (disk, mkfs).
    #[error("{0}")]
    Internal(String),
}

fn invalid(msg: impl Into<String>) -> CodeError {
    CodeError::Invalid(msg.into())
}

fn internal(what: &str, e: impl std::fmt::Display) -> CodeError {
    CodeError::Internal(format!("{what}: {e}"))
}

/// A stored code version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    /// SHA-256 of the zip, hex (the storage key).
    pub sha256_hex: String,
    /// SHA-256 of the zip, base64 (Lambda's `CodeSha256`).
    pub sha256_base64: String,
    /// Zip size in bytes (Lambda's `CodeSize`).
    pub size: u64,
    /// The read-only ext4 image.
    pub image: PathBuf,
}

/// The content-addressed code store.
#[derive(Debug, Clone)]
pub struct CodeStore {
    root: PathBuf,
}

impl CodeStore {
    /// Opens (creating) the store under `data_dir/code`, clearing leftovers
    /// of interrupted stores.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("code");
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        durable::private_dir(&root)?;
        for d in ["zips", "images", "tmp"] {
            durable::private_dir(&root.join(d))?;
        }
        Ok(Self { root })
    }

    /// The image of a stored code version.
    pub fn image_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join("images").join(format!("{sha256_hex}.ext4"))
    }

    fn zip_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join("zips").join(format!("{sha256_hex}.zip"))
    }

    /// Whether a code version is stored whole: its zip hashes to its name
    /// and its image is a complete ext4 file system.
    pub fn contains(&self, sha256_hex: &str) -> bool {
        self.check(sha256_hex).is_ok()
    }

    /// What is wrong with a stored code version, if anything.
    pub fn check(&self, sha256_hex: &str) -> Result<(), String> {
        let zip = self.zip_path(sha256_hex);
        let digest = hash_file(&zip).map_err(|e| format!("{}: {e}", zip.display()))?;
        if hex::encode(digest) != sha256_hex {
            return Err(format!("{} does not hash to its name", zip.display()));
        }
        self.check_image(sha256_hex)
    }

    /// What is wrong with a stored version's image, if anything (quick: its
    /// superblock and size, not its content).
    pub fn check_image(&self, sha256_hex: &str) -> Result<(), String> {
        let image = self.image_path(sha256_hex);
        check_ext4(&image).map_err(|e| format!("{}: {e}", image.display()))
    }

    /// Removes every stored version not in `keep`, and anything else in
    /// the store's directories that is no stored version at all, and sets
    /// the modes of what stays. For the start, before any upload runs.
    /// Returns what went.
    pub fn sweep(&self, keep: &std::collections::HashSet<String>) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for (dir, ext) in [("zips", "zip"), ("images", "ext4")] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let key = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(&format!(".{ext}")))
                    .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()));
                if key.is_some_and(|k| keep.contains(k)) {
                    // Older versions left zips 0444.
                    durable::set_mode(&path, if ext == "zip" { 0o400 } else { 0o444 })?;
                    continue;
                }
                let gone = if fs::symlink_metadata(&path)?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                gone?;
                removed.push(path);
            }
            durable::sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Validates `zip`, unpacks it and builds its image (blocking: runs
    /// `mkfs.ext4`). Equal zips are stored once.
    pub fn store(&self, zip: &[u8]) -> Result<StoredCode, CodeError> {
        let stored = self.describe(zip)?;
        self.put(zip, &stored)?;
        Ok(stored)
    }

    /// What storing `zip` will give (its hashes, size and image path),
    /// without storing it; refuses a zip over [`MAX_ZIP_LEN`].
    pub fn describe(&self, zip: &[u8]) -> Result<StoredCode, CodeError> {
        if zip.len() > MAX_ZIP_LEN {
            return Err(invalid(format!(
                "Zipped size must be smaller than {MAX_ZIP_LEN} bytes"
            )));
        }
        let digest = Sha256::digest(zip);
        Ok(StoredCode {
            sha256_hex: hex::encode(digest),
            sha256_base64: base64::engine::general_purpose::STANDARD.encode(digest),
            size: zip.len() as u64,
            image: self.image_path(&hex::encode(digest)),
        })
    }

    /// Stores `zip` as `stored` (from [`CodeStore::describe`] of the same
    /// zip) unless it is stored whole already.
    pub fn put(&self, zip: &[u8], stored: &StoredCode) -> Result<(), CodeError> {
        match self.check(&stored.sha256_hex) {
            Ok(()) => return Ok(()),
            // Built again below; the renames replace what is there.
            Err(why) if self.zip_path(&stored.sha256_hex).exists() => {
                tracing::warn!("stored code is damaged, storing it again: {why}");
            }
            Err(_) => {}
        }
        let work = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let result = self.build(zip, stored, &work);
        // Whatever happened, the work dir goes; on success its files were moved out.
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn build(&self, zip: &[u8], stored: &StoredCode, work: &Path) -> Result<(), CodeError> {
        let tree = work.join("tree");
        fs::create_dir_all(&tree).map_err(|e| internal("creating work dir", e))?;
        let used = unpack(zip, &tree)?;
        let image = work.join("image.ext4");
        make_ext4(&tree, &image, used)?;
        let zip_tmp = work.join("code.zip");
        write_synced(&zip_tmp, zip).map_err(|e| internal("writing zip", e))?;
        fs::File::open(&image)
            .and_then(|f| f.sync_all())
            .map_err(|e| internal("syncing image", e))?;
        for (f, mode) in [(&image, 0o444), (&zip_tmp, 0o400)] {
            durable::set_mode(f, mode).map_err(|e| internal("setting modes", e))?;
        }
        // The image goes in last: `contains` needs both.
        fs::rename(&zip_tmp, self.zip_path(&stored.sha256_hex))
            .map_err(|e| internal("storing zip", e))?;
        fs::rename(&image, &stored.image).map_err(|e| internal("storing image", e))?;
        for d in ["zips", "images"] {
            durable::sync_dir(&self.root.join(d)).map_err(|e| internal("syncing code dir", e))?;
        }
        Ok(())
    }

    /// Removes a code version (when no function uses it any more).
    pub fn remove(&self, sha256_hex: &str) {
        let _ = fs::remove_file(self.image_path(sha256_hex));
        let _ = fs::remove_file(self.zip_path(sha256_hex));
    }
}

/// Writes `bytes` to a new file and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = durable::create_file(path, durable::FILE_MODE)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// SHA-256 of a file's content.
fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks that `path` holds a whole ext4 file system: the superblock's
/// magic, and a file exactly as long as the blocks the superblock counts.
fn check_ext4(path: &Path) -> Result<(), String> {
    const SB: usize = 1024;
    let mut f = fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut sb = [0u8; 1024];
    f.read_exact(&mut [0u8; SB])
        .and_then(|()| f.read_exact(&mut sb))
        .map_err(|_| format!("too short for an ext4 superblock ({len} bytes)"))?;
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return Err("no ext4 superblock".into());
    }
    let log_block = u32_at(24);
    if log_block > 6 {
        return Err(format!("bad block size (log {log_block})"));
    }
    let block = 1024u64 << log_block;
    let mut blocks = u64::from(u32_at(4));
    if u32_at(96) & 0x80 != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    if blocks.checked_mul(block) != Some(len) {
        return Err(format!(
            "{len} bytes, but its superblock counts {blocks} blocks of {block}"
        ));
    }
    Ok(())
}

const CORRUPT: &str =
    "Could not unzip uploaded file. Please check your file, then try to upload again.";

/// Unpacks `zip` into `tree` with the checks of this module's doc; returns
/// the bytes the tree needs on disk (4 KiB blocks, one per entry at least).
pub fn unpack(zip: &[u8], tree: &Path) -> Result<u64, CodeError> {
    let mut archive = zip::ZipArchive::new(io::Cursor::new(zip)).map_err(|_| invalid(CORRUPT))?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "The zip holds more than {MAX_ENTRIES} entries"
        )));
    }
    let mut unzipped = 0u64;
    let mut used = 0u64;
    let mut links = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|_| invalid(CORRUPT))?;
        let rel = entry_path(entry.name())?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = tree.join(&rel);
        used += 4096;
        if entry.is_symlink() {
            let mut target = String::new();
            entry
                .by_ref()
                .take(MAX_LINK_LEN)
                .read_to_string(&mut target)
                .map_err(|_| invalid(CORRUPT))?;
            check_link(&rel, &target)?;
            links.push((dest, target));
            continue;
        }
        if entry.is_dir() {
            create_dirs(tree, &dest)?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            create_dirs(tree, parent)?;
        }
        let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(&dest)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    invalid(format!("The zip holds '{}' twice", rel.display()))
                }
                _ => internal("unpacking", e),
            })?;
        let budget = MAX_UNZIPPED_LEN - unzipped;
        let copied = copy_limited(&mut entry, &mut out, budget)?;
        unzipped += copied;
        used += copied.div_ceil(4096) * 4096;
        // The umask may have narrowed the mode `open` was given.
        fs::set_permissions(
            &dest,
            fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }),
        )
        .map_err(|e| internal("setting modes", e))?;
    }
    // Links last, so that no file is ever written through one.
    for (dest, target) in links {
        if let Some(parent) = dest.parent() {
            create_dirs(tree, parent)?;
        }
        std::os::unix::fs::symlink(&target, &dest).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                invalid("The zip holds a symlink and a file of the same name")
            }
            _ => internal("unpacking", e),
        })?;
    }
    Ok(used)
}

/// Copies at most `budget` bytes; more is the unzipped-size error. A
/// corrupt stream (bad CRC, truncated) is the corrupt-zip error.
fn copy_limited(from: &mut impl Read, to: &mut impl Write, budget: u64) -> Result<u64, CodeError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(|_| invalid(CORRUPT))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > budget {
            return Err(invalid(format!(
                "Unzipped size must be smaller than {MAX_UNZIPPED_LEN} bytes"
            )));
        }
        to.write_all(&buf[..n])
            .map_err(|e| internal("unpacking", e))?;
    }
}

/// The relative path of an entry; refuses absolute paths and `..`.
fn entry_path(name: &str) -> Result<PathBuf, CodeError> {
    let escape = || {
        invalid(format!(
            "The zip entry '{name}' points outside its directory"
        ))
    };
    if name.contains('\0') || name.contains('\\') {
        return Err(invalid(format!(
            "The zip entry '{name}' has an invalid name"
        )));
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escape())
            }
        }
    }
    Ok(out)
}

/// A symlink at `rel` must point inside the tree: relative, and never
/// climbing above the root.
fn check_link(rel: &Path, target: &str) -> Result<(), CodeError> {
    let escape = || {
        invalid(format!(
            "The zip's symlink '{}' -> '{target}' points outside its directory",
            rel.display()
        ))
    };
    if target.is_empty() || target.contains('\0') {
        return Err(invalid(format!(
            "The zip's symlink '{}' has an invalid target",
            rel.display()
        )));
    }
    let mut depth = rel.components().count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(escape());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    Ok(())
}

/// `create_dir_all` that refuses to pass through anything but real
/// directories inside `tree` (links are made last, but be explicit).
fn create_dirs(tree: &Path, dir: &Path) -> Result<(), CodeError> {
    let rel = dir
        .strip_prefix(tree)
        .map_err(|e| internal("unpacking", e))?;
    let mut cur = tree.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "The zip uses '{}' both as a file and as a directory",
                    cur.strip_prefix(tree).unwrap_or(&cur).display()
                )))
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(|e| internal("unpacking", e))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| internal("setting modes", e))?;
            }
        }
    }
    Ok(())
}

/// `mkfs.ext4 -d TREE IMAGE`, sized for `used` bytes plus metadata headroom
/// (the sizing of `images/mkext4`), with a root-owned root directory.
pub fn make_ext4(tree: &Path, image: &Path, used: u64) -> Result<(), CodeError> {
    let size_mib = used * 13 / 10 / (1024 * 1024) + 16;
    let file = fs::File::create(image).map_err(|e| internal("creating image", e))?;
    file.set_len(size_mib * 1024 * 1024)
        .map_err(|e| internal("sizing image", e))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "ember-code",
            "-E",
            "root_owner=0:0,lazy_itable_init=0",
            "-d",
        ])
        .arg(tree)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|e| internal("running mkfs.ext4 (is e2fsprogs installed?)", e))?;
    if !out.status.success() {
        return Err(CodeError::Internal(format!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "codestore_tests.rs"]
mod tests;
