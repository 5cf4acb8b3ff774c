//! COM1 (8250 UART at 0x3f8, IRQ 4): the guest console, output only, into a
//! [`ConsoleLog`].

use std::io::Write;

use vm_superio::Serial;

use super::IrqLine;
use super::console_log::ConsoleLog;
use crate::devices::bus::BusDevice;

/// The COM1 port device.
pub struct SerialConsole<W: Write + Send> {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, ConsoleLog<W>>,
}

impl<W: Write + Send> SerialConsole<W> {
    pub fn new(irq: IrqLine, out: ConsoleLog<W>) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Writes out a pending partial line.
    pub fn flush(&mut self) {
        if let Err(error) = self.uart.writer_mut().flush_line() {
            tracing::warn!(%error, "cannot write the console log");
        }
    }
}

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data)
            && let Err(error) = self.uart.write(offset, *byte)
        {
            tracing::warn!(%error, "console write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::console_log::SharedConsoleWatch;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn bytes_written_to_thr_reach_the_log_and_raise_no_irq_unless_enabled() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let watch = SharedConsoleWatch::default();
        let mut dev = SerialConsole::new(
            IrqLine(irq.try_clone().unwrap()),
            ConsoleLog::new(Vec::new(), watch.clone()),
        );
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(watch.lock().unwrap().bytes, 3);
        assert!(irq.read().is_err(), "no interrupt without IER set");
        // Line status register says the transmitter is empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wide accesses are ignored, not a panic.
        let mut wide = [0xffu8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(0, &[1, 2]);
    }
}
