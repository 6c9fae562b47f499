//! Ember's VMM for Linux microVMs on KVM, built on rust-vmm crates.
//!
//! Modules, in the order a VM comes to life:
//! - [`config`]: the VM's settings (flags or JSON) and their static checks.
//! - [`resources`]: host files and sockets, all opened before the guest runs.
//! - [`arch`]: x86_64 boot: memory map, kernel loading, MP table, CPUID, registers.
//! - [`devices`]: what the guest sees: buses, serial, i8042, virtio-mmio devices.
//! - [`vcpu`]: a vCPU thread and its KVM exit handling.
//! - [`vmm`]: builds a VM in boot order and runs it.
//! - [`exit`], [`signals`], [`logger`]: how a VM stops and reports.
//! - [`jail`], [`seccomp`]: the confinement of a VMM (namespaces, root,
//!   cgroup, uid, capabilities; per-thread syscall filters).
//! - [`probe`]: proves `/dev/kvm` can run a guest (API version, a tiny guest).

pub mod arch;
pub mod config;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod logger;
pub mod probe;
pub mod resources;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod vmm;
