//! The listeners: which transports a connection can arrive on, and one
//! SO_REUSEPORT socket per core for each.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::error::{Classify, Origin};

/// A listener that could not be bound, with the key that configures it.
#[derive(Debug)]
pub struct ListenError {
    /// The configuration key of the address (`listeners.tcp`, ...).
    pub key: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: io::Error,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = match self.source.kind() {
            io::ErrorKind::AddrInUse => format!(
                " (another process listens there: stop it or change {} / TETHER_{})",
                self.key,
                self.key.replace('.', "__").to_ascii_uppercase()
            ),
            io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string()
            }
            _ => String::new(),
        };
        write!(
            f,
            "cannot listen on {} ({}): {}{hint}",
            self.addr, self.key, self.source
        )
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Classify for ListenError {
    fn origin(&self) -> Origin {
        Origin::Config
    }
}

/// How a connection reaches the MQTT codec. Every transport is served by
/// the same connection task; TLS and WebSocket are layers in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// An HTTP fallback session (SSE or long-polling): no listener of its
    /// own; its requests come in on the WebSocket listener.
    Http,
}

impl Transport {
    /// Every transport, in [`Transport::index`] order.
    pub const ALL: [Transport; 5] = [
        Transport::Mqtt,
        Transport::Ws,
        Transport::Mqtts,
        Transport::Wss,
        Transport::Http,
    ];

    /// Name in metrics, logs and presence entries.
    pub fn name(self) -> &'static str {
        crate::id::TRANSPORT_NAMES[self.index()]
    }

    /// Position in per-transport tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether WebSocket framing runs on it.
    pub fn websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// Whether TLS runs on it.
    pub fn tls(self) -> bool {
        matches!(self, Transport::Mqtts | Transport::Wss)
    }

    /// The configured address, when this transport is enabled.
    pub fn address(self, cfg: &Config) -> Option<SocketAddr> {
        match self {
            Transport::Mqtt => Some(cfg.listeners.tcp),
            Transport::Ws => cfg.websocket.enabled.then_some(cfg.websocket.listen),
            Transport::Mqtts => cfg.tls.enabled.then_some(cfg.tls.listen),
            Transport::Wss => (cfg.tls.enabled && cfg.tls.wss).then_some(cfg.tls.wss_listen),
            Transport::Http => None,
        }
    }

    /// The configuration key of the address, for error messages.
    fn key(self) -> &'static str {
        match self {
            Transport::Mqtt => "listeners.tcp",
            Transport::Ws => "websocket.listen",
            Transport::Mqtts => "tls.listen",
            Transport::Wss => "tls.wss_listen",
            Transport::Http => "websocket.fallback",
        }
    }
}

/// One enabled transport: its bound address and one socket per core.
pub struct Bound {
    /// The transport.
    pub transport: Transport,
    /// The address bound (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// One listening socket per core.
    pub sockets: Vec<Socket>,
}

/// Binds every enabled transport, `n` sockets each.
pub fn bind_all(cfg: &Config, n: usize) -> Result<Vec<Bound>, ListenError> {
    let mut out = Vec::new();
    for t in Transport::ALL {
        if let Some(addr) = t.address(cfg) {
            let sockets = bind(t, addr, n, cfg.listeners.backlog)?;
            let addr = sockets[0]
                .local_addr()
                .and_then(|a| {
                    a.as_socket()
                        .ok_or_else(|| io::Error::other("not an IP socket"))
                })
                .map_err(|source| ListenError {
                    key: t.key(),
                    addr,
                    source,
                })?;
            out.push(Bound {
                transport: t,
                addr,
                sockets,
            });
        }
    }
    Ok(out)
}

/// Fails with `AddrInUse` when another socket already listens on `addr`.
/// SO_REUSEPORT would otherwise let a second process (a second tether
/// started by mistake) bind it too, and the kernel would silently split new
/// clients between the two. A probe bound without SO_REUSEPORT cannot share
/// the address with any listener, so its bind tells; it is closed before
/// the real sockets are bound. (A port that only has connections in
/// TIME_WAIT is free: SO_REUSEADDR.)
fn ensure_unclaimed(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// One SO_REUSEPORT listener per core on the same address, so the kernel
/// spreads incoming connections across cores without a shared accept queue.
fn bind(
    t: Transport,
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> Result<Vec<Socket>, ListenError> {
    if addr.port() != 0 {
        ensure_unclaimed(addr).map_err(|source| ListenError {
            key: t.key(),
            addr,
            source,
        })?;
    }
    let mut out: Vec<Socket> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let bind = || -> io::Result<Socket> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(backlog.min(i32::MAX as u32) as i32)?;
            Ok(s)
        };
        let s = bind().map_err(|source| ListenError {
            key: t.key(),
            addr,
            source,
        })?;
        if addr.port() == 0 {
            // Every core must share the port the OS picked for the first.
            addr = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
        }
        out.push(s);
    }
    Ok(out)
}
