//! Routes and handlers of the HTTP API.
//!
//! | route | |
//! | --- | --- |
//! | `GET /healthz` | the process answers |
//! | `GET /readyz` | every core serves and every bridge works (503 while stopping, or "degraded" with the reasons) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document (`openapi.json`) |
//! | `GET /console` | the operator console: a static page (`console.html`) driving the routes here |
//! | `POST /v1/publish` | one message; answers once a core accepted it (with `kafka.push_topic`: once Kafka has it); the publish handlers are in `publish.rs` |
//! | `POST /v1/publish/batch` | up to `publish::MAX_BATCH` (1000) messages, one result each |
//! | `POST /v1/push/users/{user}` | to `http.user_topic` (every device of the user) |
//! | `POST /v1/push/clients/{client_id}` | to `http.client_topic` |
//! | `POST /v1/broadcast` | to `http.broadcast_topic` |
//! | `GET /v1/clients/{client_id}` | one session: online, connection, subscriptions, queue (cluster-wide) |
//! | `DELETE /v1/clients/{client_id}` | disconnect it wherever it is connected (MQTT 5: 0x98) |
//! | `GET /v1/clients?user=&limit=&after=` | this node's sessions by client id, paginated |
//! | `GET /v1/users/{user}` | presence: the user's online connections on every node |
//! | `POST /v1/admin/drain` | take the node out of service (`[drain]`): readiness fails, clients leave at a rate, the process exits |
//! | `GET`/`PUT /v1/admin/log-level` | the log filter in force; a new one, at once (the body is the filter) |
//!
//! With a cluster store (`store.kind = "redis"`), what this node does not
//! hold is asked of the store: presence from the user's lease set, sessions
//! from their keys, kicks through the holding node's control channel. A
//! store that cannot answer makes these 503 `store_unavailable`.
//!
//! `/v1/*` needs `Authorization: Bearer <token>` when `http.tokens` is set
//! (401 without, 403 with a wrong one). Health, metrics and the console
//! page stay open for probes, scrapers and browsers (the page carries no
//! data: its calls to `/v1` send the token typed into it); bind the API to a private address to hide them.

use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

use super::error::{refusal, ApiError};
use super::publish::{publish_batch, publish_one, push, push_topic};
use super::request::{authorize, body, percent_decode, reply};
use super::wire::{json, Resp};
use super::Api;
use crate::bridge::{oneshot, BridgeMsg, ClientInfo, SubscriptionInfo};
use crate::store::{Lookup, StoreError, StoredSession};

const USERS: &str = "/v1/push/users/";
const CLIENTS: &str = "/v1/push/clients/";
const CLIENT: &str = "/v1/clients/";
const USER: &str = "/v1/users/";

/// Default and largest page of `GET /v1/clients`.
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1000;

pub(crate) async fn handle(api: &Api, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let result = match (path.as_str(), method) {
        ("/healthz", Method::GET) => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ("/readyz", Method::GET) => Ok(ready(api)),
        ("/metrics", Method::GET) => Ok(text(metrics(api).await)),
        ("/v1/openapi.json", Method::GET) => Ok(openapi()),
        ("/console", Method::GET) => Ok(console()),
        ("/v1/publish", Method::POST) => publish_one(api, req).await,
        ("/v1/publish/batch", Method::POST) => publish_batch(api, req).await,
        ("/v1/broadcast", Method::POST) => {
            let topic = api.cfg.broadcast_topic.clone();
            push(api, req, topic).await
        }
        (p, Method::POST) if p.starts_with(USERS) => {
            match push_topic(&api.cfg.user_topic, "%u", &p[USERS.len()..], "user") {
                Ok(topic) => push(api, req, topic).await,
                Err(e) => Err(e),
            }
        }
        (p, Method::POST) if p.starts_with(CLIENTS) => {
            match push_topic(
                &api.cfg.client_topic,
                "%c",
                &p[CLIENTS.len()..],
                "client_id",
            ) {
                Ok(topic) => push(api, req, topic).await,
                Err(e) => Err(e),
            }
        }
        ("/v1/clients", Method::GET) => list_clients(api, &req).await,
        ("/v1/admin/drain", Method::POST) => drain(api, &req),
        ("/v1/admin/log-level", Method::GET) => log_level(api, &req),
        ("/v1/admin/log-level", Method::PUT) => set_log_level(api, req).await,
        (p, Method::GET) if p.starts_with(CLIENT) => inspect(api, &req, &p[CLIENT.len()..]).await,
        (p, Method::DELETE) if p.starts_with(CLIENT) => kick(api, &req, &p[CLIENT.len()..]).await,
        (p, Method::GET) if p.starts_with(USER) => user(api, &req, &p[USER.len()..]).await,
        (
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/console"
            | "/v1/publish"
            | "/v1/publish/batch"
            | "/v1/broadcast"
            | "/v1/clients"
            | "/v1/admin/log-level"
            | "/v1/admin/drain",
            m,
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{m} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )),
    };
    result.unwrap_or_else(|e| {
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut r = e.into_response();
        if unauthorized {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    })
}

fn ready(api: &Api) -> Resp {
    if api.node.draining.load(Ordering::Relaxed) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "draining"}),
        );
    }
    if api.serving.load(Ordering::Relaxed) {
        // A node whose bridge is down is not ready: a probe that sees 200
        // over a dead data path is how silent loss stays silent.
        let degraded = api.node.outbound.degraded();
        if !degraded.is_empty() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "degraded", "cores": api.node.cores.len(), "degraded": degraded}),
            );
        }
        json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "cores": api.node.cores.len()}),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "stopping"}),
        )
    }
}

/// `POST /v1/admin/drain`: takes the node out of service. `/readyz` fails
/// from now on, the cores stop accepting and close their clients at
/// `drain.rate_per_sec`, and the process exits once they are gone (or at
/// `drain.deadline_secs`). Asking again changes nothing.
fn drain(api: &Api, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    let connections = begin_drain(api, "HTTP")?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "status": "draining",
            "connections": connections,
            "rate_per_sec": api.drain.rate_per_sec,
            "deadline_secs": api.drain.deadline_secs,
        }),
    ))
}

/// Starts the drain (once; asking again changes nothing) and says how many
/// connections it will close. `over` names the API, for the log.
pub(crate) fn begin_drain(api: &Api, over: &str) -> Result<i64, ApiError> {
    // Counted before the cores hear of it: their first batch closes at once.
    let connections = api.node.connections();
    let first = !api.node.draining.swap(true, Ordering::Relaxed);
    if first {
        tracing::warn!(
            rate_per_sec = api.drain.rate_per_sec,
            deadline_secs = api.drain.deadline_secs,
            "drain started over the {over} API"
        );
        for core in 0..api.node.cores.len() {
            api.bridge
                .send(core, BridgeMsg::Drain)
                .map_err(|e| refusal(e, ""))?;
        }
    }
    Ok(connections)
}

/// `GET /v1/admin/log-level`: the filter in force.
fn log_level(api: &Api, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    match crate::logging::current() {
        Some(level) => Ok(json(StatusCode::OK, &serde_json::json!({ "level": level }))),
        None => Err(not_managed()),
    }
}

fn not_managed() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "logging_not_managed",
        crate::logging::SetError::NotManaged.to_string(),
    )
}

/// `PUT /v1/admin/log-level` with a filter as the body (`debug`,
/// `tether=debug,warn`): in force at once, logged with the one it replaced.
async fn set_log_level(api: &Api, req: Request<Incoming>) -> Result<Resp, ApiError> {
    authorize(api, &req)?;
    let raw = body(api, req).await?;
    let spec = std::str::from_utf8(&raw).unwrap_or_default().trim();
    match crate::logging::set(spec) {
        Ok(previous) => {
            tracing::warn!(
                level = spec,
                previous,
                "log filter changed over the HTTP API"
            );
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "level": spec, "previous": previous }),
            ))
        }
        Err(crate::logging::SetError::NotManaged) => Err(not_managed()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_log_level",
            e.to_string(),
        )),
    }
}

/// The client id in a path segment.
fn client_id(segment: &str) -> Result<String, ApiError> {
    percent_decode(segment).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "not valid percent-encoded UTF-8",
        )
        .field("client_id")
    })
}

fn unknown_client(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_client",
        format!("no session for client id {id:?}"),
    )
}

/// Sends a query to `core` and awaits its answer.
/// The metrics page, with each core's session gauges when it answers.
async fn metrics(api: &Api) -> String {
    // Ask every core first, then collect: one slow core costs one timeout.
    let asked: Vec<_> = (0..api.bridge.cores())
        .map(|core| {
            let (tx, rx) = oneshot::channel();
            api.bridge
                .send(core, BridgeMsg::Gauges { reply: tx })
                .ok()
                .map(|()| rx)
        })
        .collect();
    let mut gauges = Vec::with_capacity(asked.len());
    for rx in asked {
        gauges.push(match rx {
            Some(rx) => reply(api, rx, "").await.ok(),
            None => None,
        });
    }
    super::metrics::render(&api.node, &gauges, api.keys.figures())
}

async fn ask<T>(
    api: &Api,
    core: usize,
    msg: impl FnOnce(oneshot::Sender<T>) -> BridgeMsg,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    api.bridge.send(core, msg(tx)).map_err(|e| refusal(e, ""))?;
    reply(api, rx, "").await
}

/// The session of `client_id`: this node's copy when it holds one (the
/// richest view), else the cluster's store.
async fn inspect(api: &Api, req: &Request<Incoming>, segment: &str) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    let info = client_info(api, client_id(segment)?).await?;
    Ok(json(StatusCode::OK, &serde_json::json!(info)))
}

/// The session of `id`: this node's copy when it holds one, else the
/// cluster store's (`GET /v1/clients/{id}`, gRPC `GetClient`).
pub(crate) async fn client_info(api: &Api, id: String) -> Result<ClientInfo, ApiError> {
    if let Some(loc) = api.node.store.locate(&id) {
        let info = ask(api, loc.core, |reply| BridgeMsg::Inspect {
            key: loc.key,
            reply,
        })
        .await?;
        // An offline copy here may be stale when the client came back on
        // another node: the store knows.
        if let Some(info) = info.filter(|i| i.online || !api.node.store.cluster()) {
            return Ok(info);
        }
    }
    match ask_store(api, |reply| Lookup::Client {
        client_id: id.clone(),
        reply,
    })
    .await?
    .flatten()
    .and_then(|s| stored_info(&id, s))
    {
        Some(info) => Ok(info),
        None => Err(unknown_client(&id)),
    }
}

/// A session on another node, as the store describes it: what only its
/// node knows (peer, protocol, window, connect time) is absent.
fn stored_info(client_id: &str, s: StoredSession) -> Option<ClientInfo> {
    let conn = s.conn?;
    Some(ClientInfo {
        client_id: client_id.to_string(),
        username: s.user,
        online: s.online,
        connection_id: conn.to_string(),
        node: conn.node,
        core: usize::from(conn.core),
        transport: None,
        connected_since_ms: None,
        peer: None,
        protocol: None,
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|(filter, qos)| SubscriptionInfo { filter, qos })
            .collect(),
        queued: s.messages.saturating_sub(s.inflight),
        inflight: s.inflight,
        inflight_window: None,
    })
}

/// Disconnects `client_id` wherever it is connected: on this node directly,
/// elsewhere through its node's control channel.
async fn kick(api: &Api, req: &Request<Incoming>, segment: &str) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    let id = client_id(segment)?;
    kick_client(api, &id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"client_id": id, "kicked": true}),
    ))
}

/// Disconnects `id` wherever it is connected (`DELETE /v1/clients/{id}`,
/// gRPC `Kick`); 404 `not_connected` when it is nowhere.
pub(crate) async fn kick_client(api: &Api, id: &str) -> Result<(), ApiError> {
    let id = id.to_owned();
    let mut kicked = false;
    if let Some(loc) = api.node.store.locate(&id) {
        kicked = ask(api, loc.core, |reply| BridgeMsg::Kick {
            key: loc.key,
            reply,
        })
        .await?;
    }
    if !kicked {
        kicked = ask_store(api, |reply| Lookup::Kick {
            client_id: id.clone(),
            reply,
        })
        .await?
        .unwrap_or(false);
    }
    if kicked {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_connected",
            format!("client id {id:?} has no connection"),
        ))
    }
}

/// Asks the cluster's store; `None` when the store knows only this node.
async fn ask_store<T>(
    api: &Api,
    q: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Lookup,
) -> Result<Option<T>, ApiError> {
    if !api.node.store.cluster() {
        return Ok(None);
    }
    let (tx, rx) = oneshot::channel();
    api.node.store.lookup(q(tx));
    match reply(api, rx, "").await? {
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the session store cannot answer: {e}"),
        )),
    }
}

/// Every core's sessions (of `user`, if given), sorted by client id.
async fn all_clients(
    api: &Api,
    user: Option<String>,
) -> Result<Vec<crate::bridge::ClientInfo>, ApiError> {
    let mut all = Vec::new();
    for core in 0..api.bridge.cores() {
        let user = user.clone();
        all.extend(ask(api, core, |reply| BridgeMsg::List { user, reply }).await?);
    }
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(all)
}

async fn list_clients(api: &Api, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    let mut user = None;
    let mut after = None;
    let mut limit = PAGE_DEFAULT;
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        let bad = |msg: &str| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg.to_string()).field(k)
        };
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| bad("not valid percent-encoded UTF-8"))?;
        match k {
            "user" => user = Some(v),
            "after" => after = Some(v),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=PAGE_MAX).contains(n))
                    .ok_or_else(|| bad(&format!("limit must be 1 to {PAGE_MAX}")))?;
            }
            _ => return Err(bad("unknown query parameter (user, limit, after)")),
        }
    }
    let all = all_clients(api, user).await?;
    let start = after.map_or(0, |a| all.partition_point(|c| c.client_id <= a));
    let page: Vec<_> = all[start..].iter().take(limit).collect();
    let next = (start + page.len() < all.len())
        .then(|| page.last().map(|c| c.client_id.clone()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"clients": page, "next": next}),
    ))
}

/// Presence: the user's live connections on every node. This node's are
/// described by their cores; other nodes' come from the store's presence
/// directory, with what the store keeps of their sessions.
async fn user(api: &Api, req: &Request<Incoming>, segment: &str) -> Result<Resp, ApiError> {
    authorize(api, req)?;
    let user = percent_decode(segment).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "not valid percent-encoded UTF-8",
        )
        .field("user")
    })?;
    let connections = presence(api, &user).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"user": user, "online": connections.len(), "connections": connections}),
    ))
}

/// The user's live connections on every node, by client id
/// (`GET /v1/users/{user}`, gRPC `GetUser`).
pub(crate) async fn presence(api: &Api, user: &str) -> Result<Vec<ClientInfo>, ApiError> {
    let user = user.to_owned();
    let mut connections: Vec<_> = all_clients(api, Some(user.clone()))
        .await?
        .into_iter()
        .filter(|c| c.online)
        .collect();
    let here = api.node.node_id;
    let remote = ask_store(api, |reply| Lookup::User {
        user: user.clone(),
        reply,
    })
    .await?
    .unwrap_or_default();
    for c in remote.into_iter().filter(|c| c.conn.node != here) {
        connections.push(ClientInfo {
            client_id: c.client_id,
            username: Some(user.clone()),
            online: true,
            connection_id: c.conn.to_string(),
            node: c.conn.node,
            core: usize::from(c.conn.core),
            transport: Some(c.transport),
            connected_since_ms: Some(c.since_ms),
            peer: None,
            protocol: None,
            subscriptions: Vec::new(),
            queued: 0,
            inflight: 0,
            inflight_window: None,
        });
    }
    connections.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(connections)
}

/// The OpenAPI 3.1 document of this API (tests validate responses against
/// it).
pub const OPENAPI: &str = include_str!("openapi.json");

/// The operator console: one static page (`console.html`) that calls only
/// the routes above. Open like `/healthz`: it holds no data, and each of
/// its `/v1` calls carries the token the operator types into it.
const CONSOLE: &str = include_str!("console.html");

fn console() -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(CONSOLE.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page runs only its own inline script and talks only to this node.
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

fn openapi() -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
