//! Several nodes on one machine: a real `redis-server` (Debian's, started
//! here on a unix socket in a fresh directory) and `tether` processes, each
//! with its own node id and free ports. Every process is stopped by its own
//! PID when its handle drops.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::WAIT;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tether-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a child process (by its PID) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGSTOP / SIGCONT: a hang, not a crash.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID has no memory effects.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }
}

/// A `redis-server` on a unix socket.
pub struct Redis {
    pub dir: TempDir,
    pub proc: Option<Proc>,
    args: Vec<String>,
}

impl Redis {
    /// No persistence: what a restart keeps is nothing.
    pub fn start() -> Redis {
        Redis::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// With `appendonly yes` and `appendfsync always`: a restart keeps
    /// every acknowledged write.
    pub fn start_durable() -> Redis {
        Redis::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    fn start_with(extra: &[&str]) -> Redis {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok(),
            "redis-server is missing: install Debian's redis-server (.ci/run does)"
        );
        let mut r = Redis {
            dir: TempDir::new("redis"),
            proc: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.run();
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("redis.sock")
    }

    /// The URL for `redis.urls`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir.0)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + WAIT;
        loop {
            if self.ping().is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A synchronous connection, for the test's own checks.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING").query(&mut self.conn()?)
    }

    /// Stops it (SIGTERM: with AOF, what it acknowledged is on disk).
    pub fn stop(&mut self) {
        self.proc.take();
    }

    /// Starts it again with the same directory and settings.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

/// A `tether` node process.
pub struct Node {
    pub proc: Proc,
    pub id: u16,
    pub mqtt: u16,
    pub http: u16,
    pub lines: mpsc::Receiver<String>,
}

impl Node {
    /// Node `id` on free ports, storing sessions in `redis`, with more
    /// `TETHER_*` settings.
    pub fn start(id: u16, redis_url: &str, env: &[(&str, &str)]) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .env("TETHER_NODE__ID", id.to_string())
            .env("TETHER_NODE__CORES", "2")
            .env("TETHER_LISTENERS__TCP", "127.0.0.1:0")
            .env("TETHER_HTTP__LISTEN", "127.0.0.1:0")
            .env("TETHER_WEBSOCKET__ENABLED", "false")
            .env("TETHER_SYS__INTERVAL_SECS", "0")
            .env("TETHER_STORE__KIND", "\"redis\"")
            .env("TETHER_REDIS__URLS", format!("[\"{redis_url}\"]"))
            .env("TETHER_LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tether starts");
        let mut proc = Proc(child);
        let lines = lines_of(proc.0.stdout.take().unwrap());
        let (mqtt, http) = banner_ports(&lines);
        Node {
            proc,
            id,
            mqtt,
            http,
            lines,
        }
    }
}

impl Node {
    /// A figure from the node's `/metrics` (the sum of its samples).
    pub fn metric(&self, name: &str) -> f64 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.http));
        super::web::http(addr, "GET", "/metrics", &[], "")
            .body
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    /// The gRPC API's address, from the rest of the banner (the node runs
    /// with `grpc.listen` on port 0).
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        loop {
            let line = self.lines.recv_timeout(WAIT).expect("the gRPC banner line");
            if let Some(a) = line.split("grpc api    ").nth(1) {
                return a.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
    }
}

/// The MQTT and HTTP ports a `tether` process's banner names (both
/// listeners on port 0), read from its `lines`.
pub fn banner_ports(lines: &mpsc::Receiver<String>) -> (u16, u16) {
    let (mut mqtt, mut http) = (0, 0);
    while mqtt == 0 || http == 0 {
        let line = lines.recv_timeout(WAIT).expect("node banner in time");
        let port = |s: &str| s.trim().rsplit(':').next().unwrap().parse().unwrap();
        if let Some(a) = line.split("mqtt/tcp    listening on ").nth(1) {
            mqtt = port(a);
        }
        if let Some(a) = line.split("http api    http://").nth(1) {
            http = port(a.split_whitespace().next().unwrap());
        }
    }
    (mqtt, http)
}

/// A process's output, line by line, read on a thread of its own.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
