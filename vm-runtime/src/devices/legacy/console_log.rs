//! The guest console's sink: a log file written a line at a time, watched
//! for the kernel's panic banner so a following reboot is reported as a panic.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::devices::bus::lock;

/// The banner Linux prints when it panics.
const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
/// What Linux prints when it powers off; without ACPI it then halts forever,
/// so the VMM ends the VM on this line.
const POWER_DOWN_BANNER: &[u8] = b"reboot: Power down";
/// Longest line kept before it is written out without a newline.
const MAX_LINE: usize = 1024;

/// What the console has seen that the VMM reports on.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    /// The first panic line, if the guest printed one.
    pub panic_line: Option<String>,
    /// Bytes the guest wrote to the console.
    pub bytes: u64,
}

/// Shared view of [`ConsoleWatch`] for the VMM's exit handling.
pub type SharedConsoleWatch = Arc<Mutex<ConsoleWatch>>;

/// Line-buffered writer over the console file.
pub struct ConsoleLog<W: Write> {
    out: W,
    line: Vec<u8>,
    watch: SharedConsoleWatch,
    on_power_down: Option<Box<dyn Fn() + Send>>,
}

impl<W: Write> ConsoleLog<W> {
    pub fn new(out: W, watch: SharedConsoleWatch) -> Self {
        Self {
            out,
            line: Vec::with_capacity(256),
            watch,
            on_power_down: None,
        }
    }

    /// Runs `f` when the guest prints its power-down line.
    pub fn on_power_down(mut self, f: Box<dyn Fn() + Send>) -> Self {
        self.on_power_down = Some(f);
        self
    }

    /// Writes out the pending partial line (at VM exit).
    pub fn flush_line(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        self.out.write_all(&self.line)?;
        self.line.clear();
        self.out.flush()
    }

    fn end_line(&mut self) -> std::io::Result<()> {
        let contains = |banner: &[u8]| self.line.windows(banner.len()).any(|w| w == banner);
        if contains(POWER_DOWN_BANNER)
            && let Some(f) = &self.on_power_down
        {
            f();
        }
        if contains(PANIC_BANNER) {
            let mut watch = lock(&self.watch);
            if watch.panic_line.is_none() {
                let text = String::from_utf8_lossy(&self.line).trim().to_string();
                tracing::warn!(line = %text, "guest kernel panicked");
                watch.panic_line = Some(text);
            }
        }
        self.out.write_all(&self.line)?;
        self.line.clear();
        Ok(())
    }
}

impl<W: Write> Write for ConsoleLog<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.watch).bytes += buf.len() as u64;
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.end_line()?;
            }
        }
        Ok(buf.len())
    }

    /// The UART flushes after every byte; lines are written whole instead.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_lines_and_keeps_partial_ones() {
        let watch = SharedConsoleWatch::default();
        let mut log = ConsoleLog::new(Vec::new(), watch.clone());
        log.write_all(b"hello\nwor").unwrap();
        assert_eq!(log.out, b"hello\n");
        log.flush_line().unwrap();
        assert_eq!(log.out, b"hello\nwor");
        assert_eq!(watch.lock().unwrap().bytes, 9);
    }

    #[test]
    fn detects_the_panic_banner_once() {
        let watch = SharedConsoleWatch::default();
        let mut log = ConsoleLog::new(Vec::new(), watch.clone());
        for b in b"[ 1.0] Kernel panic - not syncing: sysrq triggered crash\n" {
            log.write_all(&[*b]).unwrap();
        }
        log.write_all(b"Kernel panic - not syncing: second\n")
            .unwrap();
        let line = watch.lock().unwrap().panic_line.clone().unwrap();
        assert!(line.ends_with("sysrq triggered crash"), "{line}");
    }

    #[test]
    fn ordinary_output_is_not_a_panic() {
        let watch = SharedConsoleWatch::default();
        let mut log = ConsoleLog::new(Vec::new(), watch.clone());
        log.write_all(b"Kernel panic is a phrase\nnot syncing\n")
            .unwrap();
        assert!(watch.lock().unwrap().panic_line.is_none());
    }

    #[test]
    fn power_down_line_calls_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let mut log = ConsoleLog::new(Vec::new(), SharedConsoleWatch::default()).on_power_down(
            Box::new(move || {
                s2.fetch_add(1, Ordering::SeqCst);
            }),
        );
        log.write_all(b"[    2.1] reboot: Restarting system\n")
            .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        log.write_all(b"[    2.1] reboot: Power down\n").unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn very_long_lines_are_split() {
        let watch = SharedConsoleWatch::default();
        let mut log = ConsoleLog::new(Vec::new(), watch);
        log.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        assert_eq!(log.out.len(), MAX_LINE);
    }
}
