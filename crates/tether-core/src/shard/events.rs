//! Connection events for the outbound bridge (`kafka.events_topic`): a
//! session became active, or its connection ended. Fire and forget: the
//! bridge queues them for its own thread, and nobody waits for them.

use super::{Core, Entry, Link};
use crate::bridge::outbound::{ConnEvent, ConnEventKind};
use crate::id::TRANSPORT_NAMES;

impl Core {
    /// Tells the outbound bridge about `link` of entry `e` (a connection
    /// without a client id, refused before its claim, has no event).
    pub(super) fn announce(&self, kind: ConnEventKind, e: &Entry, link: &Link) {
        let Some(client_id) = e.client_id.clone() else {
            return;
        };
        let at_ms = crate::wallclock::now_ms();
        self.node.outbound.event(ConnEvent {
            kind,
            client_id,
            username: link.username.clone(),
            transport: TRANSPORT_NAMES[usize::from(link.transport) % TRANSPORT_NAMES.len()],
            graceful: link.graceful,
            at_ms,
        });
    }
}
