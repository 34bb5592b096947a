//! The HTTP API's questions about the whole cluster: a user's connections,
//! a session wherever it is, a kick wherever the client is connected, and
//! the idempotency keys of its publishes (one value per key:
//! `0:<fingerprint>` while the first request runs, then
//! `1:<fingerprint>:<answer>`).

// The worker's files share its imports and helpers.
use super::*;

pub(super) fn answer_unavailable(q: Lookup) {
    let e = || StoreError::Unavailable("Redis is not reachable".into());
    match q {
        Lookup::User { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::Client { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::Kick { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::IdempotencyBegin { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::IdempotencyEnd { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
    }
}

/// What an idempotency key's value says.
fn held(value: &str) -> Idempotency {
    match value.split_once(':') {
        Some(("1", rest)) => {
            let (fingerprint, answer) = rest.split_once(':').unwrap_or((rest, ""));
            Idempotency::Held {
                fingerprint: fingerprint.to_owned(),
                answer: Some(answer.to_owned()),
            }
        }
        Some((_, fingerprint)) => Idempotency::Held {
            fingerprint: fingerprint.to_owned(),
            answer: None,
        },
        None => Idempotency::Held {
            fingerprint: value.to_owned(),
            answer: None,
        },
    }
}

/// Node incarnations whose lease is current.
async fn live_nodes(ctx: &Ctx, conn: &mut Conn) -> redis::RedisResult<Vec<String>> {
    redis::cmd("ZRANGEBYSCORE")
        .arg(keys::nodes(&ctx.settings.prefix))
        .arg(now_ms())
        .arg("+inf")
        .query_async(conn)
        .await
}

pub(super) async fn lookup(ctx: &Ctx, mut conn: Conn, q: Lookup) {
    let s = &ctx.settings;
    match q {
        Lookup::User { user, reply } => {
            let r = async {
                let live = live_nodes(ctx, &mut conn).await?;
                let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(keys::user(&s.prefix, &user))
                    .arg(now_ms())
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, RedisError>(
                    members
                        .iter()
                        .filter_map(|m| parse_member(m))
                        .filter(|e| live.contains(&format!("{}:{}", e.conn.node, e.incarnation)))
                        .map(|e| Connection {
                            client_id: e.client_id,
                            conn: e.conn,
                            transport: e.transport,
                            since_ms: e.since_ms,
                        })
                        .collect(),
                )
            }
            .await;
            let _ = reply.send(r.map_err(|e| unavailable(ctx, e)));
        }
        Lookup::Client { client_id, reply } => {
            let k = keys::session(&s.prefix, &client_id);
            let r = async {
                let (own, subs, messages, inflight): (
                    HashMap<String, String>,
                    HashMap<String, Vec<u8>>,
                    usize,
                    usize,
                ) = redis::pipe()
                    .cmd("HGETALL")
                    .arg(&k[0])
                    .cmd("HGETALL")
                    .arg(&k[1])
                    .cmd("HLEN")
                    .arg(&k[2])
                    .cmd("HLEN")
                    .arg(&k[3])
                    .query_async(&mut conn)
                    .await?;
                if own.is_empty() {
                    return Ok(None);
                }
                let live = live_nodes(ctx, &mut conn).await?;
                let node_alive = own
                    .get("node")
                    .is_some_and(|n| live.iter().any(|l| l.split(':').next() == Some(n)));
                let mut subscriptions: Vec<(String, u8)> = subs
                    .into_iter()
                    .filter_map(|(f, o)| Some((f, sub_from(&o)?.0.qos as u8)))
                    .collect();
                subscriptions.sort();
                Ok::<_, RedisError>(Some(StoredSession {
                    conn: own.get("conn").and_then(|c| ConnId::parse(c)),
                    online: own.get("up").map(String::as_str) == Some("1") && node_alive,
                    user: own.get("user").filter(|u| !u.is_empty()).cloned(),
                    subscriptions,
                    messages,
                    inflight,
                }))
            }
            .await;
            let _ = reply.send(r.map_err(|e| unavailable(ctx, e)));
        }
        Lookup::Kick { client_id, reply } => {
            let k = keys::session(&s.prefix, &client_id);
            let r: redis::RedisResult<Vec<Option<String>>> = redis::cmd("HMGET")
                .arg(&k[0])
                .arg("conn")
                .arg("up")
                .query_async(&mut conn)
                .await;
            let r = match r {
                Ok(v) => match (v.first().cloned().flatten(), v.get(1).cloned().flatten()) {
                    (Some(c), Some(up)) if up == "1" => match ConnId::parse(&c) {
                        Some(id) => {
                            let msg =
                                format!("kick {id} {} {client_id}", reason::ADMINISTRATIVE_ACTION);
                            publish(ctx, &mut conn, id.node, msg).await;
                            Ok(true)
                        }
                        None => Ok(false),
                    },
                    _ => Ok(false),
                },
                Err(e) => Err(unavailable(ctx, e)),
            };
            let _ = reply.send(r);
        }
        Lookup::IdempotencyBegin {
            key,
            fingerprint,
            reserve_ms,
            reply,
        } => {
            let r: redis::RedisResult<Option<String>> = ctx
                .scripts
                .idempotency_begin
                .key(keys::idempotency(&s.prefix, &key))
                .arg(format!("0:{fingerprint}"))
                .arg(reserve_ms)
                .invoke_async(&mut conn)
                .await;
            let r = match r {
                Ok(None) => Ok(Idempotency::Reserved),
                Ok(Some(v)) => Ok(held(&v)),
                Err(e) => Err(unavailable(ctx, e)),
            };
            let _ = reply.send(r);
        }
        Lookup::IdempotencyEnd {
            key,
            fingerprint,
            answer,
            window_ms,
            reply,
        } => {
            let value = answer.map_or(String::new(), |a| format!("1:{fingerprint}:{a}"));
            let r: redis::RedisResult<i64> = ctx
                .scripts
                .idempotency_end
                .key(keys::idempotency(&s.prefix, &key))
                .arg(format!("0:{fingerprint}"))
                .arg(value)
                .arg(window_ms)
                .invoke_async(&mut conn)
                .await;
            let _ = reply.send(r.map(drop).map_err(|e| unavailable(ctx, e)));
        }
    }
}
