//! virtio-vsock on the device thread: its three queues, the listener and
//! every connection's socket.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE, Vsock};
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.queue_events() {
            if let Err(error) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!(?error, "cannot watch a vsock queue");
            }
        }
        self.muxer.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.reset_pending {
            self.reset_pending = false;
            self.muxer.reset(ops);
        }
        let fd = events.fd();
        let queue = self.queue_events().iter().position(|e| e.as_raw_fd() == fd);
        match queue {
            Some(index) => {
                let _ = self.queue_events()[index].read();
                match index {
                    TX_QUEUE => self.process_tx(ops),
                    RX_QUEUE | EVENT_QUEUE => {}
                    _ => unreachable!("three queues"),
                }
            }
            None => self.muxer.handle_host_event(fd, events.event_set(), ops),
        }
        if self.is_activated() {
            self.process_rx(ops);
        }
    }
}
