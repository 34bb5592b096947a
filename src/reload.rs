//! What SIGHUP changes in a running node beyond the files it re-reads: the
//! configuration keys that are safe to change under connected clients.
//!
//! A key is safe when it is read where it is used, on every use, from a
//! value the reload can replace: an atomic (`shard::Admission`, the bans'
//! limits, the store's `UserLimit`) or an `ArcSwap` (the deny lists). The
//! rest of `Config` is copied into each core at start, and a change to it is
//! named in the log as waiting for a restart.
//!
//! | keys | takes effect |
//! | --- | --- |
//! | `mqtt.deny_subscribe`, `mqtt.deny_publish` | the next SUBSCRIBE or PUBLISH (existing subscriptions stay) |
//! | `limits.max_connections_per_user`, `limits.per_user_policy` | the next CONNECT (memory store: between non-zero limits only) |
//! | `listeners.max_accepts_per_sec`, `listeners.overload_lag_ms`, `listeners.max_handshakes_per_core` | the next accept, the next CONNECT |
//! | `auth.ban_after_failures`, `auth.ban_window_secs`, `auth.ban_secs` | the next refused login (bans running keep their end) |

use std::sync::Arc;

use crate::adapters::auth::AuthFiles;
use crate::config::Config;
use crate::engine::NodeState;

/// A handle on the node's reloadable settings, for the SIGHUP thread.
#[derive(Clone)]
pub struct Live {
    node: Arc<NodeState>,
    auth_files: Arc<AuthFiles>,
}

/// One group of keys a reload found changed: put in force, or why not.
pub type Outcome = Result<String, String>;

impl Live {
    /// The handle of a started node.
    pub(crate) fn new(node: Arc<NodeState>, auth_files: Arc<AuthFiles>) -> Live {
        Live { node, auth_files }
    }

    /// Puts in force each group of keys that differs between `running`
    /// and `new`, and copies what it applied into `running`: whatever still
    /// differs afterwards waits for a restart. One outcome per changed
    /// group.
    pub fn apply(&self, running: &mut Config, new: &Config) -> Vec<Outcome> {
        let mut out = Vec::new();
        let (m, n) = (&mut running.mqtt, &new.mqtt);
        if m.deny_subscribe != n.deny_subscribe || m.deny_publish != n.deny_publish {
            out.push(if self.auth_files.replace_deny_lists(n) {
                m.deny_subscribe.clone_from(&n.deny_subscribe);
                m.deny_publish.clone_from(&n.deny_publish);
                Ok(format!(
                    "mqtt.deny_subscribe ({} filters), mqtt.deny_publish ({} filters)",
                    n.deny_subscribe.len(),
                    n.deny_publish.len()
                ))
            } else {
                Err(
                    "mqtt.deny_*: the node runs a custom authorizer, which has no deny lists"
                        .into(),
                )
            });
        }
        let (l, n) = (&mut running.limits, &new.limits);
        if l.max_connections_per_user != n.max_connections_per_user
            || l.per_user_policy != n.per_user_policy
        {
            out.push(
                match self
                    .node
                    .store
                    .set_user_limit(n.max_connections_per_user, n.per_user_policy)
                {
                    Ok(()) => {
                        *l = n.clone();
                        Ok(format!(
                            "limits.max_connections_per_user = {}, limits.per_user_policy = {:?}",
                            n.max_connections_per_user, n.per_user_policy
                        ))
                    }
                    Err(why) => Err(format!("limits.max_connections_per_user: {why}")),
                },
            );
        }
        let (l, n) = (&mut running.listeners, &new.listeners);
        let admission = |l: &crate::config::ListenerConfig| {
            (
                l.max_accepts_per_sec,
                l.overload_lag_ms,
                l.max_handshakes_per_core,
            )
        };
        if admission(l) != admission(n) {
            self.node.admission.set(n);
            l.max_accepts_per_sec = n.max_accepts_per_sec;
            l.overload_lag_ms = n.overload_lag_ms;
            l.max_handshakes_per_core = n.max_handshakes_per_core;
            out.push(Ok(format!(
                "listeners.max_accepts_per_sec = {}, listeners.overload_lag_ms = {}, \
                 listeners.max_handshakes_per_core = {}",
                n.max_accepts_per_sec, n.overload_lag_ms, n.max_handshakes_per_core
            )));
        }
        let (a, n) = (&mut running.auth, &new.auth);
        if (a.ban_after_failures, a.ban_window_secs, a.ban_secs)
            != (n.ban_after_failures, n.ban_window_secs, n.ban_secs)
        {
            self.node
                .bans
                .set(n.ban_after_failures, n.ban_window_secs, n.ban_secs);
            a.ban_after_failures = n.ban_after_failures;
            a.ban_window_secs = n.ban_window_secs;
            a.ban_secs = n.ban_secs;
            out.push(Ok(format!(
                "auth.ban_after_failures = {}, auth.ban_window_secs = {}, auth.ban_secs = {}",
                n.ban_after_failures, n.ban_window_secs, n.ban_secs
            )));
        }
        out
    }
}
