//! A vCPU thread: runs the guest and handles every KVM exit.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, info};

use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

/// KVM_SYSTEM_EVENT types (linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU's port I/O and MMIO exits are routed to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
}

/// One configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    buses: Buses,
    exit: Arc<ExitSignal>,
}

/// What the run loop does after an exit.
enum Next {
    Continue,
    Stop(ExitReason),
}

impl Vcpu {
    /// A vCPU whose registers are already set up.
    pub fn new(fd: VcpuFd, index: u8, buses: Buses, exit: Arc<ExitSignal>) -> Self {
        Self {
            fd,
            index,
            buses,
            exit,
        }
    }

    /// Runs the guest until the VM stops; a guest stop or failure stops the whole VM.
    pub fn run(mut self) {
        while !self.exit.is_stopping() {
            match self.run_once() {
                Next::Continue => {}
                Next::Stop(reason) => {
                    self.exit.stop(reason);
                    break;
                }
            }
        }
        debug!("vcpu{}: thread ends", self.index);
    }

    fn run_once(&mut self) -> Next {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Next::Continue;
            }
            Err(e) => {
                return Next::Stop(ExitReason::Failed(format!("vcpu{index}: KVM_RUN: {e}")));
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.buses.pio.read(u64::from(port), data) {
                    // Like an empty ISA bus: all ones.
                    data.fill(0xff);
                }
                Next::Continue
            }
            VcpuExit::IoOut(port, data) => {
                self.buses.pio.write(u64::from(port), data);
                Next::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.buses.mmio.read(addr, data) {
                    debug!("vcpu{index}: read of unmapped MMIO {addr:#x}");
                    data.fill(0);
                }
                Next::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.buses.mmio.write(addr, data) {
                    debug!("vcpu{index}: write to unmapped MMIO {addr:#x}");
                }
                Next::Continue
            }
            VcpuExit::Hlt => {
                info!("vcpu{index}: halted with interrupts off");
                Next::Stop(ExitReason::GuestStopped(format!("vcpu{index} halted")))
            }
            VcpuExit::Shutdown => Next::Stop(ExitReason::GuestStopped(format!(
                "vcpu{index} shut down (triple fault or reboot=t)"
            ))),
            VcpuExit::SystemEvent(kind, _) => match kind {
                SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitReason::GuestStopped("power off".into())),
                SYSTEM_EVENT_RESET => Next::Stop(ExitReason::GuestStopped("reset".into())),
                SYSTEM_EVENT_CRASH => self.fail("guest crash system event"),
                other => self.fail(&format!("unknown system event {other}")),
            },
            VcpuExit::FailEntry(reason, cpu) => self.fail(&format!(
                "VM entry failed: hardware reason {reason:#x} on host cpu {cpu}"
            )),
            VcpuExit::InternalError => self.fail("KVM internal error"),
            other => {
                let name = format!("{other:?}");
                self.fail(&format!("unexpected exit {name}"))
            }
        }
    }

    /// Reports a fatal exit with the registers that explain it.
    fn fail(&self, what: &str) -> Next {
        let regs = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cs={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, s.cs.selector, s.cr0, s.cr3, s.cr4, s.efer
            ),
            (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
        };
        let message = format!("vcpu{}: {what}; {regs}", self.index);
        error!("{message}");
        Next::Stop(ExitReason::Failed(message))
    }
}
