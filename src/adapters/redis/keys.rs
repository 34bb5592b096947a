//! Key and channel names. Every key of one session shares the hash tag
//! `{c:<client id>}` and every key of one user `{u:<user>}`, so each script
//! touches one Redis Cluster slot.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{c:ID}:s` | hash | `epoch`, `node`, `core`, `conn`, `up`, `user`, `seq` (last message), `moves` (the last four owners before, `node:ms`), `claim` (the last claim's record: see `scripts::CLAIM`), `exp` (the expiry its CONNECT asked, s) |
//! | `P:{c:ID}:sub` | hash | filter → options |
//! | `P:{c:ID}:m` | hash | message seq → stored message ([`super::blob`]) |
//! | `P:{c:ID}:p` | hash | message seq → packet id it was sent with (`pkid` or `pkid:r`, released) |
//! | `P:{c:ID}:rx` | set | inbound QoS 2 packet ids awaiting PUBREL |
//! | `P:{u:USER}:c` | sorted set | presence entries → lease expiry (Unix ms) |
//! | `P:nodes` | sorted set | node id → lease expiry (Unix ms) |
//! | `P:own:NODE` | set | client ids of the persistent sessions the node claimed (some since claimed elsewhere): what it adopts when it starts again |
//! | `P:ctl:NODE` | channel | control messages for one node (kicks) |

/// The five keys of one session, in the order the scripts take them.
pub fn session(prefix: &str, client_id: &str) -> [String; 5] {
    let tag = format!("{prefix}:{{c:{client_id}}}");
    [
        format!("{tag}:s"),
        format!("{tag}:sub"),
        format!("{tag}:m"),
        format!("{tag}:p"),
        format!("{tag}:rx"),
    ]
}

/// A user's presence set.
pub fn user(prefix: &str, user: &str) -> String {
    format!("{prefix}:{{u:{user}}}:c")
}

/// What an ADMIT for the connection `conn` of a node's `incarnation`
/// evicted, kept for a presence lease in the user's slot: the admitting
/// node reads it back when ADMIT's answer was lost, to close the
/// connections it counted out. The incarnation keeps a restarted node,
/// which numbers its connections afresh, from reading another's.
pub fn evicted(prefix: &str, user: &str, incarnation: u64, conn: impl std::fmt::Display) -> String {
    format!("{prefix}:{{u:{user}}}:ev:{incarnation}:{conn}")
}

/// An API request's idempotency key (its own slot: nothing else is read
/// with it).
pub fn idempotency(prefix: &str, key: &str) -> String {
    format!("{prefix}:idem:{key}")
}

/// The node leases.
pub fn nodes(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

/// The client ids of the persistent sessions `node` claimed, which it
/// adopts when it starts again if no other node claimed them since
/// (`worker::adopt`). Its own slot: it is read only by that node.
pub fn owned(prefix: &str, node: u16) -> String {
    format!("{prefix}:own:{node}")
}

/// A node's control channel.
pub fn control(prefix: &str, node: u16) -> String {
    format!("{prefix}:ctl:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_keys_share_one_hash_tag() {
        let k = session("tt", "dev-1");
        assert_eq!(k[0], "tt:{c:dev-1}:s");
        assert!(k.iter().all(|k| k.starts_with("tt:{c:dev-1}:")));
        assert_eq!(user("tt", "alice"), "tt:{u:alice}:c");
    }
}
