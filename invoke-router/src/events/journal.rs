//! The Event queue's journal: one JSON record per line, appended and
//! fsynced before the change it records is acted on. Replaying the lines
//! in order rebuilds every event's state; a torn last line (a crash in the
//! middle of a write) is ignored. On open the journal is rewritten compact
//! (one or two lines per event) through a temporary file and a rename.
//!
//! A failed append (a full disk writes part of a line, then fails) must not
//! cost the next record: the writer cuts the file back to the end of the
//! last complete record before it appends again, or, if it cannot, starts
//! the record on a fresh line; the reader skips a line it cannot parse and
//! also recovers a record glued to the end of a torn one (as older versions
//! wrote them). The file is 0600.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::durable;

use serde::{Deserialize, Serialize};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// An event was accepted (its payload file is already durable).
    Enqueue {
        /// The request id.
        id: String,
        /// Its tenant.
        tenant: String,
        /// Its function.
        function: String,
        /// When it was accepted (Unix ms).
        at_ms: u64,
    },
    /// Attempt `attempt` (1-based) started.
    Attempt {
        /// The request id.
        id: String,
        /// Which attempt.
        attempt: u32,
    },
    /// An attempt failed; the event waits until `due_ms` for the next.
    Retry {
        /// The request id.
        id: String,
        /// Attempts made so far.
        attempts: u32,
        /// Why the last one failed.
        error: String,
        /// When to try again (Unix ms).
        due_ms: u64,
    },
    /// The function was throttled; the attempt did not count.
    Throttled {
        /// The request id.
        id: String,
        /// Attempts made so far (unchanged).
        attempts: u32,
        /// When to try again (Unix ms).
        due_ms: u64,
    },
    /// The function succeeded.
    Succeeded {
        /// The request id.
        id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Every attempt failed, or the function is gone.
    Failed {
        /// The request id.
        id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

impl Record {
    /// The event the record is about.
    pub fn id(&self) -> &str {
        match self {
            Record::Enqueue { id, .. }
            | Record::Attempt { id, .. }
            | Record::Retry { id, .. }
            | Record::Throttled { id, .. }
            | Record::Succeeded { id, .. }
            | Record::Failed { id, .. } => id,
        }
    }
}

/// The append-only journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Where the last complete record ends.
    len: u64,
    /// A write failed after `len`: part of a line may follow it.
    torn: bool,
    /// Test hooks: the faults of a failing disk.
    #[cfg(test)]
    faults: Faults,
}

/// Faults a test injects.
#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    /// The next append writes this many bytes, then fails.
    write_after: Option<usize>,
    /// Truncation fails.
    truncate: bool,
}

/// Parses one line; a line that is a torn record with a whole one glued to
/// its end gives the whole one.
fn parse_line(line: &[u8]) -> Option<Record> {
    if let Ok(r) = serde_json::from_slice::<Record>(line) {
        return Some(r);
    }
    const START: &[u8] = b"{\"op\":";
    let at = line
        .windows(START.len())
        .rposition(|w| w == START)
        .filter(|&i| i > 0)?;
    serde_json::from_slice::<Record>(&line[at..]).ok()
}

impl Journal {
    /// Reads every intact record of the journal at `path` (none if it does
    /// not exist).
    pub fn read(path: &Path) -> io::Result<Vec<Record>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(&line) {
                Some(r) => out.push(r),
                None => tracing::warn!(
                    journal = %path.display(),
                    "skipping unreadable journal line {} ({} bytes)",
                    n + 1,
                    line.len()
                ),
            }
        }
        Ok(out)
    }

    /// Replaces the journal at `path` with `records` (atomically: a
    /// temporary file, fsync, rename, fsync of the directory) and opens it
    /// for appending.
    pub fn rewrite(path: &Path, records: &[Record]) -> io::Result<Journal> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = durable::create_file(&tmp, durable::FILE_MODE)?;
            let mut buf = Vec::new();
            for r in records {
                serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            len,
            torn: false,
            #[cfg(test)]
            faults: Faults::default(),
        })
    }

    /// Appends one record and waits until it is on disk. After an error the
    /// record may be partly written; the next append removes that part.
    pub fn append(&mut self, r: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.torn {
            if self.truncate_torn().is_ok() {
                self.torn = false;
            } else {
                // Cannot cut the torn part off: end its line, so that this
                // record stands on one of its own.
                line.insert(0, b'\n');
            }
        }
        match self.write_line(&line) {
            Ok(()) => {
                self.len = if self.torn {
                    self.file.metadata()?.len()
                } else {
                    self.len + line.len() as u64
                };
                self.torn = false;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                Err(e)
            }
        }
    }

    fn truncate_torn(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.truncate {
            return Err(io::Error::other("injected truncate failure"));
        }
        self.file.set_len(self.len)
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.faults.write_after.take() {
            self.file.write_all(&line[..n.min(line.len())])?;
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(line)?;
        self.file.sync_data()
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes a directory's entries (new or renamed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    durable::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_rewrite_and_appends_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let a = Record::Enqueue {
            id: "a".into(),
            tenant: "t".into(),
            function: "f".into(),
            at_ms: 1,
        };
        let b = Record::Attempt {
            id: "a".into(),
            attempt: 1,
        };
        let mut j = Journal::rewrite(&path, std::slice::from_ref(&a)).unwrap();
        j.append(&b).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"succ").unwrap();
        assert_eq!(Journal::read(&path).unwrap(), vec![a, b]);
        assert!(Journal::read(&dir.path().join("none")).unwrap().is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn attempt(n: u32) -> Record {
        Record::Attempt {
            id: "e".into(),
            attempt: n,
        }
    }

    #[test]
    fn a_failed_append_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::rewrite(&path, &[attempt(1)]).unwrap();
        // The disk takes 9 bytes of the next line, then fails.
        j.faults.write_after = Some(9);
        assert!(j.append(&attempt(2)).is_err());
        j.append(&attempt(3)).unwrap();
        j.append(&attempt(4)).unwrap();
        assert_eq!(
            Journal::read(&path).unwrap(),
            vec![attempt(1), attempt(3), attempt(4)]
        );
        // The torn part was cut off, not left as a line of its own.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_torn_tail_that_cannot_be_cut_still_leaves_the_next_record_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::rewrite(&path, &[attempt(1)]).unwrap();
        j.faults.write_after = Some(9);
        assert!(j.append(&attempt(2)).is_err());
        // The torn part cannot be cut off: the next record starts on a
        // fresh line instead.
        j.faults.truncate = true;
        j.append(&attempt(3)).unwrap();
        j.faults.truncate = false;
        j.append(&attempt(4)).unwrap();
        assert_eq!(
            Journal::read(&path).unwrap(),
            vec![attempt(1), attempt(3), attempt(4)]
        );
    }

    /// A real full disk: a tmpfs with no page left, and a journal whose
    /// last page has room for 20 bytes, so the next append is torn there.
    #[test]
    fn a_record_torn_by_a_full_disk_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            mounted.status.success(),
            "this test mounts a small tmpfs as the full disk and needs root: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join("journal.jsonl");
        // One record padded so that the file ends 20 bytes before a page end.
        let failed = |error: String| Record::Failed {
            id: "e".into(),
            attempts: 1,
            error,
        };
        let bare = serde_json::to_vec(&failed(String::new())).unwrap().len() + 1;
        let first = failed("x".repeat(4096 - 20 - bare));
        let mut j = Journal::rewrite(&path, std::slice::from_ref(&first)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 - 20);
        // Fill every other page.
        let filler = dir.path().join("filler");
        let mut f = File::create(&filler).unwrap();
        let page = [7u8; 4096];
        while f.write_all(&page).is_ok() {}
        drop(f);
        let second = attempt(2);
        let err = j.append(&second).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        // Part of the record did land.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        std::fs::remove_file(&filler).unwrap();
        j.append(&attempt(3)).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), vec![first, attempt(3)]);
    }

    #[test]
    fn the_reader_recovers_a_record_glued_to_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut text = serde_json::to_string(&attempt(1)).unwrap();
        text.push('\n');
        text.push_str("{\"op\":\"succ");
        text.push_str(&serde_json::to_string(&attempt(2)).unwrap());
        text.push('\n');
        text.push_str("garbage\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), vec![attempt(1), attempt(2)]);
    }
}
