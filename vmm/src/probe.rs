//! Host probe: proves that `/dev/kvm` can run a guest.
//!
//! Opens KVM, checks the API version, and runs a few bytes of real-mode code
//! that writes one byte to the serial port and halts. A host passes when the
//! guest's port write and its HLT both come back as VM exits.

use std::fmt;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// The KVM API version every Linux since 2.6.22 reports.
pub const KVM_API_VERSION: i32 = 12;

/// Guest physical address the probe code is loaded at.
const CODE_ADDR: u64 = 0x1000;
/// Size of the probe guest's memory.
const MEM_SIZE: usize = 0x10000;
/// The COM1 data port the probe guest writes to.
const PROBE_PORT: u16 = 0x3f8;
/// The byte the probe guest writes.
const PROBE_BYTE: u8 = b'E';
/// Exits tolerated before the probe gives up on seeing HLT.
const MAX_EXITS: usize = 64;

/// Real-mode code: `mov dx, 0x3f8; mov al, 'E'; out dx, al; hlt`.
const PROBE_CODE: [u8; 7] = [0xba, 0xf8, 0x03, 0xb0, PROBE_BYTE, 0xee, 0xf4];

/// Why the probe failed, in the host's terms.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM reports an API version other than [`KVM_API_VERSION`].
    #[error("KVM API version is {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// KVM lacks a capability the VMM needs.
    #[error("KVM lacks the capability {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed: {source}")]
    Kvm {
        /// What was being done.
        call: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest left by an exit the probe does not expect.
    #[error("unexpected VM exit: {0}")]
    UnexpectedExit(String),
    /// The guest halted without the expected port write.
    #[error("guest halted without writing {PROBE_BYTE:#x} to port {PROBE_PORT:#x}")]
    NoIoExit,
    /// The guest never halted.
    #[error("guest did not halt within {MAX_EXITS} exits")]
    NoHalt,
}

/// Which KVM implementation backs `/dev/kvm`, from `/sys/module`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmFlavor {
    /// Hardware virtualization: `kvm_intel` or `kvm_amd`, and whether
    /// nested paging (EPT or NPT) is on.
    Hardware {
        /// The vendor module's name.
        module: &'static str,
        /// EPT (Intel) or NPT (AMD) is enabled.
        nested_paging: bool,
    },
    /// PVM, a software hypervisor: stock Linux kernels do not boot on it.
    Pvm,
    /// No known vendor module is loaded.
    Unknown,
}

impl KvmFlavor {
    /// Reads the flavor from `/sys/module`.
    pub fn detect() -> Self {
        let sys = std::path::Path::new("/sys/module");
        for (module, param) in [("kvm_intel", "ept"), ("kvm_amd", "npt")] {
            if sys.join(module).is_dir() {
                let value =
                    std::fs::read_to_string(sys.join(module).join("parameters").join(param))
                        .unwrap_or_default();
                let nested_paging = matches!(value.trim(), "Y" | "1");
                return KvmFlavor::Hardware {
                    module,
                    nested_paging,
                };
            }
        }
        if sys.join("kvm_pvm").is_dir() {
            return KvmFlavor::Pvm;
        }
        KvmFlavor::Unknown
    }
}

impl fmt::Display for KvmFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmFlavor::Hardware {
                module,
                nested_paging,
            } => {
                let on = if *nested_paging { "on" } else { "off" };
                write!(f, "{module} (nested paging {on})")
            }
            KvmFlavor::Pvm => write!(f, "kvm_pvm (software; stock Linux guests do not boot)"),
            KvmFlavor::Unknown => write!(f, "unknown"),
        }
    }
}

/// What a successful probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Which KVM implementation answered.
    pub flavor: KvmFlavor,
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CAP_NR_VCPUS`: the recommended maximum vCPUs per VM.
    pub recommended_vcpus: usize,
    /// The port and data of the guest's I/O write.
    pub io_exit: (u16, Vec<u8>),
    /// VM exits seen, in order, ending with `Hlt`.
    pub exits: Vec<String>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kvm flavor: {}", self.flavor)?;
        writeln!(f, "kvm api version: {}", self.api_version)?;
        writeln!(f, "recommended vcpus: {}", self.recommended_vcpus)?;
        writeln!(
            f,
            "io exit: port {:#x} data {:02x?}",
            self.io_exit.0, self.io_exit.1
        )?;
        write!(f, "exits: {}", self.exits.join(", "))
    }
}

fn kvm_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ProbeError {
    move |source| ProbeError::Kvm { call, source }
}

/// Runs the probe against `/dev/kvm`.
pub fn run() -> Result<ProbeReport, ProbeError> {
    let kvm = Kvm::new().map_err(ProbeError::OpenKvm)?;
    let api_version = kvm.get_api_version();
    if api_version != KVM_API_VERSION {
        return Err(ProbeError::ApiVersion(api_version));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(ProbeError::MissingCap(name));
        }
    }
    let recommended_vcpus = kvm.get_nr_vcpus();

    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    mem.write_slice(&PROBE_CODE, GuestAddress(CODE_ADDR))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let host_addr = mem
        .find_region(GuestAddress(0))
        .ok_or_else(|| ProbeError::Memory("no region at 0".to_string()))?
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is backed by `mem`, which outlives `vm` (both are
    // dropped at the end of this function, `vm` first as declared later).
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rip = CODE_ADDR;
    regs.rflags = 0x2; // bit 1 is reserved and must be set
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

    let mut exits = Vec::new();
    let mut io_exit = None;
    for _ in 0..MAX_EXITS {
        match vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::IoOut(port, data) => {
                exits.push(format!("IoOut({port:#x})"));
                io_exit = Some((port, data.to_vec()));
            }
            VcpuExit::Hlt => {
                exits.push("Hlt".to_string());
                let io_exit = io_exit.ok_or(ProbeError::NoIoExit)?;
                if io_exit != (PROBE_PORT, vec![PROBE_BYTE]) {
                    return Err(ProbeError::UnexpectedExit(format!(
                        "I/O write to {:#x} of {:02x?}",
                        io_exit.0, io_exit.1
                    )));
                }
                return Ok(ProbeReport {
                    flavor: KvmFlavor::detect(),
                    api_version,
                    recommended_vcpus,
                    io_exit,
                    exits,
                });
            }
            // Signals and scheduling may interrupt KVM_RUN; run again.
            VcpuExit::Intr => exits.push("Intr".to_string()),
            other => return Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
        }
    }
    Err(ProbeError::NoHalt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_one_fact_per_line() {
        let report = ProbeReport {
            flavor: KvmFlavor::Hardware {
                module: "kvm_amd",
                nested_paging: true,
            },
            api_version: 12,
            recommended_vcpus: 4,
            io_exit: (PROBE_PORT, vec![PROBE_BYTE]),
            exits: vec!["IoOut(0x3f8)".into(), "Hlt".into()],
        };
        assert_eq!(
            report.to_string(),
            "kvm flavor: kvm_amd (nested paging on)\nkvm api version: 12\n\
             recommended vcpus: 4\nio exit: port 0x3f8 data [45]\nexits: IoOut(0x3f8), Hlt"
        );
    }

    #[test]
    fn probe_code_writes_the_probe_byte_to_com1_then_halts() {
        // mov dx, imm16 / mov al, imm8 / out dx, al / hlt
        assert_eq!(PROBE_CODE[0], 0xba);
        assert_eq!(
            u16::from_le_bytes([PROBE_CODE[1], PROBE_CODE[2]]),
            PROBE_PORT
        );
        assert_eq!(&PROBE_CODE[3..5], &[0xb0, PROBE_BYTE]);
        assert_eq!(&PROBE_CODE[5..], &[0xee, 0xf4]);
    }
}
