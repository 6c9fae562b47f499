//! The file behind a virtio-block device.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use vm_memory::{Bytes, GuestMemoryError, GuestMemoryMmap};

use super::request::Segment;
use super::{BlockError, SECTOR_SIZE};

/// Length of the id a GET_ID request returns.
pub(super) const ID_LEN: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Why moving data between the disk file and guest memory failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DiskError {
    /// The file position cannot be set to the request's offset.
    #[error("cannot seek the disk file: {0}")]
    Seek(#[source] io::Error),
    /// The read or write between the file and a guest buffer failed or fell short.
    #[error("disk file I/O failed: {0}")]
    Transfer(#[source] GuestMemoryError),
    /// The file's data cannot be made durable.
    #[error("cannot sync the disk file: {0}")]
    Sync(#[source] io::Error),
}

/// The backing file, its size in whole sectors and the id the guest sees.
#[derive(Debug)]
pub(super) struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    /// Sync after every write: the driver did not negotiate FLUSH, so it
    /// expects completed writes to be durable.
    pub(super) write_through: bool,
}

impl Disk {
    /// A disk over `file`; an empty `id` is derived from the file's inode and device.
    pub(super) fn new(mut file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        // Seeking also sizes host block devices, whose metadata length is 0.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(BlockError::NotSeekable)?;
        let sectors = len / SECTOR_SIZE;
        if sectors == 0 {
            return Err(BlockError::TooSmall(len));
        }
        let id = if id.is_empty() {
            default_id(&file)?
        } else {
            id.to_string()
        };
        if id.len() > ID_LEN {
            return Err(BlockError::IdTooLong(id));
        }
        let mut id_bytes = [0; ID_LEN];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        Ok(Self {
            file,
            sectors,
            read_only,
            id: id_bytes,
            write_through: false,
        })
    }

    /// Capacity in sectors (the file length rounded down to a sector).
    pub(super) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The id string, zero padded.
    pub(super) fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }

    /// Fills `bufs`, in order, from the disk starting at byte `offset`.
    pub(super) fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[Segment],
    ) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(DiskError::Seek)?;
        for buf in bufs {
            mem.read_exact_volatile_from(buf.addr, &mut self.file, buf.len as usize)
                .map_err(DiskError::Transfer)?;
        }
        Ok(())
    }

    /// Writes `bufs`, in order, to the disk starting at byte `offset`.
    pub(super) fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[Segment],
    ) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(DiskError::Seek)?;
        for buf in bufs {
            mem.write_all_volatile_to(buf.addr, &mut self.file, buf.len as usize)
                .map_err(DiskError::Transfer)?;
        }
        if self.write_through {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub(super) fn flush(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(DiskError::Sync)
    }
}

fn default_id(file: &File) -> Result<String, BlockError> {
    let meta = file.metadata().map_err(BlockError::Metadata)?;
    let mut id = format!("{:x}-{:x}", meta.ino(), meta.dev());
    // ASCII, so truncating cannot split a character.
    id.truncate(ID_LEN);
    Ok(id)
}
