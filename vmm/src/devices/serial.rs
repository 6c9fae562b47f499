//! COM1: an 8250 UART at port 0x3f8 on IRQ 4, the guest's console.

use std::io::Write;

use vm_superio::Serial;

use super::bus::BusDevice;
use super::legacy::EventFdTrigger;

/// First I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports a UART decodes.
pub const COM1_PORT_COUNT: u64 = 8;
/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// Where the guest console's output goes.
pub type ConsoleSink = Box<dyn Write + Send>;

/// The guest console: an emulated UART writing to a host sink.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialConsole {
    /// A UART that raises its interrupt through `irq` and writes to `out`.
    pub fn new(irq: EventFdTrigger, out: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Pushes buffered console output to the sink.
    pub fn flush(&mut self) {
        // Nothing useful can be done about a console sink that fails.
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *value) {
                crate::warn_limited!("serial: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(EventFdTrigger(irq), Box::new(out.clone()));
        for b in b"hi\n" {
            console.write(0, &[*b]);
        }
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        console.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Wide accesses are not a UART's: ignored, read as all ones.
        let mut wide = [0u8; 2];
        console.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
