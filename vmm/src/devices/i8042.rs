//! The i8042 keyboard controller, only as far as Linux uses it in a microVM:
//! `reboot=k` writes 0xFE (pulse reset) to port 0x64, which ends the VM.

use vm_superio::I8042Device;

use super::bus::BusDevice;
use super::legacy::EventFdTrigger;

/// The data port; the command/status port is `I8042_PORT + 4`.
pub const I8042_PORT: u64 = 0x60;
/// Ports from 0x60 through 0x64.
pub const I8042_PORT_COUNT: u64 = 5;

/// The controller; its reset line signals the VMM's exit event.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that signals `reset` when the guest pulses the reset line.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset @ (0 | 4)), 1) => data[0] = self.inner.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset @ (0 | 4)), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(offset, *value) {
                crate::warn_limited!("i8042: cannot signal the reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_signals_and_status_is_not_busy() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut kbd = I8042::new(EventFdTrigger(reset.try_clone().unwrap()));
        let mut status = [0u8];
        kbd.read(4, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer must read empty");
        assert!(reset.read().is_err(), "no reset before the command");
        kbd.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }
}
