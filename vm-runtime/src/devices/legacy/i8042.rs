//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU
//! reset command (`reboot=k` writes 0xfe to port 0x64), and Ctrl+Alt+Del
//! key presses injected by the VMM to ask the guest to shut down.
//!
//! Port 0x60 (offset 0) is data, port 0x64 (offset 4) status/command.

use std::collections::VecDeque;

use super::IrqLine;
use crate::devices::bus::BusDevice;

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

const CMD_READ_CONTROL: u8 = 0x20;
const CMD_WRITE_CONTROL: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_INTERFACE_TEST: u8 = 0xab;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const CONTROL_KBD_INTERRUPT: u8 = 0x01;
const CONTROL_SYSTEM_FLAG: u8 = 0x04;
const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
const KBD_RESET: u8 = 0xff;

/// Scan code set 2 (what Linux's atkbd expects from a controller that does
/// not translate, as this one: its control byte has no XLATE bit) for
/// pressing Ctrl, Alt and Delete and releasing them (`0xf0`: release;
/// `0xe0`: extended key).
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // press Ctrl, Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // release them
];
/// Bytes kept in the output buffer; more are dropped.
const OUTPUT_CAPACITY: usize = 16;

/// The controller.
pub struct I8042 {
    on_reset: Box<dyn Fn() + Send>,
    irq: IrqLine,
    control: u8,
    status: u8,
    pending_command: Option<u8>,
    output: VecDeque<u8>,
}

impl I8042 {
    /// `on_reset` runs when the guest asks for a CPU reset.
    pub fn new(irq: IrqLine, on_reset: Box<dyn Fn() + Send>) -> Self {
        Self {
            on_reset,
            irq,
            control: CONTROL_KBD_INTERRUPT | CONTROL_SYSTEM_FLAG,
            status: STATUS_SYSTEM_FLAG,
            pending_command: None,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
        }
    }

    /// Injects the Ctrl+Alt+Del key presses and releases.
    pub fn send_ctrl_alt_del(&mut self) {
        for code in CTRL_ALT_DEL {
            self.push(code);
        }
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() >= OUTPUT_CAPACITY {
            return;
        }
        self.output.push_back(byte);
        self.status |= STATUS_OUTPUT_FULL;
        if self.control & CONTROL_KBD_INTERRUPT != 0
            && let Err(error) = vm_superio::Trigger::trigger(&self.irq)
        {
            tracing::warn!(%error, "cannot raise the keyboard interrupt");
        }
    }

    fn pop(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if self.output.is_empty() {
            self.status &= !STATUS_OUTPUT_FULL;
        } else if self.control & CONTROL_KBD_INTERRUPT != 0 {
            // Level stays high while bytes remain: raise the edge again.
            let _ = vm_superio::Trigger::trigger(&self.irq);
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_RESET_CPU => (self.on_reset)(),
            CMD_READ_CONTROL => self.push(self.control),
            CMD_WRITE_CONTROL | CMD_WRITE_AUX => self.pending_command = Some(cmd),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_INTERFACE_TEST => self.push(0),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match self.pending_command.take() {
            Some(CMD_WRITE_CONTROL) => self.control = byte,
            Some(_) => {}
            None if byte == KBD_RESET => {
                self.push(KBD_ACK);
                self.push(KBD_RESET_OK);
            }
            None => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            OFFSET_DATA => self.pop(),
            OFFSET_COMMAND => self.status,
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            OFFSET_DATA => self.data(*byte),
            OFFSET_COMMAND => self.command(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042, Arc<AtomicUsize>, EventFd) {
        let resets = Arc::new(AtomicUsize::new(0));
        let counter = resets.clone();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(
            IrqLine(irq.try_clone().unwrap()),
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, resets, irq)
    }

    #[test]
    fn reset_command_calls_back() {
        let (mut dev, resets, _) = device();
        dev.write(OFFSET_COMMAND, &[0xaa]);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        dev.write(OFFSET_COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn status_never_says_input_full() {
        let (mut dev, _, _) = device();
        let mut s = [0u8];
        dev.read(OFFSET_COMMAND, &mut s);
        assert_eq!(s[0] & 0x02, 0);
    }

    #[test]
    fn ctrl_alt_del_is_readable_with_interrupts() {
        let (mut dev, _, irq) = device();
        dev.send_ctrl_alt_del();
        assert!(irq.read().unwrap() >= 1);
        let mut got = Vec::new();
        let mut b = [0u8];
        loop {
            dev.read(OFFSET_COMMAND, &mut b);
            if b[0] & STATUS_OUTPUT_FULL == 0 {
                break;
            }
            dev.read(OFFSET_DATA, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn control_byte_round_trips() {
        let (mut dev, _, _) = device();
        dev.write(OFFSET_COMMAND, &[CMD_WRITE_CONTROL]);
        dev.write(OFFSET_DATA, &[0x45]);
        dev.write(OFFSET_COMMAND, &[CMD_READ_CONTROL]);
        let mut b = [0u8];
        dev.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x45);
    }

    #[test]
    fn output_buffer_is_bounded_and_odd_widths_are_ignored() {
        let (mut dev, _, _) = device();
        for _ in 0..10 {
            dev.send_ctrl_alt_del();
        }
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
        dev.write(OFFSET_COMMAND, &[CMD_RESET_CPU, 0]);
        let mut wide = [0xffu8; 2];
        dev.read(7, &mut wide);
        assert_eq!(wide, [0, 0]);
    }
}
