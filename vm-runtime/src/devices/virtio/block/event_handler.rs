//! virtio-blk on the device thread: the queue's notify eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.queue_events()[0], EventSet::IN)) {
            tracing::error!(drive = %self.id(), ?error, "cannot watch the virtio-blk queue");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != std::os::fd::AsRawFd::as_raw_fd(&self.queue_events()[0]) {
            return;
        }
        // EAGAIN only means another wakeup drained it already.
        let _ = self.queue_events()[0].read();
        if self.process_queue() {
            self.signal_used();
        }
    }
}
