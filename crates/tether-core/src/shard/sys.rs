//! `$SYS` statistics: core 0 publishes node figures as retained QoS 0
//! messages under `$SYS/broker/` every `sys.interval_secs`. By the `$`
//! rule only filters that name `$SYS` see them.

use std::sync::atomic::Ordering::Relaxed;

use super::Core;
use crate::codec::QoS;
use crate::session::Publication;
use crate::stats::Snapshot;

impl Core {
    /// Publishes the node's statistics (called on core 0 by its timer).
    pub fn publish_sys(&self) {
        let mut s = Snapshot::default();
        let mut subscriptions = 0;
        for c in &self.node.cores {
            s.add(&c.stats);
            subscriptions += c.subscriptions.load(Relaxed);
        }
        let dropped = s.dropped_slow_qos0
            + s.dropped_offline_qos0
            + s.dropped_queue_full
            + s.dropped_too_large
            + s.dropped_expired
            + s.dropped_session_gone
            + s.dropped_session_ended;
        let figures: [(&str, String); 11] = [
            ("version", format!("tether {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", self.node.started.elapsed().as_secs().to_string()),
            ("clients/connected", s.connections.to_string()),
            ("clients/total", s.connects.to_string()),
            ("subscriptions/count", subscriptions.to_string()),
            (
                "retained messages/count",
                self.node.retained.count.load(Relaxed).to_string(),
            ),
            ("messages/received", s.publishes_in.to_string()),
            ("messages/sent", s.publishes_out.to_string()),
            ("messages/dropped", dropped.to_string()),
            ("bytes/received", s.bytes_in.to_string()),
            ("bytes/sent", s.bytes_out.to_string()),
        ];
        let mut st = self.st.borrow_mut();
        for (name, value) in figures {
            let msg = self.message(Publication {
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                origin: None,
            });
            self.retain(&mut st, &msg);
            self.publish(&mut st, msg);
        }
    }
}
