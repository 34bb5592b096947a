//! Command line: one subcommand per scenario, all sharing [`Opts`].

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tether-bench",
    version,
    about = "Load harness for MQTT 3.1.1/5.0 brokers: checks loss, duplicates and order, not only speed",
    after_help = "Exit status: 0 clean run, 2 a QoS promise was broken, 3 connections failed, 1 usage or setup error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// How clients reach the broker.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp,
    /// MQTT over WebSocket (RFC 6455, binary frames, subprotocol `mqtt`).
    Ws,
    /// MQTT over TLS (needs `--cafile` or `--insecure`).
    Tls,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    pub fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open --count connections at --conn-rate per second and hold them for --duration.
    Conn(Opts),
    /// --count publishers, each to --topic (default bench/%i) at --rate msg/s.
    Pub(Opts),
    /// --count subscribers, each to --topic (default bench/%i); pairs with `pub`.
    Sub(Opts),
    /// --publishers publishers -> one topic -> --count subscribers.
    Fanout(Opts),
    /// --count publisher/subscriber pairs, each on a private topic.
    P2p(Opts),
    /// --count publishers -> one subscriber (filter: --topic with %i as +).
    Fanin(Opts),
    /// --publishers publishers -> $share/bench/<topic> with --count members.
    Sharedsub(Opts),
    /// p2p pairs on persistent sessions while --storm-pct % of clients per
    /// second drop their connection and reconnect.
    Storm(Opts),
    /// A plain Kafka client (rdkafka): produce a record, tail a topic, or
    /// flood a topic for the MQTT → Kafka comparison.
    #[command(subcommand)]
    Kafka(crate::kafka::KafkaCmd),
    /// Draws `--json` reports as one HTML page: one run, or several on the
    /// same charts (e.g. Tether and Mosquitto on one test).
    Render(RenderOpts),
    /// How soon a SUBSCRIBE takes effect for a publisher on another core:
    /// the share of messages published GAP µs after it that arrive.
    Visibility(crate::visibility::VisibilityOpts),
}

/// `tether-bench render`.
#[derive(Args, Debug, Clone)]
pub struct RenderOpts {
    /// Reports written by `--json`, each as LABEL=FILE (or FILE, labelled
    /// by its name).
    #[arg(required = true)]
    pub reports: Vec<String>,
    /// The HTML file to write.
    #[arg(long, short)]
    pub out: PathBuf,
    /// The page title.
    #[arg(long, default_value = "tether-bench")]
    pub title: String,
}

impl Scenario {
    /// The MQTT scenario's name and options; `None` for `kafka` and
    /// `render`.
    pub fn parts(&self) -> Option<(&'static str, &Opts)> {
        Some(match self {
            Scenario::Conn(o) => ("conn", o),
            Scenario::Pub(o) => ("pub", o),
            Scenario::Sub(o) => ("sub", o),
            Scenario::Fanout(o) => ("fanout", o),
            Scenario::P2p(o) => ("p2p", o),
            Scenario::Fanin(o) => ("fanin", o),
            Scenario::Sharedsub(o) => ("sharedsub", o),
            Scenario::Storm(o) => ("storm", o),
            Scenario::Kafka(_) | Scenario::Render(_) | Scenario::Visibility(_) => return None,
        })
    }
}

/// Options of every scenario. Defaults are chosen for a quick local run.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct Opts {
    /// Broker host.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker MQTT port (the WebSocket port with `--transport ws`).
    #[arg(short, long, default_value_t = 1883)]
    pub port: u16,
    /// `tcp`, `ws` (MQTT over WebSocket, subprotocol mqtt), `tls` or `wss`.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// PEM CA certificate(s) that the broker's TLS certificate must chain to.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// TLS without verifying the broker's certificate (test brokers with
    /// self-signed certificates only).
    #[arg(long)]
    pub insecure: bool,
    /// Name the broker's certificate must carry (and SNI); default: --host.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Request path of the WebSocket upgrade.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// Clients (conn, pub, sub), subscribers (fanout, sharedsub), pairs
    /// (p2p, storm) or publishers (fanin).
    #[arg(short, long, default_value_t = 100)]
    pub count: u32,
    /// Publishers of fanout and sharedsub.
    #[arg(short = 'P', long, default_value_t = 1)]
    pub publishers: u32,
    /// New connections per second over all processes and cores; 0 = as
    /// fast as the broker accepts (at most 512 handshakes pending per core).
    #[arg(short = 'R', long, default_value_t = 1000.0)]
    pub conn_rate: f64,
    /// Messages per second per publisher; 0 = as fast as the socket (QoS 0)
    /// or the --inflight window (QoS 1/2) allows.
    #[arg(short, long, default_value_t = 1.0)]
    pub rate: f64,
    /// Payload bytes (at least 16: publisher id, sequence, timestamp).
    #[arg(short, long, default_value_t = 16)]
    pub size: usize,
    /// QoS of publishes and subscriptions.
    #[arg(short, long, default_value_t = 0)]
    pub qos: u8,
    /// MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "mqtt", default_value_t = 4)]
    pub version: u8,
    /// Keep-alive in seconds (0 = none).
    #[arg(short, long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Clean session / clean start (`--clean false` for persistent
    /// sessions; storm always uses persistent sessions).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval for persistent sessions.
    #[arg(long, default_value_t = 300)]
    pub session_expiry: u32,
    /// Topic pattern; %i is the client (or pair) index.
    #[arg(short, long)]
    pub topic: Option<String>,
    /// Seconds of traffic (or of holding, for conn).
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
    /// Longest wait, in seconds, for in-flight messages after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// storm: percent of the clients that drop and reconnect each second.
    #[arg(long, default_value_t = 10.0)]
    pub storm_pct: f64,
    /// Harness threads per process (default: CPUs / --procs).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Pin harness threads to these CPUs (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Worker processes; each holds at most ~19,900 sockets on a host with
    /// a 20,000 open-file limit.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Local source addresses, used round-robin (each gives ~28k ports per
    /// broker address).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Sample this process's RSS and CPU (the broker under test).
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report to this file: rates, connections
    /// and latency percentiles second by second, the latency distribution,
    /// the broker's RSS and CPU (with --target-pid), settings and verdict.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Client id prefix (ids are <prefix>-<index>).
    #[arg(long)]
    pub client_prefix: Option<String>,
    /// User name of every client, with `%i` replaced by the client's index
    /// (`u%i`: a user per client; `team`: one user for all), and password
    /// `--password`. Without it, clients connect with no user name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password sent with `--username` (a JWT, for a broker that takes
    /// tokens).
    #[arg(long, default_value = "bench")]
    pub password: String,
    /// Seconds allowed for TCP connect plus CONNACK (and SUBACK).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Internal: this process is worker N of --workers, driven by a parent.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    #[arg(long, hide = true, default_value_t = 1)]
    pub workers: usize,
}
