//! What the core's timer wheel fires. Timers are never cancelled: each
//! handler checks the entry's real state (its phase, its own deadline) and
//! ignores, or re-arms, a timer that no longer applies.

use tracing::{debug, info};

use super::delivery::release_window;
use super::{Core, CoreState, Phase, Timer};
use crate::codec::reason;
use crate::id::ConnKey;
use crate::mesh::CoreMsg;
use crate::stats::bump;

impl Core {
    /// Advances the wheel to the current tick and handles what fired.
    pub fn on_tick(&self, fired: &mut Vec<(ConnKey, Timer)>) {
        let now = self.now_tick();
        {
            let mut st = self.st.borrow_mut();
            st.wheel.advance(now, fired);
            for (key, timer) in fired.drain(..) {
                self.on_timer(&mut st, key, timer, now);
            }
            let st = &mut *st;
            st.interest.sweep(&self.visible().interest);
            self.sweep_cluster_interest(st);
            self.expire_arrivals(st);
        }
        self.resume_if_drained();
    }

    fn on_timer(&self, st: &mut CoreState, key: ConnKey, timer: Timer, now: u64) {
        let Some(e) = st.entry(key) else { return };
        match (timer, &mut e.phase) {
            (
                Timer::ConnectDeadline,
                Phase::Connecting | Phase::AwaitingVerdict { .. } | Phase::AwaitingHandover { .. },
            ) => {
                if let Some(link) = e.link.as_mut() {
                    info!(conn = %e.id, peer = %link.peer, "no CONNECT within the deadline; closing");
                    link.request_close(None, true);
                    bump(&self.stats().timeouts, 1);
                }
            }
            // The CONNECT deadline of a connection that became active in
            // time is its first keep-alive check (see `activate`).
            (Timer::KeepAlive | Timer::ConnectDeadline, Phase::Active) => {
                let Some(link) = e.link.as_mut().filter(|l| l.keep_alive_ticks > 0) else {
                    return;
                };
                let deadline = link.last_seen + u64::from(link.keep_alive_ticks);
                if now >= deadline {
                    info!(conn = %e.id, peer = %link.peer, "keep-alive expired; closing");
                    let reason = link.version.is_v5().then_some(reason::KEEP_ALIVE_TIMEOUT);
                    link.request_close(reason, true);
                    bump(&self.stats().timeouts, 1);
                } else {
                    self.arm(st, deadline, key, Timer::KeepAlive);
                }
            }
            (Timer::Tombstone, Phase::Moved { to, until }) if now >= *until => {
                let to = **to;
                let subs = std::mem::take(&mut e.session.subs);
                let online = e.link.is_some();
                if online {
                    // The socket is still closing; `unregister` removes it.
                    e.phase = Phase::TakenOver;
                }
                for (filter, ..) in &subs {
                    self.unindex_sub(st, filter, key);
                }
                if !online {
                    st.conns.remove(key.index as usize);
                }
                // Behind every forward this tombstone sent.
                if to.core == self.id {
                    self.forward_end(st, to.key);
                } else {
                    self.route(to.core, CoreMsg::ForwardEnd { target: to.key });
                }
            }
            (Timer::MoveWindow, Phase::Active | Phase::Offline { .. })
                if e.session
                    .move_window
                    .as_ref()
                    .is_some_and(|w| now >= w.until) =>
            {
                release_window(e, &self.cfg, self.stats(), self.clock().instant());
            }
            (Timer::WillDelay, Phase::Offline { will, .. }) => {
                if let Some(w) = will.take_if(|w| now >= w.at) {
                    self.publish_will(st, *w.will, Some(w.origin));
                }
            }
            (Timer::SessionExpiry, Phase::Offline { expires_at, .. }) => {
                if now >= *expires_at {
                    debug!(conn = %e.id, "offline session expired");
                    bump(&self.stats().sessions_expired, 1);
                    self.end_session(st, key);
                } else {
                    let at = *expires_at;
                    self.arm(st, at, key, Timer::SessionExpiry);
                }
            }
            _ => {}
        }
    }
}
