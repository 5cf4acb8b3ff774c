//! virtio-net on the device thread: the two queues and the tap.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::VirtioDevice;

impl Net {
    /// Watches the tap only while frames can be delivered, so a full guest
    /// does not make the device thread spin on a readable tap.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wants_tap();
        if want == self.tap_watched {
            return;
        }
        let events = Events::new_raw(self.tap.as_raw_fd(), EventSet::IN);
        let result = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.tap_watched = want,
            Err(error) => tracing::warn!(net = %self.id, ?error, "cannot change tap interest"),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.queue_events() {
            if let Err(error) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!(net = %self.id, ?error, "cannot watch a net queue");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Offload changes from activation or reset come first, before the
        // new driver gets a frame.
        self.apply_tap_offloads();
        let fd = events.fd();
        if fd == self.queue_events()[TX_QUEUE].as_raw_fd() {
            let _ = self.queue_events()[TX_QUEUE].read();
            self.process_tx();
        } else if fd == self.queue_events()[RX_QUEUE].as_raw_fd() {
            let _ = self.queue_events()[RX_QUEUE].read();
            self.process_rx();
        } else if fd == self.tap.as_raw_fd() {
            self.process_rx();
        }
        self.update_tap_interest(ops);
    }
}
