//! `tether-grpc-load`: load for the gateway's gRPC API.
//!
//! - `publish`: unary `Publish` calls (QoS 1 to `--topic`) from
//!   `--concurrency` callers over `--connections` HTTP/2 connections for
//!   `--duration` seconds; prints calls/s and the latency p50/p99/p99.9.
//! - `upstream`: `--streams` backends on `--filter` (in `--group`, when
//!   given), each acknowledging every message at once; prints messages/s
//!   in all and per stream over `--duration` seconds after the first
//!   message. Pair it with `tether-bench pub` publishing QoS 1.
//!   With `--receipts NAME` the streams take the delivery receipts named
//!   `NAME` instead: pair it with `publish --receipts-to NAME`.
//!
//! One line of JSON at the end (`--json`) for scripts (bench/grpc.sh).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tonic::transport::Channel;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("tether.v1");
}

use proto::tether_client::TetherClient;

#[derive(Parser)]
#[command(name = "tether-grpc-load", about = "Load for Tether's gRPC API")]
struct Cli {
    /// host:port of grpc.listen.
    #[arg(long, default_value = "127.0.0.1:8090", global = true)]
    addr: String,
    /// A bearer token of http.tokens, when set.
    #[arg(long, default_value = "", global = true)]
    token: String,
    /// Seconds of measurement.
    #[arg(long, short = 'd', default_value_t = 5, global = true)]
    duration: u64,
    /// Print one JSON line of figures at the end.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Unary Publish calls, as fast as the answers come.
    Publish {
        #[arg(long, default_value = "bench/grpc")]
        topic: String,
        #[arg(long, default_value_t = 1)]
        qos: u32,
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// Callers with one call in flight each.
        #[arg(long, short = 'c', default_value_t = 32)]
        concurrency: usize,
        /// HTTP/2 connections the callers share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Ask for each delivery's receipt on the Upstream receipts
        /// streams of this name (empty: no receipts).
        #[arg(long, default_value = "")]
        receipts_to: String,
    },
    /// Backends on an Upstream filter, acknowledging at once.
    Upstream {
        #[arg(long, default_value = "bench/#")]
        filter: String,
        #[arg(long, default_value = "")]
        group: String,
        #[arg(long, short = 's', default_value_t = 1)]
        streams: usize,
        /// Take the receipts of this name instead of client messages.
        #[arg(long, default_value = "")]
        receipts: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-grpc-load: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn connect(addr: &str) -> Result<Channel, String> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {addr}: {e} (is grpc.listen set?)"))
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        if let Ok(v) = format!("Bearer {token}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

async fn run(cli: Cli) -> Result<(), String> {
    let duration = Duration::from_secs(cli.duration);
    match cli.what {
        What::Publish {
            topic,
            qos,
            payload,
            concurrency,
            connections,
            receipts_to,
        } => {
            let mut channels = Vec::new();
            for _ in 0..connections.max(1) {
                channels.push(connect(&cli.addr).await?);
            }
            let msg = proto::Message {
                topic,
                payload: vec![b'x'; payload].into(),
                qos,
                receipts_to,
                ..Default::default()
            };
            let stop = Arc::new(AtomicBool::new(false));
            let errors = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            let start = Instant::now();
            for i in 0..concurrency {
                let mut client = TetherClient::new(channels[i % channels.len()].clone());
                let (msg, token, stop, errors) =
                    (msg.clone(), cli.token.clone(), stop.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new(3).expect("a histogram");
                    while !stop.load(Relaxed) {
                        let t = Instant::now();
                        let req = proto::PublishRequest {
                            message: Some(msg.clone()),
                            idempotency_key: String::new(),
                        };
                        match client.publish(authed(&token, req)).await {
                            Ok(_) => {
                                let _ = h.record(t.elapsed().as_micros() as u64);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    h
                }));
            }
            tokio::time::sleep(duration).await;
            stop.store(true, Relaxed);
            let mut all = Histogram::<u64>::new(3).expect("a histogram");
            for t in tasks {
                let _ = all.add(t.await.map_err(|e| e.to_string())?);
            }
            let secs = start.elapsed().as_secs_f64();
            let rate = all.len() as f64 / secs;
            let (p50, p99, p999) = (
                all.value_at_quantile(0.5),
                all.value_at_quantile(0.99),
                all.value_at_quantile(0.999),
            );
            let errors = errors.load(Relaxed);
            println!(
                "publish: {rate:.0} calls/s, latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, {errors} errors"
            );
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"calls": all.len(), "rate": rate, "p50_us": p50, "p99_us": p99, "p999_us": p999, "errors": errors})
                );
            }
        }
        What::Upstream {
            filter,
            group,
            streams,
            receipts,
        } => {
            // A receipts stream takes no filter or group.
            let (filter, group) = if receipts.is_empty() {
                (filter, group)
            } else {
                (String::new(), String::new())
            };
            let counts: Vec<Arc<AtomicU64>> =
                (0..streams).map(|_| Arc::new(AtomicU64::new(0))).collect();
            let first = Arc::new(tokio::sync::Notify::new());
            for count in &counts {
                let channel = connect(&cli.addr).await?;
                let mut client = TetherClient::new(channel);
                let (acks, rx) = tokio::sync::mpsc::unbounded_channel();
                let _ = acks.send(proto::UpstreamRequest {
                    request: Some(proto::upstream_request::Request::Subscribe(
                        proto::Subscribe {
                            filter: filter.clone(),
                            group: group.clone(),
                            receipts: receipts.clone(),
                            ..Default::default()
                        },
                    )),
                });
                let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|r| (r, rx))
                });
                let mut stream = client
                    .upstream(authed(&cli.token, requests))
                    .await
                    .map_err(|e| format!("Upstream refused: {e}"))?
                    .into_inner();
                let (count, first) = (count.clone(), first.clone());
                tokio::spawn(async move {
                    // Acks batched per read: what arrived together is
                    // acknowledged in one request.
                    while let Ok(Some(m)) = stream.message().await {
                        if count.fetch_add(1, Relaxed) == 0 {
                            first.notify_one();
                        }
                        let _ = acks.send(proto::UpstreamRequest {
                            request: Some(proto::upstream_request::Request::Ack(proto::Ack {
                                seq: vec![m.seq],
                            })),
                        });
                    }
                });
            }
            eprintln!("{streams} stream(s) on {filter}: waiting for the first message");
            first.notified().await;
            let before: Vec<u64> = counts.iter().map(|c| c.load(Relaxed)).collect();
            let start = Instant::now();
            tokio::time::sleep(duration).await;
            let secs = start.elapsed().as_secs_f64();
            let per: Vec<f64> = counts
                .iter()
                .zip(&before)
                .map(|(c, b)| (c.load(Relaxed) - b) as f64 / secs)
                .collect();
            let total: f64 = per.iter().sum();
            let shown: Vec<String> = per.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "upstream: {total:.0} msg/s over {streams} stream(s) ({} each)",
                shown.join(", ")
            );
            if cli.json {
                println!("{}", serde_json::json!({"rate": total, "per_stream": per}));
            }
        }
    }
    Ok(())
}
