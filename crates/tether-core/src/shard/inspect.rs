//! Answers to the HTTP API's questions about this core's sessions: one
//! session, every session (of a user), the session gauges, and a kick.

use super::{Core, Entry, PendingKind, Phase};
use crate::bridge::{ClientInfo, SessionGauges, SubscriptionInfo};
use crate::codec::{reason, Version};
use crate::id::{ConnKey, TRANSPORT_NAMES};

impl Core {
    /// The session at `key`, if it is one.
    pub fn inspect(&self, key: ConnKey) -> Option<ClientInfo> {
        let mut st = self.st.borrow_mut();
        st.entry(key).and_then(|e| self.client_info(e))
    }

    /// Disconnects the client at `key` (MQTT 5: reason 0x98, Administrative
    /// action); its session lives on per its expiry. Whether a connection
    /// was there to close.
    pub fn kick(&self, key: ConnKey) -> bool {
        let mut st = self.st.borrow_mut();
        let link = st
            .entry(key)
            .filter(|e| matches!(e.phase, Phase::Active))
            .and_then(|e| e.link.as_mut());
        let Some(link) = link else {
            return false;
        };
        let code = link
            .version
            .is_v5()
            .then_some(reason::ADMINISTRATIVE_ACTION);
        link.request_close_why(code, false, Some("disconnected by the administrator"));
        true
    }

    /// Every session on this core, or those of `user`.
    pub fn list(&self, user: Option<&str>) -> Vec<ClientInfo> {
        let st = self.st.borrow();
        st.conns
            .iter()
            .filter_map(|(_, e)| self.client_info(e))
            .filter(|i| user.is_none() || i.username.as_deref() == user)
            .collect()
    }

    /// This core's session gauges, in one pass over the slab.
    pub fn gauges(&self) -> SessionGauges {
        let st = self.st.borrow();
        let pending = |k| st.pending.count(k) as u64;
        let mut g = SessionGauges {
            pending_verdicts: pending(PendingKind::Verdict),
            pending_claims: pending(PendingKind::Claim),
            pending_permits: pending(PendingKind::Permit),
            outbound_inflight: pending(PendingKind::Produce),
            ..Default::default()
        };
        for (_, e) in st.conns.iter() {
            match e.phase {
                Phase::Active => g.online += 1,
                Phase::Offline { .. } => g.offline += 1,
                _ => continue,
            }
            g.queued += e.session.queued.len() as u64;
            g.inflight += e.session.inflight.len() as u64;
            if let Some(link) = &e.link {
                g.inflight_capacity += link.window as u64;
                g.outbox_bytes += link.outbox_bytes as u64;
            }
        }
        g
    }

    /// The API's view of a session entry; `None` for entries that are not a
    /// session (a socket before CONNECT, a tombstone, a closing socket).
    fn client_info(&self, e: &Entry) -> Option<ClientInfo> {
        let online = match e.phase {
            Phase::Active => true,
            Phase::Offline { .. } => false,
            _ => return None,
        };
        let link = e.link.as_ref().filter(|_| online);
        Some(ClientInfo {
            client_id: e.client_id.as_deref()?.to_string(),
            username: link.and_then(|l| l.username.as_deref()).map(str::to_string),
            online,
            connection_id: e.id.to_string(),
            node: self.node.node_id,
            core: self.id,
            transport: link
                .and_then(|l| TRANSPORT_NAMES.get(usize::from(l.transport)))
                .map(|t| t.to_string()),
            connected_since_ms: link.map(|l| l.since_ms),
            peer: link.map(|l| l.peer.to_string()),
            protocol: link.map(|l| match l.version {
                Version::V31 => "3.1",
                Version::V311 => "3.1.1",
                Version::V5 => "5.0",
            }),
            subscriptions: e
                .session
                .subs
                .iter()
                .map(|(f, o, _)| SubscriptionInfo {
                    filter: f.to_string(),
                    qos: o.qos as u8,
                })
                .collect(),
            queued: e.session.queued.len(),
            inflight: e.session.inflight.len(),
            inflight_window: link.map(|l| usize::from(l.window)),
        })
    }
}
