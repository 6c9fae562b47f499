//! The Event queue's journal: one JSON record per line, appended and
//! fsynced before the change it records is acted on. Replaying the lines
//! in order rebuilds every event's state; a torn last line (a crash in the
//! middle of a write) is ignored. On open the journal is rewritten compact
//! (one or two lines per event) through a temporary file and a rename.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

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
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(
                    journal = %path.display(),
                    "skipping unreadable journal line {}: {e}",
                    n + 1
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
            let mut f = File::create(&tmp)?;
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
        Ok(Journal {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, r: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes a directory's entries (new or renamed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
    }
}
