//! `hostile-guest`: PID 1 of the hostile-guest suite (`tests/tests/hostile.rs`).
//!
//! Runs as root in the test kernel variant (`images/build --hostile-kernel`:
//! unrestricted `/dev/mem`, no virtio-mmio driver) and drives the VM's
//! virtio-mmio devices itself, from rings in RAM the kernel leaves alone
//! (`memmap=8M$96M`). It finds the devices in `/proc/cmdline`
//! (`virtio_mmio.device=4K@ADDR:IRQ`), runs every attack against each, and
//! prints `HOSTILE-ATTACK <device> <name>` before and `HOSTILE-SURVIVED
//! <device> <name>` after each one, then `HOSTILE-DONE`, and exits: PID 1
//! exiting panics the kernel, which (`panic=1 reboot=k`) resets the VM
//! through the i8042, and the VMM ends with status 0.
//!
//! `hostile.from=<device>:<attack>` on the command line starts the run at
//! that attack (the test resumes a guest that ended itself mid-run there).

mod attacks;
mod hw;

use std::ffi::CString;
use std::time::Instant;

use hw::{Dev, Ram};

/// The reserved range: `memmap=8M$96M` on the kernel command line.
const RAM_PHYS: u64 = 96 << 20;
const RAM_LEN: u64 = 8 << 20;

fn mount(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let (src, fs, dir) = (
        CString::new(fstype).unwrap(),
        CString::new(fstype).unwrap(),
        CString::new(target).unwrap(),
    );
    // SAFETY: plain mount(2) with valid C strings.
    unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
}

/// Points stdout and stderr at the console (PID 1 may start without them).
fn console() {
    let path = CString::new("/dev/console").unwrap();
    // SAFETY: open/dup2 on our own descriptors.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
    }
}

/// The virtio-mmio windows the VMM announced on the command line.
fn devices() -> Vec<u64> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(|spec| {
            let addr = spec.split('@').nth(1)?.split(':').next()?;
            u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// `hostile.from=<device>:<attack>`: the attack to start at, if any.
fn start_at() -> Option<(String, String)> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let spec = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hostile.from="))?;
    let (device, attack) = spec.split_once(':')?;
    Some((device.to_string(), attack.to_string()))
}

/// Skips attacks until the one to start at (every attack without one).
struct Skip(Option<(String, String)>);

impl Skip {
    fn runs(&mut self, device: &str, attack: &str) -> bool {
        match &self.0 {
            None => true,
            Some((d, a)) if d == device && a == attack => {
                println!("HOSTILE-RESUMING-AT {device} {attack}");
                self.0 = None;
                true
            }
            Some(_) => false,
        }
    }
}

fn run() -> Result<(), String> {
    let ram = Ram::map(RAM_PHYS, RAM_LEN)?;
    let mut skip = Skip(start_at());
    let devs: Vec<Dev> = devices()
        .into_iter()
        .map(Dev::map)
        .collect::<Result<_, _>>()?;
    println!("HOSTILE-DEVICES {}", devs.len());
    type Attack = (&'static str, fn(&Dev, &Ram));
    let common: [Attack; 4] = [
        ("bad-queue-configs", attacks::bad_queue_configs),
        ("bad-descriptors", attacks::bad_descriptors),
        ("notify-storm", attacks::notify_storm),
        ("reset-storm", attacks::reset_storm),
    ];
    for dev in &devs {
        let name = device_name(dev);
        println!(
            "HOSTILE-DEVICE {name} at {:#x}, {} queues",
            dev.base, dev.queues
        );
        let mut list: Vec<Attack> = common.to_vec();
        match dev.id {
            19 => list.insert(2, ("vsock-headers", attacks::vsock_headers)),
            2 => list.insert(2, ("block-requests", attacks::block_requests)),
            _ => {}
        }
        for (attack, f) in list {
            if skip.runs(name, attack) {
                run_attack(name, attack, || f(dev, &ram));
            }
        }
    }
    // Last, as it may end this guest: random register writes can make a
    // device write where the guest's own kernel lives (a triple fault is
    // this guest's end, not its VMM's).
    for dev in &devs {
        if skip.runs(device_name(dev), "random-registers") {
            run_attack(device_name(dev), "random-registers", || {
                attacks::random_registers(dev, &ram, 0x9e37_79b9_7f4a_7c15)
            });
        }
    }
    match skip.0 {
        Some((d, a)) => Err(format!("hostile.from={d}:{a} names no attack")),
        None => Ok(()),
    }
}

fn device_name(dev: &Dev) -> &'static str {
    match dev.id {
        2 => "block",
        19 => "vsock",
        _ => "other",
    }
}

/// Prints `HOSTILE-ATTACK` before and `HOSTILE-SURVIVED` after one attack.
fn run_attack(device: &str, attack: &str, f: impl FnOnce()) {
    println!("HOSTILE-ATTACK {device} {attack}");
    let start = Instant::now();
    f();
    println!(
        "HOSTILE-SURVIVED {device} {attack} ({} ms)",
        start.elapsed().as_millis()
    );
}

fn main() {
    mount("devtmpfs", "/dev");
    mount("proc", "/proc");
    console();
    if let Err(e) = run() {
        println!("HOSTILE-ERROR {e}");
    }
    println!("HOSTILE-DONE");
    // Exiting as PID 1 panics the kernel: the deliberate end of this VM.
}
