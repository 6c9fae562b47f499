//! Raw access to what a root guest can touch: the reserved RAM range and
//! the virtio-mmio register windows, both mapped from `/dev/mem`, and a
//! minimal split-virtqueue driver over them.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

/// virtio-mmio registers (virtio 1.x, 4.2.2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const DESC_LO: u64 = 0x080;
    pub const DESC_HI: u64 = 0x084;
    pub const AVAIL_LO: u64 = 0x090;
    pub const AVAIL_HI: u64 = 0x094;
    pub const USED_LO: u64 = 0x0a0;
    pub const USED_HI: u64 = 0x0a4;
}

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Status bits.
pub const S_ACK: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 0x40;

fn map(phys: u64, len: usize) -> Result<*mut u8, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|e| format!("open /dev/mem: {e}"))?;
    let offset = libc::off_t::try_from(phys).map_err(|_| "address too large".to_string())?;
    // SAFETY: a fresh shared mapping of /dev/mem; the kernel checks the range.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap /dev/mem at {phys:#x}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(p.cast())
}

/// Guest RAM the kernel does not use (`memmap=` on the command line): the
/// rings and buffers of our attacks live here, by physical address.
pub struct Ram {
    base: *mut u8,
    /// Its guest-physical address.
    pub phys: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl Ram {
    /// Maps `len` bytes of RAM at guest-physical `phys`.
    pub fn map(phys: u64, len: u64) -> Result<Self, String> {
        let base = map(phys, len as usize)?;
        Ok(Self { base, phys, len })
    }

    fn at(&self, addr: u64, size: u64) -> *mut u8 {
        assert!(
            addr >= self.phys && addr + size <= self.phys + self.len,
            "{addr:#x} outside the reserved range"
        );
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.add((addr - self.phys) as usize) }
    }

    pub fn w16(&self, addr: u64, v: u16) {
        // SAFETY: in range; volatile because the VMM reads it concurrently.
        unsafe { ptr::write_volatile(self.at(addr, 2).cast::<u16>(), v.to_le()) }
    }

    pub fn w32(&self, addr: u64, v: u32) {
        // SAFETY: as above.
        unsafe { ptr::write_volatile(self.at(addr, 4).cast::<u32>(), v.to_le()) }
    }

    pub fn w64(&self, addr: u64, v: u64) {
        // SAFETY: as above.
        unsafe { ptr::write_volatile(self.at(addr, 8).cast::<u64>(), v.to_le()) }
    }

    pub fn r16(&self, addr: u64) -> u16 {
        // SAFETY: as above.
        u16::from_le(unsafe { ptr::read_volatile(self.at(addr, 2).cast::<u16>()) })
    }

    pub fn r32(&self, addr: u64) -> u32 {
        // SAFETY: as above.
        u32::from_le(unsafe { ptr::read_volatile(self.at(addr, 4).cast::<u32>()) })
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: as above, byte by byte.
            unsafe { ptr::write_volatile(self.at(addr + i as u64, 1), *b) }
        }
    }

    pub fn zero(&self, addr: u64, len: u64) {
        for i in (0..len).step_by(8) {
            self.w64(addr + i, 0);
        }
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = table + 16 * u64::from(index);
        self.w64(d, addr);
        self.w32(d + 8, len);
        self.w16(d + 12, flags);
        self.w16(d + 14, next);
    }
}

/// One virtio-mmio device's register window.
pub struct Dev {
    regs: *mut u8,
    /// Its guest-physical address.
    pub base: u64,
    /// The virtio device id (2 block, 19 vsock).
    pub id: u32,
    /// How many queues it has.
    pub queues: u32,
}

impl Dev {
    /// Maps the window at `base` and reads what device is there.
    pub fn map(base: u64) -> Result<Self, String> {
        let regs = map(base, 0x1000)?;
        let mut d = Self {
            regs,
            base,
            id: 0,
            queues: 0,
        };
        if d.r(reg::MAGIC) != 0x7472_6976 {
            return Err(format!("no virtio-mmio magic at {base:#x}"));
        }
        d.id = d.r(reg::DEVICE_ID);
        d.queues = (0..8)
            .take_while(|&q| {
                d.w(reg::QUEUE_SEL, q);
                d.r(reg::QUEUE_NUM_MAX) != 0
            })
            .count() as u32;
        Ok(d)
    }

    pub fn r(&self, off: u64) -> u32 {
        // SAFETY: inside the 4 KiB window; MMIO wants volatile accesses.
        unsafe { ptr::read_volatile(self.regs.add(off as usize).cast::<u32>()) }
    }

    pub fn w(&self, off: u64, v: u32) {
        // SAFETY: as above.
        unsafe { ptr::write_volatile(self.regs.add(off as usize).cast::<u32>(), v) }
    }

    /// A write of `width` bytes (1, 2, 4 or 8) at any offset of the window.
    pub fn w_raw(&self, off: u64, width: u32, v: u64) {
        let off = (off as usize & 0xfff) & !(width as usize - 1);
        // SAFETY: inside the window (masked above), naturally aligned.
        unsafe {
            let p = self.regs.add(off);
            match width {
                1 => ptr::write_volatile(p, v as u8),
                2 => ptr::write_volatile(p.cast::<u16>(), v as u16),
                4 => ptr::write_volatile(p.cast::<u32>(), v as u32),
                _ => ptr::write_volatile(p.cast::<u64>(), v),
            }
        }
    }

    /// A read of `width` bytes at any offset of the window.
    pub fn r_raw(&self, off: u64, width: u32) -> u64 {
        let off = (off as usize & 0xfff) & !(width as usize - 1);
        // SAFETY: as in `w_raw`.
        unsafe {
            let p = self.regs.add(off);
            match width {
                1 => u64::from(ptr::read_volatile(p)),
                2 => u64::from(ptr::read_volatile(p.cast::<u16>())),
                4 => u64::from(ptr::read_volatile(p.cast::<u32>())),
                _ => ptr::read_volatile(p.cast::<u64>()),
            }
        }
    }

    pub fn reset(&self) {
        self.w(reg::STATUS, 0);
        self.w(reg::INTERRUPT_ACK, 0xffff_ffff);
    }

    pub fn status(&self) -> u32 {
        self.r(reg::STATUS)
    }

    /// Resets and negotiates VERSION_1 up to FEATURES_OK.
    pub fn negotiate(&self) {
        self.reset();
        self.w(reg::STATUS, S_ACK);
        self.w(reg::STATUS, S_ACK | S_DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, 1);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, 0);
        self.w(reg::STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    }

    /// Programs queue `q` with `size` and ring addresses.
    pub fn queue(&self, q: u32, size: u32, desc: u64, avail: u64, used: u64) {
        self.w(reg::QUEUE_SEL, q);
        self.w(reg::QUEUE_NUM, size);
        self.w(reg::DESC_LO, desc as u32);
        self.w(reg::DESC_HI, (desc >> 32) as u32);
        self.w(reg::AVAIL_LO, avail as u32);
        self.w(reg::AVAIL_HI, (avail >> 32) as u32);
        self.w(reg::USED_LO, used as u32);
        self.w(reg::USED_HI, (used >> 32) as u32);
        self.w(reg::QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK and returns the status the device then shows.
    pub fn go(&self) -> u32 {
        self.w(reg::STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        self.status()
    }

    pub fn notify(&self, q: u32) {
        self.w(reg::QUEUE_NOTIFY, q);
    }
}

/// Where queue `q` of the device under attack keeps its rings, in `ram`.
#[derive(Clone, Copy)]
pub struct Rings {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

impl Rings {
    /// Sane rings for queue `q` of size `size` in the first MiB of `ram`.
    pub fn for_queue(ram: &Ram, q: u32, size: u16) -> Self {
        let base = ram.phys + u64::from(q) * 0x1_0000;
        Self {
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            size,
        }
    }

    /// Zeroes the rings (no descriptors, indices 0).
    pub fn clear(&self, ram: &Ram) {
        ram.zero(self.desc, 0x1_0000);
    }

    /// The avail index the driver published.
    pub fn avail_idx(&self, ram: &Ram) -> u16 {
        ram.r16(self.avail + 2)
    }

    /// Publishes chain `head` in the avail ring.
    pub fn publish(&self, ram: &Ram, head: u16) {
        let idx = self.avail_idx(ram);
        ram.w16(self.avail + 4 + 2 * u64::from(idx % self.size.max(1)), head);
        fence(Ordering::SeqCst);
        ram.w16(self.avail + 2, idx.wrapping_add(1));
        fence(Ordering::SeqCst);
    }

    /// The device's used index.
    pub fn used_idx(&self, ram: &Ram) -> u16 {
        fence(Ordering::SeqCst);
        ram.r16(self.used + 2)
    }

    /// Used element `i`: (id, len).
    pub fn used_elem(&self, ram: &Ram, i: u16) -> (u32, u32) {
        let e = self.used + 4 + 8 * u64::from(i % self.size.max(1));
        (ram.r32(e), ram.r32(e + 4))
    }

    /// Waits (bounded) until the device used everything published.
    pub fn wait_used(&self, ram: &Ram, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.used_idx(ram) == self.avail_idx(ram) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

/// Sets up every queue of `dev` with sane rings of `size` and DRIVER_OK.
pub fn activate(dev: &Dev, ram: &Ram, size: u16) -> (u32, Vec<Rings>) {
    dev.negotiate();
    let rings: Vec<Rings> = (0..dev.queues)
        .map(|q| Rings::for_queue(ram, q, size))
        .collect();
    for (q, r) in rings.iter().enumerate() {
        r.clear(ram);
        dev.queue(q as u32, u32::from(size), r.desc, r.avail, r.used);
    }
    (dev.go(), rings)
}

/// A small xorshift generator (no dependencies, reproducible by seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
