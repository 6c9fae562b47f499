//! The data directory at start: made private, then swept of what a crash
//! left behind.
//!
//! - [`prepare`]: the directory and `events/` are 0700 and the state files
//!   in them 0600, also when an older version (or a lax umask) left them
//!   open; `code/` and `registry.sqlite3` are fixed by their own `open`.
//! - [`sweep`]: code no function references goes (an upload that stored
//!   its code but crashed before its registry commit), as do temporary
//!   files of interrupted atomic writes. `run/` (VM directories) is swept by
//!   the dispatcher, `code/tmp/` by the code store's `open`.

use std::io;
use std::path::{Path, PathBuf};

use crate::codestore::CodeStore;
use crate::durable;
use crate::registry::{Registry, RegistryError};

/// Files the router or `up` writes at the top of the data directory.
const STATE_FILES: [&str; 2] = ["default-tenant.toml", "softhost-state.ext4"];

/// Why the start-up sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The registry could not say which code is in use.
    #[error("reading the registry: {0}")]
    Registry(#[from] RegistryError),
    /// A file could not be listed or removed.
    #[error("sweeping the code store: {0}")]
    Io(#[from] io::Error),
}

/// Creates the data directory 0700 (and `events/`) and sets the modes of
/// what is in it.
pub fn prepare(data_dir: &Path) -> io::Result<()> {
    durable::private_dir(data_dir)?;
    let events = data_dir.join("events");
    durable::private_dir(&events)?;
    durable::restrict_tree(&events)?;
    for f in STATE_FILES {
        durable::set_mode_if_exists(&data_dir.join(f), durable::FILE_MODE)?;
    }
    Ok(())
}

/// Removes unreferenced code and leftover temporary files; returns what
/// went. A function's image that is missing or damaged is logged (its
/// invocations fail until its code is uploaded again, which rebuilds it).
pub fn sweep(
    data_dir: &Path,
    registry: &Registry,
    code: &CodeStore,
) -> Result<Vec<PathBuf>, SweepError> {
    let keep = registry.code_hashes()?;
    let mut removed = code.sweep(&keep)?;
    for f in STATE_FILES {
        let tmp = durable::temp_name(&data_dir.join(f));
        if std::fs::remove_file(&tmp).is_ok() {
            removed.push(tmp);
        }
    }
    for sha in &keep {
        if let Err(why) = code.check_image(sha) {
            tracing::error!(code = %sha, "a function's code image is missing or damaged: {why}");
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "removed leftovers of interrupted changes"
        );
    }
    Ok(removed)
}
