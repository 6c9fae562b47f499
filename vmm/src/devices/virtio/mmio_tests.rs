use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::{ActivateError, IrqKind, VirtioInterrupt};

struct Dummy {
    interrupt: VirtioInterrupt,
    events: Vec<EventFd>,
    acked: u64,
    activated: Option<usize>,
    config: [u8; 8],
}

impl MutEventSubscriber for Dummy {
    fn process(&mut self, _: Events, _: &mut EventOps) {}
    fn init(&mut self, _: &mut EventOps) {}
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }
    fn activate(&mut self, _: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.activated = Some(queues.len());
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
}

fn setup() -> (Arc<Mutex<Dummy>>, MmioTransport) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dummy = Arc::new(Mutex::new(Dummy {
        interrupt: VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        events: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
        acked: 0,
        activated: None,
        config: *b"abcdefgh",
    }));
    let transport = MmioTransport::new(dummy.clone(), mem);
    (dummy, transport)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport) {
    wr(t, 0x070, 1);
    wr(t, 0x070, 3);
    wr(t, 0x024, 1);
    wr(t, 0x020, 1); // VERSION_1 is bit 32
    wr(t, 0x024, 0);
    wr(t, 0x020, 1);
    wr(t, 0x070, 3 | 8);
}

fn setup_queues(t: &mut MmioTransport) {
    for q in 0..2u32 {
        wr(t, 0x030, q);
        assert_eq!(rd(t, 0x034), 16);
        wr(t, 0x038, 16);
        let base = 0x1000 * (q + 1) * 4;
        wr(t, 0x080, base);
        wr(t, 0x090, base + 0x1000);
        wr(t, 0x0a0, base + 0x2000);
        wr(t, 0x044, 1);
    }
}

#[test]
fn identifies_itself() {
    let (_, mut t) = setup();
    assert_eq!(rd(&mut t, 0), 0x7472_6976);
    assert_eq!(rd(&mut t, 4), 2);
    assert_eq!(rd(&mut t, 8), 42);
    wr(&mut t, 0x014, 1);
    assert_eq!(rd(&mut t, 0x010), 1);
    let mut cfg = [0u8; 3];
    t.read(0x102, &mut cfg);
    assert_eq!(&cfg, b"cde");
}

#[test]
fn activates_on_driver_ok_with_valid_queues() {
    let (dummy, mut t) = setup();
    negotiate(&mut t);
    assert_eq!(rd(&mut t, 0x070), 0xb);
    assert_eq!(dummy.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
    setup_queues(&mut t);
    wr(&mut t, 0x070, 0xb | 4);
    assert_eq!(dummy.lock().unwrap().activated, Some(2));
    assert_eq!(rd(&mut t, 0x070), 0xf);
    // Queue registers are frozen once running.
    wr(&mut t, 0x030, 0);
    wr(&mut t, 0x038, 4);
    wr(&mut t, 0x030, 0);
    assert_eq!(rd(&mut t, 0x044), 1);
}

#[test]
fn refuses_features_without_version_1() {
    let (_, mut t) = setup();
    wr(&mut t, 0x070, 1);
    wr(&mut t, 0x070, 3);
    wr(&mut t, 0x020, 1);
    wr(&mut t, 0x070, 3 | 8);
    assert_eq!(rd(&mut t, 0x070) & 8, 0, "FEATURES_OK must not stick");
}

#[test]
fn queue_outside_memory_marks_needs_reset() {
    let (dummy, mut t) = setup();
    negotiate(&mut t);
    setup_queues(&mut t);
    wr(&mut t, 0x030, 1);
    // Reopen setup by resetting, then point a queue past the end of memory.
    wr(&mut t, 0x070, 0);
    negotiate(&mut t);
    setup_queues(&mut t);
    wr(&mut t, 0x030, 1);
    let status = rd(&mut t, 0x070);
    assert_eq!(status, 0xb);
    wr(&mut t, 0x044, 0);
    wr(&mut t, 0x0a0, 0xfff_0000);
    wr(&mut t, 0x044, 1);
    wr(&mut t, 0x070, 0xb | 4);
    assert_eq!(dummy.lock().unwrap().activated, None);
    assert_ne!(rd(&mut t, 0x070) & 0x40, 0);
    assert_ne!(rd(&mut t, 0x060) & IrqKind::Config as u32, 0);
}

#[test]
fn odd_accesses_and_unknown_queues_are_ignored() {
    let (dummy, mut t) = setup();
    let mut two = [0u8; 2];
    t.read(0, &mut two);
    assert_eq!(two, [0, 0]);
    t.write(0x070, &[1, 0]);
    assert_eq!(rd(&mut t, 0x070), 0);
    negotiate(&mut t);
    wr(&mut t, 0x030, 7);
    assert_eq!(rd(&mut t, 0x034), 0);
    wr(&mut t, 0x038, 16);
    // A kick that misses the ioeventfd still reaches the device's queue event.
    wr(&mut t, 0x050, 1);
    assert_eq!(dummy.lock().unwrap().events[1].read().unwrap(), 1);
    wr(&mut t, 0x050, 9);
}
