//! Address-range dispatch from vCPU exits (port I/O or MMIO) to devices.
//!
//! A bus is built before the vCPUs start and never changes after, so lookups
//! need no lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device on a bus: reads and writes at an offset from its base.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Sorted, non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl Bus {
    /// Places `device` at `base..base + len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, BusRange { base, len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` within it.
    fn resolve(&self, addr: u64) -> Option<(&BusRange, u64)> {
        let idx = self.ranges.partition_point(|r| r.base <= addr);
        let range = self.ranges.get(idx.checked_sub(1)?)?;
        let offset = addr - range.base;
        (offset < range.len).then_some((range, offset))
    }

    /// Reads from the device at `addr`; false when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((range, offset)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex; a device that panicked while holding it is still
/// used (its state is plain data, and the VMM must keep serving the others).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Scratch::default()));
        let b = Arc::new(Mutex::new(Scratch::default()));
        let mut bus = Bus::default();
        bus.insert(b.clone(), 0x2000, 0x100).unwrap();
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1005, &mut data));
        assert_eq!(data, [5, 5]);
        assert!(bus.write(0x20ff, &[7]));
        assert_eq!(b.lock().unwrap().last_write, Some((0xff, vec![7])));
        assert!(!bus.read(0x1100, &mut data));
        assert!(!bus.write(0xfff, &[1]));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let d = Arc::new(Mutex::new(Scratch::default()));
        let mut bus = Bus::default();
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(d.clone(), 0x10ff, 0x10).is_err());
        assert!(bus.insert(d.clone(), 0xf00, 0x101).is_err());
        assert!(bus.insert(d.clone(), 0x3000, 0).is_err());
        assert!(bus.insert(d, u64::MAX, 2).is_err());
    }
}
