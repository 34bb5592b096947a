//! `tether-bench kafka`: a plain Kafka client for the README's tour and the
//! reference side of the MQTT → Kafka benchmark. It talks to the broker
//! with rdkafka (librdkafka, bundled like the gateway's), never through
//! Tether, so what it reads back or writes is the backend's view.
//!
//! - `produce`: one record with a key and headers, as a backend pushing to
//!   devices would (modes 3 and 4 of seed 000);
//! - `tail`: prints records with their keys and headers (modes 1 and 2);
//! - `flood`: an idempotent producer writing as fast as its window allows
//!   for `--duration`, the machine's limit for that broker that the
//!   gateway's MQTT → Kafka path is compared against (`bench/kafka.sh`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::payload;

/// How long `produce` waits for the delivery report.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `flood` prints its progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Subcommand, Debug, Clone)]
pub enum KafkaCmd {
    /// Produce one record (a backend's push): --topic, --key, --header k=v, payload.
    Produce(ProduceArgs),
    /// Print records of --topic with partition, offset, key and headers.
    Tail(TailArgs),
    /// Produce --size byte records for --duration with an idempotent producer
    /// and --inflight records outstanding; reports records/s and delivery latency.
    Flood(FloodArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Broker {
    /// Bootstrap brokers, host:port,...
    #[arg(short, long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Kafka topic.
    #[arg(short, long)]
    pub topic: String,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: Broker,
    /// Record key (a user name or client id for `to = "user"`/`"client"`).
    #[arg(short, long)]
    pub key: Option<String>,
    /// A header, `name=value`; repeat for more (e.g. x-mqtt-topic=news/today).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The record's value.
    pub payload: String,
}

#[derive(Args, Debug, Clone)]
pub struct TailArgs {
    #[command(flatten)]
    pub broker: Broker,
    /// Start from the oldest record instead of the next one.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records (0: run until interrupted).
    #[arg(short = 'n', long, default_value_t = 0)]
    pub count: u64,
    /// Give up when no record came for this many seconds (0: never).
    #[arg(short = 'W', long, default_value_t = 0.0)]
    pub idle_timeout: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    #[command(flatten)]
    pub broker: Broker,
    /// Seconds of producing.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Record value bytes.
    #[arg(short, long, default_value_t = 16)]
    pub size: usize,
    /// Distinct keys, used round-robin (as many as the MQTT publishers it is
    /// compared with, whose client ids are the gateway's keys).
    #[arg(short, long, default_value_t = 100)]
    pub keys: u32,
    /// Records sent and not yet acknowledged, at most (the MQTT side's
    /// publishers × their --inflight).
    #[arg(long, default_value_t = 6400)]
    pub inflight: usize,
    /// Records per second over all keys; 0: as fast as --inflight allows.
    #[arg(short, long, default_value_t = 0.0)]
    pub rate: f64,
    /// Start every value with the harness's 16-byte header (the key's index
    /// as publisher, a sequence per key, the send time) and end each key
    /// with an end marker, so `tether-bench sub` behind a Kafka source
    /// checks loss and order and times Kafka -> MQTT end to end.
    #[arg(long)]
    pub harness: bool,
    /// Give every record the headers Tether writes for a client's message
    /// (x-id, x-event, x-node, x-mqtt-topic, x-qos, x-client), so both
    /// sides of the comparison write the same records.
    #[arg(long)]
    pub tether_headers: bool,
    /// librdkafka producer properties, `name=value` (e.g. linger.ms=5).
    #[arg(short = 'X', long = "property")]
    pub properties: Vec<String>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Runs one `kafka` command on a current-thread runtime.
pub fn run(cmd: KafkaCmd) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-bench kafka: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cmd {
            KafkaCmd::Produce(a) => produce(a).await,
            KafkaCmd::Tail(a) => tail(a).await,
            KafkaCmd::Flood(a) => flood(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-bench kafka: {e}");
            ExitCode::from(1)
        }
    }
}

fn pair(s: &str) -> Result<(&str, &str), String> {
    s.split_once('=')
        .ok_or_else(|| format!("`{s}`: expected name=value"))
}

async fn produce(a: ProduceArgs) -> Result<(), String> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.broker.brokers)
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let mut headers = OwnedHeaders::new();
    for h in &a.headers {
        let (key, value) = pair(h)?;
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let mut record = FutureRecord::to(&a.broker.topic)
        .payload(a.payload.as_bytes())
        .headers(headers);
    if let Some(k) = &a.key {
        record = record.key(k.as_bytes());
    }
    let delivery = p
        .send(record, PRODUCE_TIMEOUT)
        .await
        .map_err(|(e, _)| format!("{}: {e}", a.broker.topic))?;
    println!(
        "{} partition {} offset {}",
        a.broker.topic, delivery.partition, delivery.offset
    );
    Ok(())
}

async fn tail(a: TailArgs) -> Result<(), String> {
    let group = format!("tether-bench-tail-{}", std::process::id());
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.broker.brokers)
        .set("group.id", &group)
        .set(
            "auto.offset.reset",
            if a.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    c.subscribe(&[&a.broker.topic])
        .map_err(|e| format!("{}: {e}", a.broker.topic))?;
    let mut seen = 0u64;
    while a.count == 0 || seen < a.count {
        let next = c.recv();
        let m = if a.idle_timeout > 0.0 {
            match tokio::time::timeout(Duration::from_secs_f64(a.idle_timeout), next).await {
                Ok(m) => m,
                Err(_) => return Err(format!("no record for {} s ({seen} read)", a.idle_timeout)),
            }
        } else {
            next.await
        };
        let m = m.map_err(|e| format!("{}: {e}", a.broker.topic))?;
        let mut line = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        if let Some(k) = m.key() {
            line.push_str(&format!(" key={}", String::from_utf8_lossy(k)));
        }
        if let Some(h) = m.headers() {
            for h in h.iter() {
                let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                line.push_str(&format!(" {}={v}", h.key));
            }
        }
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
        println!("{line} | {payload}");
        seen += 1;
    }
    Ok(())
}

/// What `flood` measured.
#[derive(serde::Serialize)]
struct FloodReport {
    records: u64,
    failed: u64,
    seconds: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn flood(a: FloodArgs) -> Result<(), String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &a.broker.brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    for p in &a.properties {
        let (k, v) = pair(p)?;
        cfg.set(k, v);
    }
    let p: FutureProducer = cfg.create().map_err(|e| format!("producer: {e}"))?;
    let nkeys = u64::from(a.keys.max(1));
    let keys: Vec<String> = (0..nkeys).map(|i| format!("bench-{i}")).collect();
    let size = if a.harness {
        a.size.max(payload::HEADER_LEN)
    } else {
        a.size
    };
    let mut value = vec![b'x'; size];
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(a.duration);
    let mut progress = start + PROGRESS_EVERY;
    eprintln!(
        "kafka flood: {} for {} s, {size} B records, {nkeys} keys, {} in flight, {}",
        a.broker.topic,
        a.duration,
        a.inflight,
        if a.rate > 0.0 {
            format!("{} records/s", a.rate)
        } else {
            "as fast as acknowledged".into()
        }
    );
    loop {
        let now = Instant::now();
        let open = now < stop_at && pending.len() < a.inflight;
        // The next record is due now, or (paced) at `due`.
        let due = (a.rate > 0.0).then(|| start + Duration::from_secs_f64(sent as f64 / a.rate));
        if open && due.is_none_or(|d| d <= now) {
            let k = sent % nkeys;
            if a.harness {
                let h = payload::Header {
                    publisher: k as u32,
                    seq: (sent / nkeys) as u32,
                    stamp: payload::now_ns(),
                };
                payload::write(&mut value, h);
            }
            let mut record = FutureRecord::to(&a.broker.topic)
                .key(keys[k as usize].as_bytes())
                .payload(&value[..]);
            if a.tether_headers {
                let id = format!("{sent:016x}");
                let topic = format!("bench/{k}");
                let h = [
                    ("x-id", id.as_bytes()),
                    ("x-event", b"publish".as_slice()),
                    ("x-node", b"1".as_slice()),
                    ("x-mqtt-topic", topic.as_bytes()),
                    ("x-qos", b"1".as_slice()),
                    ("x-client", keys[k as usize].as_bytes()),
                ];
                let mut headers = OwnedHeaders::new_with_capacity(h.len());
                for (key, v) in h {
                    headers = headers.insert(Header {
                        key,
                        value: Some(v),
                    });
                }
                record = record.headers(headers);
            }
            let t0 = Instant::now();
            // send_result never blocks: a full local queue is an error to
            // wait out, not a thread to park.
            match p.send_result(record) {
                Ok(f) => {
                    sent += 1;
                    pending.push(async move { (f.await, t0) });
                    continue;
                }
                Err((e, _)) if pending.is_empty() => {
                    return Err(format!("{}: {e}", a.broker.topic));
                }
                Err(_) => {}
            }
        }
        if pending.is_empty() && now >= stop_at {
            break;
        }
        let wake = due.filter(|_| open);
        tokio::select! {
            Some((r, t0)) = pending.next(), if !pending.is_empty() => match r {
                Ok(Ok(_)) => {
                    acked += 1;
                    let _ = lat.record(t0.elapsed().as_micros() as u64);
                }
                _ => failed += 1,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or(stop_at).into()), if wake.is_some() || pending.is_empty() => {}
        }
        if now >= progress {
            progress += PROGRESS_EVERY;
            eprintln!(
                "  {:>5.1} s  {acked} acknowledged, {} in flight",
                start.elapsed().as_secs_f64(),
                pending.len()
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if a.harness {
        // Each key's end marker carries how many records it sent.
        for k in 0..nkeys {
            let count = sent / nkeys + u64::from(k < sent % nkeys);
            let h = payload::Header {
                publisher: k as u32,
                seq: payload::END_MARKER,
                stamp: count,
            };
            payload::write(&mut value, h);
            let record = FutureRecord::to(&a.broker.topic)
                .key(keys[k as usize].as_bytes())
                .payload(&value[..]);
            p.send(record, PRODUCE_TIMEOUT)
                .await
                .map_err(|(e, _)| format!("end marker: {e}"))?;
        }
    }
    let ms = |v: u64| v as f64 / 1000.0;
    let report = FloodReport {
        records: acked,
        failed,
        seconds,
        rate: acked as f64 / seconds,
        p50_ms: ms(lat.value_at_quantile(0.5)),
        p99_ms: ms(lat.value_at_quantile(0.99)),
        max_ms: ms(lat.max()),
    };
    println!(
        "kafka flood: {} records acknowledged ({} failed) in {:.2} s = {:.0} records/s; delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.records, report.failed, report.seconds, report.rate, report.p50_ms, report.p99_ms, report.max_ms
    );
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).expect("serialisable");
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if failed > 0 {
        return Err(format!("{failed} records were not acknowledged"));
    }
    Ok(())
}
