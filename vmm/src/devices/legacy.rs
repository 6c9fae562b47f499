//! Glue between vm-superio's legacy devices and Ember's buses and eventfds.

use vmm_sys_util::eventfd::EventFd;

/// A vm-superio trigger that signals an eventfd (an irqfd, or the VMM's
/// exit event for the i8042 reset line).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
