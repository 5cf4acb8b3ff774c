//! virtio-rng on the device thread.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Rng;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.queue_events()[0], EventSet::IN)) {
            tracing::error!(?error, "cannot watch the virtio-rng queue");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue_events()[0].read();
        self.process_queue();
    }
}
