//! The gRPC API (`[grpc]`, `src/grpc/tether.proto`): the HTTP API's
//! pushes and queries with its semantics and errors, and `Upstream`, the
//! stream of client messages to backends. Served by tonic on the
//! control-plane thread (`tether-http`), beside the HTTP API, with the
//! same bearer tokens.
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | binding, serving, and the generated code ([`proto`]) |
//! | `service.rs` | the calls: each one is the HTTP API's handler behind a proto message |
//! | `convert.rs` | proto messages ↔ the API's requests and answers, and errors ↔ gRPC statuses |
//! | `tether.proto` | the service, for backends' code generators |
//!
//! The calls run the HTTP API's operations (`crate::http`), so a publish,
//! a push or a kick means the same over both; the Upstream streams are
//! the `upstream` adapter's, which this module only plugs streams into.

mod convert;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::adapters::upstream::Upstream;
use crate::http::Companion;

/// The code tonic and prost generate from `tether.proto` (`build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("tether.v1");
}

/// How long HTTP/2 keepalive pings wait between them, and for an answer: a
/// backend that vanished without closing its connection (a cable pulled, a
/// paused VM) ends its Upstream streams within about twice this, and its
/// messages go to the rest of its group.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `addr` now, so a taken port fails the start with the address.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("gRPC API cannot listen on {addr}: {e} (set grpc.listen, or remove it)"),
        )
    })?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The gRPC server, as a task for the control-plane thread.
pub(crate) fn companion(listener: std::net::TcpListener, upstream: Arc<Upstream>) -> Companion {
    Box::new(move |api| {
        Box::pin(async move {
            let addr = listener.local_addr().ok();
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("gRPC API cannot use its listener: {e}");
                    return;
                }
            };
            let max = api.cfg.max_body_bytes;
            let svc = SizeStatus(
                proto::tether_server::TetherServer::new(service::Service::new(api, upstream))
                    .max_decoding_message_size(max),
            );
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE))
                .http2_keepalive_timeout(Some(KEEPALIVE))
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(?addr, "gRPC API stopped: {e}");
            }
        })
    })
}

/// gRPC's status for a message above the size limit is RESOURCE_EXHAUSTED
/// (the status codes table of the gRPC repository, and grpc-go and
/// grpc-java do so); tonic answers OUT_OF_RANGE. This wrapper gives
/// clients the status they expect: it rewrites that one answer (a unary
/// call's trailers-only response, whose status is in its headers).
#[derive(Clone)]
struct SizeStatus<S>(S);

/// OUT_OF_RANGE, as `grpc-status` writes it.
const OUT_OF_RANGE: &str = "11";
/// RESOURCE_EXHAUSTED, as `grpc-status` writes it.
const RESOURCE_EXHAUSTED: &str = "8";
/// How tonic's message for the size limit starts (percent-encoded, as
/// `grpc-message` carries it).
const TOO_LARGE: &str = "Error,%20decoded%20message%20length%20too%20large";

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for SizeStatus<S>
where
    S: tonic::codegen::Service<
        tonic::codegen::http::Request<B>,
        Response = tonic::codegen::http::Response<tonic::body::Body>,
    >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            let h = resp.headers_mut();
            let too_large = h.get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE)
                && h.get("grpc-message")
                    .is_some_and(|m| m.as_bytes().starts_with(TOO_LARGE.as_bytes()));
            if too_large {
                h.insert(
                    "grpc-status",
                    tonic::codegen::http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
                );
            }
            Ok(resp)
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for SizeStatus<S> {
    const NAME: &'static str = S::NAME;
}
