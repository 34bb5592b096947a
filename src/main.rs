//! The `tether` binary: `tether [--config FILE]` runs the gateway,
//! `tether check-config FILE` validates a configuration file,
//! `tether passwd FILE USER` adds or updates a user of a users file,
//! `tether doctor` checks the host's limits before launch.

use std::path::PathBuf;
use std::process::ExitCode;

use tether::{limits, Config, Gateway};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
tether: MQTT 3.1.1/5.0 long-connection gateway

usage:
  tether [--config FILE]        run the gateway (no file: built-in defaults, 127.0.0.1:1883)
  tether check-config FILE      validate FILE and explain any error
  tether passwd FILE USER       add USER to the users file FILE (auth.users_file), or change
                                their password; the password is read from standard input
  tether drain [--config FILE]  take the running node out of service: POST /v1/admin/drain
                                to its http.listen (with its first http.tokens entry)
  tether doctor [--config FILE] [--json]
                                check every host limit that caps connections, and estimate
                                how many fit; exit status 1 on a blocker
  tether --help | --version

Every configuration key can be overridden as TETHER_<SECTION>__<KEY>=value;
see tether.example.toml for all keys and their defaults.";

fn main() -> ExitCode {
    // Before the heap grows: `runtime.huge_pages` (off by default) turns
    // them back on once the configuration is read.
    limits::set_huge_pages(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => run(None),
        ["--config" | "-c", file] => run(Some(PathBuf::from(file))),
        ["check-config", file] => check_config(file),
        ["passwd", file, user] => passwd(file, user),
        ["doctor", rest @ ..] => doctor(rest),
        ["drain"] => drain(None),
        ["drain", "--config" | "-c", file] => drain(Some(PathBuf::from(file))),
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("tether {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `tether drain [--config FILE]`: asks the node running with that
/// configuration to drain, through its HTTP API, and prints the answer.
fn drain(path: Option<PathBuf>) -> ExitCode {
    use std::io::{Read, Write};
    let cfg = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether drain: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = cfg.http.listen;
    let auth = cfg
        .http
        .tokens
        .first()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let answer = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            write!(
                s,
                "POST /v1/admin/drain HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
    match answer {
        Ok(text) if text.starts_with("HTTP/1.1 202") => {
            println!("{}", text.split("\r\n\r\n").nth(1).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(text) => {
            eprintln!(
                "tether drain: the node at {addr} refused: {}",
                text.lines().next().unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tether drain: cannot reach the HTTP API at {addr} (http.listen): {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tether doctor [--config FILE] [--json]`.
fn doctor(args: &[&str]) -> ExitCode {
    let mut config = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--json" => json = true,
            "--config" | "-c" => match it.next() {
                Some(f) => config = Some(PathBuf::from(f)),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether doctor: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = tether::doctor::judge(&tether::doctor::Host::read(), &cfg);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tether doctor: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", tether::doctor::render(&report));
    }
    if report.blocked() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads a password from standard input (one line; typed at a terminal it
/// is asked for) and writes USER's argon2id hash into FILE.
fn passwd(file: &str, user: &str) -> ExitCode {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password for {user} (shown as typed; pipe it in to avoid that): ");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("tether passwd: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("tether passwd: an empty password; give one on standard input");
        return ExitCode::FAILURE;
    }
    match tether::adapters::auth::users::set_password(file.as_ref(), user, password.as_bytes()) {
        Ok(()) => {
            println!("{file}: {user} set (argon2id); send SIGHUP to a running tether to reload");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether passwd: {file}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &str) -> ExitCode {
    match Config::load(Some(file.as_ref())) {
        Ok(c) => {
            println!(
                "{file}: ok ({} cores, mqtt/tcp on {}, max packet {} bytes)",
                c.cores(),
                c.listeners.tcp,
                c.mqtt.max_packet_size
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{file}: {e}");
            if !e.key.is_empty() {
                eprintln!(
                    "see tether.example.toml for `{}` and its allowed values",
                    e.key
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// What SIGHUP reloads.
struct Reloadable {
    /// The configuration file and what was read from it last.
    config: (Option<PathBuf>, Config),
    acceptor: Option<std::sync::Arc<tether::net::tls::Acceptor>>,
    auth: std::sync::Arc<tether::adapters::auth::AuthFiles>,
    live: tether::reload::Live,
    systemd: Option<std::sync::Arc<tether::systemd::Notifier>>,
}

impl Reloadable {
    /// Reads the configuration again: `log.level` and the keys of
    /// `tether::reload` take effect at once; any other section that changed
    /// is named as needing a restart.
    fn config(&mut self) {
        let (path, old) = &mut self.config;
        let new = match Config::load(path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("configuration not reloaded, the running one stays: {e}");
                return;
            }
        };
        for outcome in self.live.apply(old, &new) {
            match outcome {
                Ok(what) => tracing::info!("reloaded: {what}"),
                Err(why) => tracing::warn!("not reloaded: {why}"),
            }
        }
        let mut changed = old.changed_sections(&new);
        if new.log.level != old.log.level {
            match tether::logging::set(&new.log.level) {
                Ok(previous) => {
                    tracing::info!(level = new.log.level, previous, "log.level reloaded");
                    old.log.level.clone_from(&new.log.level);
                }
                Err(e) => tracing::error!("log.level not reloaded: {e}"),
            }
        }
        // log.level applied; every other key is read at start only.
        if old.log.format == new.log.format && old.log.level == new.log.level {
            changed.retain(|s| *s != "log");
        }
        if !changed.is_empty() {
            let sections: Vec<String> = changed.iter().map(|s| format!("[{s}]")).collect();
            tracing::warn!(
                "configuration changed in {}: takes effect at the next restart (SIGHUP applies log.level, \
                 mqtt.deny_*, [limits], listeners.max_accepts_per_sec and overload_lag_ms, auth.ban_*, \
                 the TLS files and the [auth] files)",
                sections.join(", ")
            );
        }
    }
}

/// SIGHUP (`systemctl reload`) reloads, on a thread of its own, the
/// configuration's `log.level` and safe limits (`tether::reload`), the TLS
/// certificate, key and ticket keys and the `[auth]` users, ACL and key
/// files; whatever fails to load keeps its
/// previous version in force and says why. Connections stay up (existing
/// subscriptions are not checked again).
fn reload_on_sighup(mut r: Reloadable) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("tether-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Some(n) = &r.systemd {
                    let _ = n.reloading();
                }
                r.config();
                match r.acceptor.as_ref().map(|a| a.reload()) {
                    Some(Ok(loaded)) => tracing::info!("TLS reloaded: {loaded}"),
                    Some(Err(e)) => {
                        tracing::error!("TLS reload failed, the previous certificate stays: {e}")
                    }
                    None => {}
                }
                for outcome in r.auth.reload() {
                    match outcome {
                        Ok(what) => tracing::info!("auth reloaded: {what}"),
                        Err(e) => {
                            tracing::error!("auth reload failed, the previous file stays: {e}")
                        }
                    }
                }
                if let Some(n) = &r.systemd {
                    let _ = n.send("READY=1");
                }
            }
        })?;
    Ok(())
}

fn init_logging(c: &Config) {
    // Colours only for a terminal: journald and log files get plain text.
    tether::logging::init(&c.log.level, c.log.format == "json");
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let cfg = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether: configuration error: {e}");
            eprintln!("check the file with `tether check-config FILE`");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    if cfg.runtime.huge_pages {
        limits::set_huge_pages(true);
    }
    let nofile = limits::raise_nofile();
    let (memlock, _) = limits::get(libc::RLIMIT_MEMLOCK);
    let cores = cfg.cores();
    let gateway = match Gateway::start(cfg.clone()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tether: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    for fd in gateway.doorbell_fds() {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // SAFETY: dup returns a new fd that the signal pipe owns from here on.
            let dup = unsafe { libc::dup(fd) };
            if dup < 0 {
                eprintln!(
                    "tether: cannot install signal handlers: {}",
                    std::io::Error::last_os_error()
                );
                return ExitCode::FAILURE;
            }
            // SAFETY: `dup` is a fresh, valid fd owned by nobody else.
            let stream = unsafe {
                <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(dup)
            };
            if let Err(e) = signal_hook::low_level::pipe::register(signal, stream) {
                eprintln!("tether: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let systemd = tether::systemd::Notifier::from_env().map(std::sync::Arc::new);
    let reloadable = Reloadable {
        config: (path.clone(), cfg.clone()),
        acceptor: gateway.tls_acceptor(),
        auth: gateway.auth_files(),
        live: gateway.live(),
        systemd: systemd.clone(),
    };
    if let Err(e) = reload_on_sighup(reloadable) {
        eprintln!("tether: cannot install the SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "tether {} — MQTT 3.1.1/5.0 gateway",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "  node        {} ({} cores, executors tether-core-0..{}, pinned)",
        cfg.node.id,
        cores,
        cores - 1
    );
    println!("  mqtt/tcp    listening on {}", gateway.tcp_addr);
    if let Some(addr) = gateway.ws_addr {
        println!(
            "  mqtt/ws     ws://{addr}{} (subprotocol mqtt)",
            cfg.websocket.path
        );
        let f = &cfg.websocket.fallback;
        if f.enabled {
            println!(
                "  sse/poll    http://{addr}{p}/sse and {p}/poll (HTTP fallback, same sessions)",
                p = f.path
            );
        }
    }
    if let (Some(addr), Some(loaded)) = (gateway.tls_addr, &gateway.tls_loaded) {
        println!("  mqtt/tls    listening on {addr}");
        if let Some(wss) = gateway.wss_addr {
            println!(
                "  mqtt/wss    wss://{wss}{} (subprotocol mqtt)",
                cfg.websocket.path
            );
            if cfg.websocket.fallback.enabled {
                println!(
                    "  sse/poll    https://{wss}{p}/sse and {p}/poll (HTTP fallback over TLS)",
                    p = cfg.websocket.fallback.path
                );
            }
        }
        println!("  tls         {loaded}; SIGHUP reloads");
    }
    match gateway.http_addr {
        Some(addr) if cfg.http.tokens.is_empty() => println!(
            "  http api    http://{addr}  (no tokens: unauthenticated, allowed because it is loopback only; \
             set http.tokens before exposing it)"
        ),
        Some(addr) => println!(
            "  http api    http://{addr}  (bearer tokens: {})",
            cfg.http.tokens.len()
        ),
        None => println!("  http api    off (http.enabled = false)"),
    }
    if let Some(addr) = gateway.grpc_addr {
        let up = &cfg.grpc.upstream;
        println!(
            "  grpc api    {addr}  (tether.v1.Tether, the HTTP API's tokens; Upstream ack = {:?}, fallback = {:?}{})",
            up.ack,
            up.fallback,
            if up.topics.is_empty() {
                String::new()
            } else {
                format!(", topics {:?}", up.topics)
            }
        );
    }
    println!(
        "  auth        {}; SIGHUP reloads the files",
        tether::adapters::auth::describe(&cfg)
    );
    match cfg.store.kind {
        tether::config::StoreKind::Memory => {
            println!(
                "  sessions    in memory (this node only; store.kind = \"redis\" for a cluster)"
            )
        }
        tether::config::StoreKind::Redis => println!(
            "  sessions    redis {} (durability {:?}, node {}); connecting in the background",
            cfg.redis.urls.join(", "),
            cfg.store.durability,
            cfg.node.id
        ),
    }
    let k = &cfg.kafka;
    if !k.brokers.is_empty() {
        println!(
            "  kafka       {}: {} route(s) out, {} source(s) in (group {})",
            k.brokers,
            k.route.len(),
            k.source.len(),
            k.group_of(cfg.node.id)
        );
    }
    println!(
        "  limits      open files {} (~{} connections), memlock {}",
        limits::show(nofile),
        nofile.saturating_sub(limits::RESERVED_FDS),
        limits::show(memlock)
    );
    if nofile < limits::RECOMMENDED_NOFILE {
        println!(
            "  warning     the open-file limit caps this node at ~{} connections; raise it with \
             `ulimit -n {}` or LimitNOFILE={} in the systemd unit",
            nofile.saturating_sub(limits::RESERVED_FDS),
            limits::RECOMMENDED_NOFILE,
            limits::RECOMMENDED_NOFILE
        );
    }
    let needed = (cores * cfg.runtime.io_memory_kib * 1024) as u64;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && memlock != libc::RLIM_INFINITY && memlock < needed * 2 {
        println!(
            "  warning     memlock limit {} may be too low for io_uring ({} KiB per core); raise it with \
             `ulimit -l unlimited` or LimitMEMLOCK=infinity",
            limits::show(memlock),
            cfg.runtime.io_memory_kib
        );
    }
    println!("  ready       (SIGINT/SIGTERM to stop, SIGHUP to reload TLS and [auth] files)");
    if let Some(n) = &systemd {
        if let Err(e) = tether::systemd::serve(n.clone(), gateway.monitor()) {
            eprintln!("tether: cannot notify systemd (NOTIFY_SOCKET): {e}");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(addr = %gateway.tcp_addr, cores, "tether started");
    gateway.join();
    if let Some(n) = &systemd {
        n.stopping("stopped");
    }
    tracing::info!("tether stopped");
    ExitCode::SUCCESS
}
