//! A real Kafka-protocol broker for the tests: `tansu` 0.6 started here on a
//! free port with in-memory storage (stopped by its PID on drop), or the
//! Kafka named by `KAFKA_BROKERS` when that is set. Topics get a unique
//! name per test, so tests share nothing.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::cluster::Proc;
use super::WAIT;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A broker: ours (tansu) or the environment's.
pub struct Kafka {
    /// `host:port` for `kafka.brokers`.
    pub brokers: String,
    /// The tansu process, when we started one.
    pub proc: Option<Proc>,
}

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Kafka {
    /// `KAFKA_BROKERS` if set; otherwise a fresh tansu on a free port.
    pub fn start() -> Kafka {
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
            return Kafka {
                brokers,
                proc: None,
            };
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "tansu: {e}. Install it: cargo install tansu --version 0.6.0 --features dynostore --locked (.ci/run does), or set KAFKA_BROKERS"
                )
            });
        let proc = Proc(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Kafka {
            brokers: format!("127.0.0.1:{port}"),
            proc: Some(proc),
        }
    }

    /// A new topic with a unique name starting with `tag`.
    pub async fn topic(&self, tag: &str, partitions: i32) -> String {
        let name = Kafka::unique(tag);
        self.create(&name, partitions).await;
        name
    }

    /// A name no other test uses, starting with `tag`.
    pub fn unique(tag: &str) -> String {
        format!(
            "{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates the topic `name`.
    pub async fn create(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let r = tokio::time::timeout(WAIT, admin.create_topics([&topic], &AdminOptions::new()))
            .await
            .expect("topic created in time")
            .expect("topic created");
        assert!(r.iter().all(|t| t.is_ok()), "create {name}: {r:?}");
    }

    /// Reads `topic` from the beginning until `n` records arrived (or
    /// panics after `WAIT` without a new one).
    pub async fn read(&self, topic: &str, n: usize) -> Vec<Record> {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set(
                "group.id",
                format!("test-{topic}-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = tokio::time::timeout(WAIT, c.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} records from {topic}", out.len()))
                .expect("a record");
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let h = h.get(i);
                    headers.insert(
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
                partition: m.partition(),
                offset: m.offset(),
            });
        }
        out
    }

    /// Produces one record with a plain rdkafka producer (an independent
    /// backend), waiting for its delivery report.
    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
        p.send(record, WAIT).await.expect("produced");
    }

    /// [`Kafka::produce`] of a record without a key.
    pub async fn produce_without_key(&self, topic: &str, payload: &[u8]) {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(payload);
        p.send(record, WAIT).await.expect("produced");
    }

    /// Commits `offset` as `group`'s next offset of `topic`'s `partition`,
    /// as a consumer that read up to there would.
    pub fn commit(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).expect("committed");
    }

    /// SIGSTOP (`true`) or SIGCONT our broker: a hang, not a crash.
    pub fn pause(&self, paused: bool) {
        let p = self.proc.as_ref().expect("pausing needs our own tansu");
        p.signal(if paused { libc::SIGSTOP } else { libc::SIGCONT });
    }
}
