//! Adoption at start: the persistent sessions this node's earlier life
//! claimed ([`keys::owned`]) are handed to the cores, which claim them
//! again without a connection; the claim (`scripts::CLAIM` with `adopt`)
//! takes only those no other node claimed since, and each comes back
//! parked offline; one another node claimed meanwhile becomes a departure
//! ([`left_while_down`]). Why, and what waits for it: `bridge::adoption`.

// The worker's files share its imports and helpers.
use super::claims::{moves, pairs};
use super::*;
use crate::bridge::adoption::Adoption;

/// How long the cluster bus waits for the adoption at most
/// (`Adoption::begin`): a node with more sessions than it can claim again
/// in that time goes on adopting the rest while its inbox is read (their
/// copies sent meanwhile are handed on, as before adoption), and a Redis
/// that does not answer keeps the node off the bus no longer than this.
/// The hello waits as long, at most, for the nodes that took sessions
/// meanwhile to announce them: longer than a node cut off from Kafka at
/// the same time takes to announce once it is back (the soak: 3.6 s
/// after the heal), short enough that the SUBACKs of the node's new
/// clients (held until their filters are announced, after the hello) do
/// not time out.
pub(crate) const ADOPT_WAIT_MS: u64 = 15_000;

/// Client ids asked of Redis per `SSCAN` step.
const SCAN_COUNT: usize = 1_000;

/// Adoptions handed out and not yet answered, at most: each holds one of
/// its core's pending claims (`runtime.max_pending_claims`, 4,096 by
/// default), which the clients reconnecting after the restart need too.
const IN_FLIGHT: usize = 256;

/// Pause before handing a core an adoption again when its inbox is full,
/// or while [`IN_FLIGHT`] adoptions are out.
const RETRY: Duration = Duration::from_millis(10);

/// Reads this node's index and hands each client id to a core
/// (`BridgeMsg::Adopt`), then tells the gate every id was read. Runs once,
/// after the first lease renewal (a claim needs the lease).
pub(super) async fn adopt(ctx: Rc<Ctx>, mut conn: Conn) {
    let s = &ctx.settings;
    let gate: &Arc<Adoption> = &ctx.bridge.adoption;
    let key = keys::owned(&s.prefix, s.node);
    let mut cursor = 0u64;
    let mut handed = 0usize;
    loop {
        let step: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut conn)
            .await;
        let (next, ids) = match step {
            Ok(step) => step,
            Err(e) => {
                warn!("cannot read this node's index of sessions from Redis ({e}): the sessions its earlier life held are not adopted; copies sent to it while it was down reach only those whose clients came back");
                break;
            }
        };
        for id in ids {
            while gate.outstanding() >= IN_FLIGHT {
                tokio::time::sleep(RETRY).await;
            }
            let client_id: Arc<str> = id.into();
            let core = ctx.bridge.core_of(client_id.as_bytes());
            loop {
                // A refused message drops its ticket; the gate stays
                // closed meanwhile, as every id is not read yet.
                let msg = BridgeMsg::Adopt {
                    client_id: client_id.clone(),
                    ticket: gate.ticket(),
                };
                match ctx.bridge.send(core, msg) {
                    Ok(()) => break,
                    Err(crate::bridge::Refusal::Busy) => {
                        tokio::time::sleep(RETRY).await;
                    }
                    // Stopping.
                    Err(_) => return,
                }
            }
            handed += 1;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if handed > 0 {
        info!(sessions = handed, "adopting the persistent sessions this node held before it restarted (those no other node claimed since)");
    }
    gate.scanned();
}

/// A session of this node's earlier life that another node claimed while
/// this one was down (an adoption's `other` answer: that node, the
/// session's moves and subscriptions) is recorded as a departure, as if it
/// had left this node then (`bridge::departures`): the other nodes may
/// still route its copies here, by what the earlier life announced, and
/// this node hands them on until the session's node is seen interested
/// in them. The hello waits for that too (`producer::say_hello`): it
/// would void those announcements before the session's node announced.
pub(super) fn left_while_down(ctx: &Ctx, client_id: &Arc<str>, v: &[Value]) {
    let s = &ctx.settings;
    let owner = match text(v.get(1)).parse::<u16>() {
        Ok(owner) if owner != s.node => owner,
        _ => return,
    };
    let Some(left) = moves(&text(v.get(2)))
        .into_iter()
        .rev()
        .find(|m| m.node == s.node)
    else {
        return;
    };
    let filters = pairs(v.get(3))
        .into_iter()
        .filter_map(|(filter, opts)| {
            let (opts, _) = sub_from(&opts)?;
            let filter = String::from_utf8(filter).ok()?;
            let plain =
                opts.qos != QoS::AtMostOnce && crate::id::GroupKey::parse(&filter).is_none();
            plain.then(|| Arc::from(filter))
        })
        .collect();
    ctx.bridge
        .departures
        .record(client_id, filters, left.at_ms, Some(owner));
}
