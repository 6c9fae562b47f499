//! Address buses: where a vCPU's port I/O or MMIO access lands.
//!
//! The VMM builds one bus for port I/O and one for MMIO before the guest
//! runs; vCPU threads only look devices up, so the maps need no lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes in an address range of a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be added to a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("bus range at {base:#x} of {len:#x} bytes is empty or wraps")]
    BadRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps one already on the bus.
    #[error("bus range at {base:#x} of {len:#x} bytes overlaps another device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A map from non-overlapping address ranges to devices.
#[derive(Default, Clone)]
pub struct Bus {
    /// Keyed by base address: (length, device).
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let clash_before = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if clash_before {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` into its range.
    fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((device, addr - base))
    }

    /// Reads from the device at `addr`; false when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another thread panicked while holding it: device
/// state stays consistent per access, and a VMM that keeps running is better
/// than one that cascades panics across vCPU threads.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut byte = [0u8];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(a.lock().unwrap().last, Some((0, vec![7])));
        assert!(!bus.read(0x400, &mut byte));
        assert!(!bus.read(0x3f7, &mut byte));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x1000, 0x1000, dev()).unwrap();
        for (base, len) in [(0x1800, 0x10), (0xfff, 2), (0x0, 0x1001), (0x1000, 0x1000)] {
            assert_eq!(
                bus.insert(base, len, dev()),
                Err(BusError::Overlap { base, len })
            );
        }
        bus.insert(0x2000, 0x1000, dev()).unwrap();
        bus.insert(0xfff, 1, dev()).unwrap();
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(5, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
    }
}
