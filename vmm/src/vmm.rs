//! One microVM: built from a [`VmmConfig`] in boot order, then run until
//! the guest stops, a signal arrives, or a vCPU fails.

use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use log::{debug, info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::arch;
use crate::arch::layout::{virtio_slot, VirtioSlot};
use crate::config::{field, ConfigError, VmmConfig};
use crate::devices::bus::{lock, Bus};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_COUNT};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::serial::{SerialConsole, COM1_IRQ, COM1_PORT, COM1_PORT_COUNT};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::exit::{ExitReason, ExitSignal};
use crate::resources::Resources;
use crate::seccomp::{self, Filters};
use crate::signals;
use crate::vcpu::{Buses, Vcpu};

/// Subscribers of the device event loop.
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How long vCPU threads get to leave KVM_RUN once the VM stops.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A setting is wrong (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// What the VMM was doing.
        what: String,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(#[from] arch::memory::MemoryError),
    /// The MP table did not fit.
    #[error("MP table: {0}")]
    Mptable(#[from] arch::mptable::MptableError),
    /// vCPU registers or CPUID could not be set.
    #[error("vCPU setup: {0}")]
    Vcpu(String),
    /// A device could not be created or wired up.
    #[error("device setup: {0}")]
    Device(String),
    /// A host call failed.
    #[error("{what}: {source}")]
    Io {
        /// What the VMM was doing.
        what: &'static str,
        /// The host error.
        source: std::io::Error,
    },
}

impl VmmError {
    /// The VMM's exit status for this error: 2 for bad settings, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmmError::Config(_) => 2,
            _ => 1,
        }
    }
}

fn kvm_err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// A built VM whose vCPUs have not started yet.
pub struct Vmm {
    // Field order is drop order: devices (and the vsock socket file) go
    // before the VM and KVM handles.
    event_manager: EventManager<Subscriber>,
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<SerialConsole>>,
    exit: Arc<ExitSignal>,
    _vm: VmFd,
    _kvm: Kvm,
    // KVM maps guest RAM from this mapping: it must outlive the vCPUs.
    _mem: GuestMemoryMmap,
}

/// Wires devices to the VM: buses, IRQs, ioeventfds, the event loop and
/// the command line that tells the guest where virtio devices are.
struct DeviceWiring<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    event_manager: &'a mut EventManager<Subscriber>,
    cmdline: Cmdline,
    virtio_count: usize,
}

impl DeviceWiring<'_> {
    fn irqfd(&self, gsi: u32) -> Result<EventFd, VmmError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an irqfd"))?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(kvm_err(format!("registering the irqfd for IRQ {gsi}")))?;
        Ok(evt)
    }

    /// The slot (register window and IRQ) and interrupt of the next virtio device.
    fn next_virtio_slot(&self) -> Result<(VirtioInterrupt, VirtioSlot), VmmError> {
        let slot = virtio_slot(self.virtio_count).map_err(|e| VmmError::Device(e.to_string()))?;
        Ok((VirtioInterrupt::new(self.irqfd(slot.irq)?), slot))
    }

    fn attach_virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: Arc<Mutex<D>>,
        slot: VirtioSlot,
    ) -> Result<(), VmmError> {
        let (base, irq) = (slot.base.0, slot.irq);
        for (index, evt) in lock(&device).queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(kvm_err(format!("registering queue {index} notifications")))?;
        }
        let transport = MmioTransport::new(device.clone(), self.mem.clone());
        self.mmio
            .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))
            .map_err(|e| VmmError::Device(e.to_string()))?;
        self.cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, vm_memory::GuestAddress(base), irq, None)
            .map_err(|e| {
                ConfigError::new(field::CMDLINE, format!("no room for virtio devices: {e}"))
            })?;
        self.event_manager.add_subscriber(device);
        self.virtio_count += 1;
        Ok(())
    }
}

/// Turns the stop eventfd into an exit reason on the event loop.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.event().read();
        // Writers that set no reason: the i8042 reset line and signal handlers.
        let reason = match signals::received() {
            Some(sig) => ExitReason::Signal(sig),
            None => ExitReason::GuestStopped("reset through the i8042 controller".into()),
        };
        self.0.stop(reason);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            warn!("cannot watch the stop event: {e}");
        }
    }
}

impl Vmm {
    /// Builds the VM in boot order: host resources, KVM, memory, legacy
    /// devices, virtio devices, kernel, MP table, vCPUs.
    pub fn build(config: &VmmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        signals::install().map_err(io_err("installing signal handlers"))?;
        let mut res = Resources::open(config)?;

        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        let max_vcpus = kvm
            .get_max_vcpus()
            .min(usize::from(crate::config::MAX_VCPUS));
        if usize::from(config.vcpus) > max_vcpus {
            return Err(ConfigError::new(
                field::VCPUS,
                format!(
                    "{} vCPUs: this host's KVM allows at most {max_vcpus}",
                    config.vcpus
                ),
            )
            .into());
        }
        let vm = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
        arch::regs::setup_vm(&vm).map_err(|e| VmmError::Vcpu(e.to_string()))?;

        let mem = arch::memory::create(config.mem_mib)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmmError::Device(format!("guest memory region {slot}: {e}")))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // Vmm keeps as long as the VM.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err(format!("registering memory slot {slot}")))?;
        }

        let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the stop event"))?);
        let mut event_manager = EventManager::<Subscriber>::new()
            .map_err(|e| VmmError::Device(format!("event loop: {e}")))?;
        event_manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));

        let cmdline = Cmdline::try_from(&config.cmdline, arch::layout::CMDLINE_MAX_SIZE)
            .map_err(|e| ConfigError::new(field::CMDLINE, e.to_string()))?;
        let mut wiring = DeviceWiring {
            vm: &vm,
            mem: &mem,
            pio: Bus::new(),
            mmio: Bus::new(),
            event_manager: &mut event_manager,
            cmdline,
            virtio_count: 0,
        };

        let serial = Arc::new(Mutex::new(SerialConsole::new(
            EventFdTrigger(wiring.irqfd(COM1_IRQ)?),
            std::mem::replace(&mut res.serial, Box::new(std::io::sink())),
        )));
        wiring
            .pio
            .insert(COM1_PORT, COM1_PORT_COUNT, serial.clone())
            .map_err(|e| VmmError::Device(e.to_string()))?;
        let reset = exit
            .event()
            .try_clone()
            .map_err(io_err("cloning the stop event"))?;
        wiring
            .pio
            .insert(
                I8042_PORT,
                I8042_PORT_COUNT,
                Arc::new(Mutex::new(I8042::new(EventFdTrigger(reset)))),
            )
            .map_err(|e| VmmError::Device(e.to_string()))?;

        for drive in std::mem::take(&mut res.drives) {
            let (interrupt, slot) = wiring.next_virtio_slot()?;
            let block = Block::new(drive.file, drive.read_only, drive.id, interrupt)
                .map_err(|e| ConfigError::new(field::DRIVE, e.to_string()))?;
            wiring.attach_virtio(Arc::new(Mutex::new(block)), slot)?;
        }
        if let Some((socket, cid)) = res.vsock.take() {
            let (interrupt, slot) = wiring.next_virtio_slot()?;
            let (listener, path) = socket.into_parts();
            let mut vsock = Vsock::new(cid, path.clone(), listener, interrupt).map_err(|e| {
                // The device would have removed it; without one, we do.
                let _ = std::fs::remove_file(&path);
                ConfigError::new(field::UDS, e.to_string())
            })?;
            if let Some(v) = &config.vsock {
                vsock.allow_host_ports(v.allowed_host_ports.iter().copied());
            }
            wiring.attach_virtio(Arc::new(Mutex::new(vsock)), slot)?;
        }

        let DeviceWiring {
            pio, mmio, cmdline, ..
        } = wiring;
        debug!("guest command line: {:?}", cmdline.as_cstring().ok());
        let boot = arch::loader::load(&mem, &mut res.kernel, res.initrd.as_mut(), &cmdline)
            .map_err(|e| match e {
                arch::loader::LoadError::InitrdTooLarge { .. } => {
                    VmmError::from(ConfigError::new(field::INITRD, e.to_string()))
                }
                other => VmmError::from(ConfigError::new(field::KERNEL, other.to_string())),
            })?;
        arch::mptable::setup(&mem, config.vcpus)?;

        let buses = Buses {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
        };
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err(format!("creating vcpu{index}")))?;
            arch::cpuid::apply(&kvm, &fd, index, config.vcpus)
                .map_err(|e| VmmError::Vcpu(format!("vcpu{index} CPUID: {e}")))?;
            arch::regs::setup_vcpu(&fd, &mem, &boot)
                .map_err(|e| VmmError::Vcpu(format!("vcpu{index}: {e}")))?;
            vcpus.push(Vcpu::new(fd, index, buses.clone(), exit.clone()));
        }

        Ok(Self {
            event_manager,
            vcpus,
            serial,
            exit,
            _vm: vm,
            _kvm: kvm,
            _mem: mem,
        })
    }

    /// Runs the VM until it stops and says why.
    pub fn run(self) -> Result<ExitReason, VmmError> {
        self.run_confined(None, false)
    }

    /// Like [`Vmm::run`], with each thread under its seccomp filter before
    /// the guest runs: vCPU threads install theirs first thing, the main
    /// thread its own, then the vCPUs are let go. `trigger` (debug only)
    /// makes the main thread call a forbidden syscall once filtered.
    pub fn run_confined(
        mut self,
        filters: Option<&Filters>,
        trigger: bool,
    ) -> Result<ExitReason, VmmError> {
        signals::wake_on_stop(self.exit.event());
        if let Some(sig) = signals::received() {
            // Asked to stop while the VM was being built.
            self.exit.stop(ExitReason::Signal(sig));
        }
        let started = Instant::now();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let go = Arc::new(Barrier::new(self.vcpus.len() + 1));
        for vcpu in std::mem::take(&mut self.vcpus) {
            let name = format!("vcpu{}", threads.len());
            let filter = filters.map(|f| f.vcpu.clone());
            let (go, exit) = (go.clone(), self.exit.clone());
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if let Some(Err(e)) = filter.as_ref().map(seccomp::install) {
                        exit.stop(ExitReason::Failed(format!("vCPU thread: {e}")));
                    }
                    go.wait();
                    vcpu.run()
                })
                .map_err(io_err("starting a vCPU thread"))?;
            threads.push(handle);
        }
        if let Some(f) = filters {
            if let Err(e) = seccomp::install(&f.main) {
                self.exit
                    .stop(ExitReason::Failed(format!("main thread: {e}")));
            }
            if trigger {
                warn!("--debug-seccomp-trigger: calling a forbidden syscall");
                seccomp::trigger_forbidden_syscall();
            }
        }
        go.wait();
        while !self.exit.is_stopping() {
            match self.event_manager.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => self
                    .exit
                    .stop(ExitReason::Failed(format!("event loop: {e}"))),
            }
        }
        stop_vcpus(threads);
        lock(&self.serial).flush();
        let reason = self
            .exit
            .reason()
            .unwrap_or_else(|| ExitReason::Failed("stopped without a reason".into()));
        info!("{reason} after {:.3} s", started.elapsed().as_secs_f64());
        if let Some(summary) = crate::devices::counters::summary() {
            warn!("device counters (guest-caused errors and limits that fired): {summary}");
        }
        Ok(reason)
    }
}

/// Kicks vCPU threads out of KVM_RUN until they have all ended, within a bound.
fn stop_vcpus(mut threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    while !threads.is_empty() && Instant::now() < deadline {
        threads.retain(|t| {
            if t.is_finished() {
                return false;
            }
            // A kick that lands before KVM_RUN is entered is lost; the loop retries.
            let _ = t.kill(signals::vcpu_kick_signal());
            true
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    if !threads.is_empty() {
        warn!("{} vCPU threads did not stop in time", threads.len());
    }
}
