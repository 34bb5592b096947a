//! The HTTP control plane: push API, health, readiness and Prometheus
//! metrics, served on its own thread (`tether-http`, a single-threaded
//! tokio runtime with hyper), never on a core executor. It reaches the cores
//! only through the bridge inboxes ([`crate::bridge`]) and reads the cores'
//! counters (relaxed atomics).
//!
//! - `api.rs`: routes, request parsing and the query handlers;
//! - `publish.rs`: the publish and push handlers (local, or through Kafka);
//! - `idempotency.rs`: `Idempotency-Key`, a retried publish answered once;
//! - `error.rs`: JSON errors that name the field at fault;
//! - `metrics.rs`: the Prometheus text format.

pub(crate) mod api;
pub(crate) mod error;
pub(crate) mod idempotency;
mod metrics;
pub(crate) mod publish;
pub(crate) mod request;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::{debug, error};

use crate::bridge::Bridge;
use crate::config::HttpConfig;
use crate::engine::NodeState;

/// What the handlers share.
pub(crate) struct Api {
    pub cfg: HttpConfig,
    pub bridge: Arc<Bridge>,
    pub node: Arc<NodeState>,
    /// False once shutdown began (readiness).
    pub serving: Arc<AtomicBool>,
    /// `[drain]`, for `POST /v1/admin/drain`.
    pub drain: crate::config::DrainConfig,
    /// This node's idempotency keys (when the store knows only this node).
    pub keys: idempotency::Keys,
}

/// A task that shares the control-plane thread and its runtime (the gRPC
/// API), started with the handlers' state.
pub(crate) type Companion = Box<
    dyn FnOnce(Arc<Api>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send,
>;

/// A running control plane: the HTTP API, and its companion.
pub struct HttpServer {
    /// The HTTP API's bound address (`None` with `http.enabled = false`).
    pub addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `cfg.listen` when `http.enabled` (so a taken port fails the
    /// start, with the address) and serves on a new thread, with
    /// `companion` beside the HTTP API.
    pub(crate) fn start(api: Api, companion: Option<Companion>) -> std::io::Result<HttpServer> {
        let listener = if api.cfg.enabled {
            let l = std::net::TcpListener::bind(api.cfg.listen).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "HTTP API cannot listen on {}: {e} (set http.listen, or http.enabled = false)",
                        api.cfg.listen
                    ),
                )
            })?;
            l.set_nonblocking(true)?;
            Some(l)
        } else {
            None
        };
        let addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tether-http".into())
            .spawn(move || serve(listener, Arc::new(api), companion, stop_rx))?;
        Ok(HttpServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops accepting and waits for the thread.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    listener: Option<std::net::TcpListener>,
    api: Arc<Api>,
    companion: Option<Companion>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("HTTP API cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        // Ends with the runtime, when this thread stops.
        if let Some(c) = companion {
            tokio::spawn(c(api.clone()));
        }
        let Some(listener) = listener else {
            let _ = stop.await;
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!("HTTP API cannot use its listener: {e}");
                return;
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut stop => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!("HTTP accept failed: {e}");
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let api = api.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api::handle(&api, req).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, "HTTP connection ended: {e}");
                }
            });
        }
    });
}
