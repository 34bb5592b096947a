//! The calls of `tether.v1.Tether`. Each checks the bearer token and runs
//! the HTTP API's operation for it; publishes with an `idempotency_key`
//! share the HTTP API's keys (`Idempotency-Key`), each call and body its
//! own fingerprint.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{client_info, hex, publish_request, status, status_of, upstream_message};
use super::proto::{self, tether_server::Tether, upstream_request};
use crate::adapters::upstream::{Figures, StreamId, Takes, Upstream};
use crate::http::error::ApiError;
use crate::http::idempotency::{self, Answer};
use crate::http::publish::{self as api_publish, MAX_BATCH};
use crate::http::{api as ops, request::check_token, Api};

/// How long a new Upstream stream may take to send its `Subscribe`.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// The gRPC service: the HTTP API's state and the Upstream hub.
pub(super) struct Service {
    api: Arc<Api>,
    upstream: Arc<Upstream>,
    figures: Arc<Figures>,
}

impl Service {
    pub fn new(api: Arc<Api>, upstream: Arc<Upstream>) -> Service {
        let figures = upstream.figures_handle();
        Service {
            api,
            upstream,
            figures,
        }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        check_token(&self.api, given).map_err(status)
    }

    /// Counts a call's outcome.
    fn counted<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        self.figures.calls.fetch_add(1, Relaxed);
        if r.is_err() {
            self.figures.call_errors.fetch_add(1, Relaxed);
        }
        r
    }

    /// Runs `request` once per idempotency key (none: every time), and
    /// gives its JSON answer, or the first request's.
    async fn once<F, Fut>(
        &self,
        key: String,
        call: &str,
        fingerprint: Vec<u8>,
        request: F,
    ) -> Result<serde_json::Value, Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
    {
        if key.is_empty() {
            return request().await.map_err(status);
        }
        let key =
            idempotency::checked(key.as_bytes()).map_err(|e| status(e.field("idempotency_key")))?;
        let path = format!("grpc:{call}");
        let a = idempotency::answered_once(&self.api, key, &path, &fingerprint, request)
            .await
            .map_err(|e| {
                status(match e.field.as_deref() {
                    Some("Idempotency-Key") => e.field("idempotency_key"),
                    _ => e,
                })
            })?;
        answered(a)
    }

    /// A push: `req.message` to `topic` (the message names none).
    async fn push(
        &self,
        mut req: proto::PushRequest,
        call: &str,
        topic: String,
    ) -> Result<proto::PublishReply, Status> {
        if let Some(m) = req.message.as_mut() {
            if !m.topic.is_empty() {
                return Err(status(
                    ApiError::new(
                        hyper::StatusCode::BAD_REQUEST,
                        "invalid_field",
                        "push calls choose the topic (http.user_topic, client_topic, broadcast_topic)",
                    )
                    .field("message.topic"),
                ));
            }
            m.topic.clone_from(&topic);
        }
        let fingerprint = without_key(&req, |r| r.idempotency_key.clear());
        let id = self
            .publish_keyed(req.idempotency_key, call, fingerprint, req.message)
            .await?;
        Ok(proto::PublishReply { id, topic })
    }

    /// Publishes `m` once per idempotency key; its id.
    async fn publish_keyed(
        &self,
        key: String,
        call: &str,
        fingerprint: Vec<u8>,
        m: Option<proto::Message>,
    ) -> Result<String, Status> {
        let api = &self.api;
        let v = self
            .once(key, call, fingerprint, || async move {
                let r = publish_request(
                    m,
                    "message.",
                    api.node.outbound.receipts(),
                    api.node.node_id,
                )?;
                let id = api_publish::publish(api, r, "message.").await?;
                Ok(serde_json::json!({"id": hex(id)}))
            })
            .await?;
        Ok(text(&v, "id"))
    }
}

/// A kept answer as the call's: its JSON on success, its error's status
/// otherwise.
fn answered(a: Answer) -> Result<serde_json::Value, Status> {
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
    if a.status.is_success() {
        return Ok(v);
    }
    let e = &v["error"];
    Err(status_of(
        a.status,
        e["code"].as_str().unwrap_or("replayed"),
        e["message"].as_str().unwrap_or_default(),
        e["field"].as_str(),
    ))
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

type UpstreamStream = Pin<Box<dyn Stream<Item = Result<proto::UpstreamMessage, Status>> + Send>>;

/// The message of an idempotent request, encoded without its key: what
/// its key's fingerprint covers.
fn without_key<M: prost::Message + Clone>(m: &M, clear: impl FnOnce(&mut M)) -> Vec<u8> {
    let mut m = m.clone();
    clear(&mut m);
    m.encode_to_vec()
}

impl Service {
    /// One unary call: the token checked, `run` on its message, the outcome
    /// counted.
    async fn unary<T, R, Fut>(
        &self,
        req: Request<T>,
        run: impl FnOnce(T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let r = match self.authorize(&req) {
            Ok(()) => run(req.into_inner()).await,
            Err(e) => Err(e),
        };
        self.counted(r.map(Response::new))
    }

    async fn publish_one(&self, req: proto::PublishRequest) -> Result<proto::PublishReply, Status> {
        let fingerprint = without_key(&req, |r| r.idempotency_key.clear());
        let id = self
            .publish_keyed(req.idempotency_key, "Publish", fingerprint, req.message)
            .await?;
        Ok(proto::PublishReply {
            id,
            topic: String::new(),
        })
    }

    async fn publish_many(
        &self,
        req: proto::PublishBatchRequest,
    ) -> Result<proto::PublishBatchReply, Status> {
        if req.messages.len() > MAX_BATCH {
            return Err(status(
                ApiError::new(
                    hyper::StatusCode::BAD_REQUEST,
                    "invalid_field",
                    format!("at most {MAX_BATCH} messages per batch"),
                )
                .field("messages"),
            ));
        }
        let fingerprint = without_key(&req, |r| r.idempotency_key.clear());
        let api = &self.api;
        let messages = req.messages;
        let v = self
            .once(
                req.idempotency_key,
                "PublishBatch",
                fingerprint,
                || async move { Ok(batch(api, messages).await) },
            )
            .await?;
        let results = v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| proto::PublishResult {
                result: Some(match r["id"].as_str() {
                    Some(id) => proto::publish_result::Result::Id(id.to_owned()),
                    None => proto::publish_result::Result::Error(proto::Error {
                        code: text(&r["error"], "code"),
                        message: text(&r["error"], "message"),
                        field: text(&r["error"], "field"),
                    }),
                }),
            })
            .collect();
        Ok(proto::PublishBatchReply { results })
    }

    /// A push to the topic `template` makes of `req.to` (`marker` in it).
    async fn push_to(
        &self,
        req: proto::PushRequest,
        call: &str,
        template: &str,
        marker: &str,
    ) -> Result<proto::PublishReply, Status> {
        let topic = api_publish::push_topic_for(template, marker, &req.to, "to").map_err(status)?;
        self.push(req, call, topic).await
    }
}

#[tonic::async_trait]
impl Tether for Service {
    async fn publish(
        &self,
        req: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        self.unary(req, |m| self.publish_one(m)).await
    }

    async fn publish_batch(
        &self,
        req: Request<proto::PublishBatchRequest>,
    ) -> Result<Response<proto::PublishBatchReply>, Status> {
        self.unary(req, |m| self.publish_many(m)).await
    }

    async fn push_user(
        &self,
        req: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        let cfg = &self.api.cfg;
        self.unary(req, |m| self.push_to(m, "PushUser", &cfg.user_topic, "%u"))
            .await
    }

    async fn push_client(
        &self,
        req: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        let cfg = &self.api.cfg;
        self.unary(req, |m| {
            self.push_to(m, "PushClient", &cfg.client_topic, "%c")
        })
        .await
    }

    async fn broadcast(
        &self,
        req: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        self.unary(req, |m| async move {
            if !m.to.is_empty() {
                return Err(Status::invalid_argument(
                    "invalid_field: a broadcast goes to everyone; leave `to` empty (field to)",
                ));
            }
            let topic = self.api.cfg.broadcast_topic.clone();
            self.push(m, "Broadcast", topic).await
        })
        .await
    }

    async fn get_client(
        &self,
        req: Request<proto::ClientRequest>,
    ) -> Result<Response<proto::ClientInfo>, Status> {
        self.unary(req, |m| async move {
            let info = ops::client_info(&self.api, m.client_id).await;
            info.map(client_info).map_err(status)
        })
        .await
    }

    async fn get_user(
        &self,
        req: Request<proto::UserRequest>,
    ) -> Result<Response<proto::UserReply>, Status> {
        self.unary(req, |m| async move {
            let connections = ops::presence(&self.api, &m.user).await.map_err(status)?;
            Ok(proto::UserReply {
                user: m.user,
                connections: connections.into_iter().map(client_info).collect(),
            })
        })
        .await
    }

    async fn kick(
        &self,
        req: Request<proto::ClientRequest>,
    ) -> Result<Response<proto::KickReply>, Status> {
        self.unary(req, |m| async move {
            ops::kick_client(&self.api, &m.client_id)
                .await
                .map_err(status)?;
            Ok(proto::KickReply {
                client_id: m.client_id,
            })
        })
        .await
    }

    async fn drain(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainReply>, Status> {
        self.unary(req, |_| async move {
            let connections = ops::begin_drain(&self.api, "gRPC").map_err(status)?;
            Ok(proto::DrainReply {
                connections: connections.max(0) as u64,
                rate_per_sec: self.api.drain.rate_per_sec,
                deadline_secs: self.api.drain.deadline_secs,
            })
        })
        .await
    }

    type UpstreamStream = UpstreamStream;

    async fn upstream(
        &self,
        req: Request<Streaming<proto::UpstreamRequest>>,
    ) -> Result<Response<UpstreamStream>, Status> {
        if let Err(e) = self.authorize(&req) {
            return self.counted(Err(e));
        }
        let mut requests = req.into_inner();
        let sub = match tokio::time::timeout(SUBSCRIBE_WAIT, requests.message()).await {
            Ok(Ok(Some(proto::UpstreamRequest {
                request: Some(upstream_request::Request::Subscribe(s)),
            }))) => s,
            Ok(Err(e)) => return self.counted(Err(e)),
            Err(_) => {
                return self.counted(Err(Status::deadline_exceeded(
                    "send a Subscribe first, within 10 s",
                )))
            }
            Ok(_) => {
                return self.counted(Err(Status::invalid_argument(
                    "invalid_field: the first request of an Upstream stream is a Subscribe (field subscribe)",
                )))
            }
        };
        let takes = match takes(&sub) {
            Ok(t) => t,
            Err(e) => return self.counted(Err(e)),
        };
        let attached = self.upstream.attach(takes, sub.window).await;
        let id = attached.id;
        tracing::info!(
            stream = id,
            filter = sub.filter,
            group = sub.group,
            receipts = sub.receipts,
            "Upstream stream attached"
        );
        // The acks: until the backend closes its side, or the connection
        // goes.
        let up = self.upstream.clone();
        let figures = self.figures.clone();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished_by_backend = finished.clone();
        tokio::spawn(async move {
            loop {
                match requests.message().await {
                    Ok(Some(proto::UpstreamRequest {
                        request: Some(upstream_request::Request::Ack(a)),
                    })) => up.ack(id, a.seq),
                    Ok(Some(_)) => {
                        tracing::warn!(stream = id, "a second Subscribe on an Upstream stream: ending it (open one stream per filter)");
                        break;
                    }
                    Ok(None) => {
                        // Its acks so far are queued before the detach.
                        finished_by_backend.store(true, Relaxed);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(stream = id, "Upstream stream's requests ended: {e}");
                        break;
                    }
                }
            }
            up.detach(id);
            figures.calls.fetch_add(1, Relaxed);
        });
        let guard = Detach(self.upstream.clone(), id);
        let node = self.upstream.node;
        let out =
            futures_util::stream::unfold((attached.rx, Some(guard)), move |(mut rx, guard)| {
                let finished = finished.clone();
                async move {
                    let guard = guard?;
                    match rx.recv().await {
                        Some(h) => Some((Ok(upstream_message(h, node)), (rx, Some(guard)))),
                        // The backend closed its side: the stream ends, OK.
                        None if finished.load(Relaxed) => None,
                        // The hub ended the stream: one status, then the end.
                        None => Some((
                            Err(Status::aborted(
                                "the node ended this Upstream stream: it held a message past \
                             grpc.upstream.ack_timeout_ms, or the node is stopping; open it again",
                            )),
                            (rx, None),
                        )),
                    }
                }
            });
        Ok(Response::new(Box::pin(out)))
    }
}

/// What an Upstream stream's Subscribe asks for, checked.
fn takes(sub: &proto::Subscribe) -> Result<Takes, Status> {
    if !sub.receipts.is_empty() {
        if !sub.filter.is_empty() || !sub.group.is_empty() {
            return Err(Status::invalid_argument(
                "invalid_field: a receipts stream takes no filter or group; \
                 open another stream for client messages (field subscribe.receipts)",
            ));
        }
        return Ok(Takes::Receipts(sub.receipts.as_str().into()));
    }
    if let Err(why) = crate::codec::topic::validate_filter(&sub.filter) {
        return Err(Status::invalid_argument(format!(
            "invalid_field: {:?} is not a topic filter: {why} (field subscribe.filter)",
            sub.filter
        )));
    }
    if sub.filter.starts_with('$') {
        return Err(Status::invalid_argument(
            "invalid_field: $-topics are the broker's own and never go upstream; \
             give the group in subscribe.group, not as $share/ (field subscribe.filter)",
        ));
    }
    if sub.group.contains(['/', '+', '#']) {
        return Err(Status::invalid_argument(
            "invalid_field: a group name has no /, + or # (field subscribe.group)",
        ));
    }
    Ok(Takes::Messages {
        filter: sub.filter.as_str().into(),
        group: (!sub.group.is_empty()).then(|| sub.group.as_str().into()),
    })
}

/// Detaches a stream whose response side was dropped (the backend went).
struct Detach(Arc<Upstream>, StreamId);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.detach(self.1);
    }
}

/// A batch: every message handed on before any answer is awaited, as the
/// HTTP API does; one result each.
async fn batch(api: &Api, messages: Vec<proto::Message>) -> serde_json::Value {
    let receipts = api.node.outbound.receipts();
    let started: Vec<_> = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}].");
            publish_request(Some(m), &at, receipts, api.node.node_id)
                .and_then(|r| api_publish::start(api, r, &at))
        })
        .collect();
    let mut results = Vec::with_capacity(started.len());
    for (i, s) in started.into_iter().enumerate() {
        let outcome = match s {
            Ok(s) => api_publish::finish(api, s, &format!("messages[{i}].")).await,
            Err(e) => Err(e),
        };
        results.push(match outcome {
            Ok(id) => serde_json::json!({"id": hex(id)}),
            Err(e) => serde_json::json!({"error": {"code": e.code, "message": e.message, "field": e.field}}),
        });
    }
    serde_json::json!({ "results": results })
}
