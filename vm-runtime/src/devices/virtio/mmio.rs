//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 register layout).
//!
//! Every register access from the guest is validated here: registers are
//! 32 bits wide and accessed only at their width; queue registers can be
//! changed only between FEATURES_OK and DRIVER_OK; a device whose queues do
//! not fit in guest memory is put in DEVICE_NEEDS_RESET instead of starting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Activation, FEATURE_VERSION_1, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::devices::bus::{BusDevice, lock};

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c4c_5548; // "HULL"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Device config space starts here.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;
/// Offset of QueueNotify, for ioeventfd registration.
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;

/// Transport-level counters.
#[derive(Debug, Default, serde::Serialize)]
pub struct MmioMetrics {
    /// Register accesses with a wrong width or offset.
    pub invalid_accesses: AtomicU64,
    /// Times the device was put in DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
    pub activations: AtomicU64,
    pub resets: AtomicU64,
}

/// One device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    metrics: Arc<MmioMetrics>,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            metrics: Arc::new(MmioMetrics::default()),
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("device queue sizes are valid powers of two"))
            .collect()
    }

    pub fn metrics(&self) -> Arc<MmioMetrics> {
        self.metrics.clone()
    }

    /// The transport's device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn invalid_access(&self, what: &'static str, offset: u64) {
        self.metrics
            .invalid_accesses
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(offset, what, "invalid virtio-mmio access ignored");
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_QUEUE_NUM_MAX => {
                return self.selected_queue().map_or(0, |q| u32::from(q.max_size()));
            }
            REG_QUEUE_READY => return self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            _ => {}
        }
        let device = lock(&self.device);
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => device.avail_features() as u32,
                1 => (device.avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => device.config_generation(),
            _ => {
                drop(device);
                self.invalid_access("read of a write-only or unknown register", offset);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            _ => self.invalid_access("write to a read-only or unknown register", offset),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            self.invalid_access(
                "feature write outside feature negotiation",
                REG_DRIVER_FEATURES,
            );
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | value,
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (value << 32),
            _ => self.invalid_access("feature select beyond 64 bits", REG_DRIVER_FEATURES),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            self.invalid_access("queue setup outside FEATURES_OK..DRIVER_OK", offset);
            return;
        }
        let Some(queue) = self.selected_queue() else {
            self.invalid_access("queue register of a queue that does not exist", offset);
            return;
        };
        match offset {
            REG_QUEUE_NUM => queue.set_size(value as u16),
            REG_QUEUE_READY => queue.set_ready(value == 1),
            REG_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            REG_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            REG_QUEUE_AVAIL_LOW => queue.set_avail_ring_address(Some(value), None),
            REG_QUEUE_AVAIL_HIGH => queue.set_avail_ring_address(None, Some(value)),
            REG_QUEUE_USED_LOW => queue.set_used_ring_address(Some(value), None),
            REG_QUEUE_USED_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => unreachable!("caller passes queue registers only"),
        }
    }

    fn notify(&mut self, queue: u32) {
        let device = lock(&self.device);
        match device.queue_events().get(queue as usize) {
            Some(evt) => {
                if let Err(error) = evt.write(1) {
                    tracing::warn!(%error, queue, "cannot signal a queue notification");
                }
            }
            None => {
                drop(device);
                self.invalid_access("notify of a queue that does not exist", REG_QUEUE_NOTIFY);
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            self.invalid_access("status write that clears bits", REG_STATUS);
            return;
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status = value;
            return;
        }
        let ordered = match added {
            VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status == 0,
            VIRTIO_CONFIG_S_DRIVER => self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => {
                self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status
                    == VIRTIO_CONFIG_S_ACKNOWLEDGE
                        | VIRTIO_CONFIG_S_DRIVER
                        | VIRTIO_CONFIG_S_FEATURES_OK
            }
            _ => false,
        };
        if !ordered {
            self.invalid_access("status bits out of order", REG_STATUS);
            return;
        }
        match added {
            VIRTIO_CONFIG_S_FEATURES_OK => {
                let avail = lock(&self.device).avail_features();
                // Leaving FEATURES_OK unset tells the driver the features were refused.
                if self.acked_features & !avail != 0 || self.acked_features & FEATURE_VERSION_1 == 0
                {
                    tracing::warn!(
                        acked = format_args!("{:#x}", self.acked_features),
                        offered = format_args!("{avail:#x}"),
                        "driver accepted features the device does not offer"
                    );
                    return;
                }
                self.status = value;
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status = value;
                self.activate();
            }
            _ => self.status = value,
        }
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let invalid = self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&self.mem));
        let result = match invalid {
            Some(index) => Err(super::ActivateError::InvalidQueue(index)),
            None => {
                // The device gets its own copy; the transport keeps answering
                // register reads from the original.
                let queues = self
                    .queues
                    .iter()
                    .map(|q| {
                        let mut q = Queue::try_from(q.state())
                            .expect("a queue that passed is_valid converts");
                        q.set_event_idx(event_idx);
                        q
                    })
                    .collect();
                lock(&self.device).activate(Activation {
                    mem: self.mem.clone(),
                    queues,
                    interrupt: self.interrupt.clone(),
                    acked_features: self.acked_features,
                })
            }
        };
        match result {
            Ok(()) => {
                self.metrics.activations.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, "virtio device cannot start; it needs a reset");
                self.metrics.needs_reset.fetch_add(1, Ordering::Relaxed);
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                let _ = self.interrupt.trigger(InterruptKind::Config);
            }
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        self.queues = Self::fresh_queues(&*device);
        drop(device);
        self.metrics.resets.fetch_add(1, Ordering::Relaxed);
        self.interrupt.clear();
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.invalid_access("register read that is not 32-bit aligned", offset);
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.invalid_access("register write that is not 32 bits", offset);
            return;
        };
        if !offset.is_multiple_of(4) {
            self.invalid_access("unaligned register write", offset);
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        evts: Vec<EventFd>,
        activated: bool,
        resets: usize,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            FEATURE_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa; 8], offset, data)
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            assert_eq!(a.queues.len(), 2);
            self.activated = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = false;
            self.resets += 1;
        }
        fn is_activated(&self) -> bool {
            self.activated
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>, EventFd) {
        let dev = Arc::new(Mutex::new(Dummy {
            evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
            activated: false,
            resets: 0,
        }));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        (MmioTransport::new(dev.clone(), mem, interrupt), dev, irq)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            REG_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, 1);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, 1);
        w(
            t,
            REG_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u32) {
        w(t, REG_QUEUE_SEL, index);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, base);
        w(t, REG_QUEUE_AVAIL_LOW, base + 0x1000);
        w(t, REG_QUEUE_USED_LOW, base + 0x2000);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    #[test]
    fn identifies_itself() {
        let (mut t, _, _) = setup();
        assert_eq!(r(&mut t, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        w(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn full_handshake_activates_the_device() {
        let (mut t, dev, _) = setup();
        negotiate(&mut t);
        assert_eq!(
            r(&mut t, REG_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_FEATURES_OK
        );
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(dev.lock().unwrap().activated);
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
        // Queue setup after DRIVER_OK is refused.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        // Reset clears everything.
        w(&mut t, REG_STATUS, 0);
        assert!(!dev.lock().unwrap().activated);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn legacy_driver_is_refused_features_ok() {
        let (mut t, _, _) = setup();
        w(&mut t, REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            &mut t,
            REG_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn queues_outside_guest_memory_need_reset() {
        let (mut t, dev, irq) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        // Rings beyond the end of the 1 MiB of guest memory.
        setup_queue(&mut t, 1, 0xfff_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(!dev.lock().unwrap().activated);
        assert_ne!(r(&mut t, REG_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(t.metrics().needs_reset.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn queue_not_ready_needs_reset() {
        let (mut t, dev, _) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(!dev.lock().unwrap().activated);
        assert_ne!(r(&mut t, REG_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn out_of_order_status_and_bad_widths_are_ignored() {
        let (mut t, _, _) = setup();
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        t.write(REG_STATUS, &[1]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        w(&mut t, REG_MAGIC + 2, 1);
        w(&mut t, 0x0f0, 1);
        assert!(t.metrics().invalid_accesses.load(Ordering::Relaxed) >= 4);
    }

    #[test]
    fn notify_writes_the_queue_eventfd_and_unknown_queues_are_ignored() {
        let (mut t, dev, _) = setup();
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 1);
        w(&mut t, REG_QUEUE_NOTIFY, 9);
        w(&mut t, REG_QUEUE_NOTIFY, u32::MAX);
    }

    #[test]
    fn interrupt_ack_and_config_reads() {
        let (mut t, _, _) = setup();
        t.interrupt.trigger(InterruptKind::Queue).unwrap();
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 1);
        w(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        let mut b = [0u8; 2];
        t.read(CONFIG_SPACE_OFFSET + 7, &mut b);
        assert_eq!(b, [0xaa, 0]);
    }
}
