//! virtio-block: a guest disk backed by a raw file (or host block device).
//!
//! - `device`: the virtio device [`Block`]: features, config space, activation, and
//!   the queue handler the event loop runs when the guest kicks the queue.
//! - `request`: parses one request from a descriptor chain, validates it
//!   against the disk, runs it and writes its status.
//! - `disk`: the backing file: its size in sectors, the id, positioned I/O
//!   between the file and guest memory.

mod device;
mod disk;
mod request;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Block;

/// Size of a virtio-block sector: capacity and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;

/// Why a virtio-block device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk file's size cannot be found by seeking (a pipe or socket?).
    #[error("disk file is not seekable: {0}")]
    NotSeekable(#[source] io::Error),
    /// The disk file holds less than one sector.
    #[error("disk file is {0} bytes, smaller than one {SECTOR_SIZE}-byte sector")]
    TooSmall(u64),
    /// The disk id does not fit the 20 bytes virtio gives it.
    #[error("disk id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
    /// The disk file's metadata (for a default id) cannot be read.
    #[error("cannot stat the disk file: {0}")]
    Metadata(#[source] io::Error),
    /// The queue's kick eventfd cannot be created.
    #[error("cannot create the queue eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// A `--drive`-style spec has no path.
    #[error("drive spec {0:?} has no path (expected PATH[,ro])")]
    SpecNoPath(String),
    /// A `--drive`-style spec has an option other than `ro`.
    #[error("drive spec {spec:?}: unknown option {option:?} (the only option is `ro`)")]
    SpecOption {
        /// The whole spec.
        spec: String,
        /// The option that is not understood.
        option: String,
    },
}

/// Parses the command-line drive form `PATH[,ro]` into the path and whether
/// the disk is read-only. Paths containing a comma are not expressible.
pub fn parse_drive_spec(spec: &str) -> Result<(PathBuf, bool), BlockError> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(BlockError::SpecNoPath(spec.to_string()));
    }
    let mut read_only = false;
    for option in parts {
        match option {
            "ro" => read_only = true,
            _ => {
                return Err(BlockError::SpecOption {
                    spec: spec.to_string(),
                    option: option.to_string(),
                })
            }
        }
    }
    Ok((PathBuf::from(path), read_only))
}
