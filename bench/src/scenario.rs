//! Turns a scenario and its options into a [`Plan`]: who client `i` is
//! (idle, publisher or subscriber, on which topic), how many deliveries each
//! published message should cause, and which clients this process runs.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use tether_core::codec::{QoS, Version};

use crate::cli::Opts;
use crate::payload::HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Conn,
    Pub,
    Sub,
    Fanout,
    P2p,
    Fanin,
    Sharedsub,
    Storm,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "conn" => Kind::Conn,
            "pub" => Kind::Pub,
            "sub" => Kind::Sub,
            "fanout" => Kind::Fanout,
            "p2p" => Kind::P2p,
            "fanin" => Kind::Fanin,
            "sharedsub" => Kind::Sharedsub,
            "storm" => Kind::Storm,
            _ => return None,
        })
    }
}

/// What one client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Connects and holds the connection (keep-alive pings only).
    Idle,
    Subscriber {
        filter: String,
    },
    /// Publishes to `topic` with its index as publisher id.
    Publisher {
        topic: String,
    },
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: u32,
    pub client_id: String,
    pub role: Role,
    pub source: Option<IpAddr>,
}

/// A validated run description shared by every core and worker.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub name: &'static str,
    pub opts: Opts,
    pub addr: SocketAddr,
    pub version: Version,
    pub qos: QoS,
    pub clean: bool,
    pub prefix: String,
    pub worker: usize,
    pub workers: usize,
    /// The TLS client configuration, for `--transport tls|wss`.
    pub tls: Option<crate::tls::Tls>,
}

impl Plan {
    pub fn new(name: &'static str, opts: &Opts) -> Result<Plan, String> {
        let kind = Kind::parse(name).ok_or_else(|| format!("unknown scenario {name}"))?;
        let addr = (opts.host.as_str(), opts.port)
            .to_socket_addrs()
            .map_err(|e| format!("--host {}: {e}", opts.host))?
            .next()
            .ok_or_else(|| format!("--host {} has no address", opts.host))?;
        let version = match opts.version {
            3 => Version::V31,
            4 => Version::V311,
            5 => Version::V5,
            v => return Err(format!("--mqtt {v}: use 3, 4 or 5")),
        };
        let qos = QoS::from_u8(opts.qos).ok_or("--qos must be 0, 1 or 2")?;
        if opts.size < HEADER_LEN {
            return Err(format!(
                "--size {}: payloads carry a {HEADER_LEN}-byte header (publisher, sequence, timestamp)",
                opts.size
            ));
        }
        if !(opts.rate >= 0.0 && opts.conn_rate >= 0.0 && opts.duration >= 0.0) {
            return Err("--rate, --conn-rate and --duration must be >= 0".into());
        }
        if qos != QoS::AtMostOnce && opts.inflight == 0 {
            return Err("--inflight must be at least 1 for QoS 1/2".into());
        }
        if opts.procs == 0 || opts.workers == 0 {
            return Err("--procs must be at least 1".into());
        }
        if kind == Kind::Sharedsub && version == Version::V31 {
            return Err("shared subscriptions need MQTT 3.1.1 or 5".into());
        }
        let prefix = opts
            .client_prefix
            .clone()
            .unwrap_or_else(|| format!("tb{:x}", std::process::id()));
        Ok(Plan {
            kind,
            name,
            opts: opts.clone(),
            addr,
            version,
            qos,
            // Storms reconnect into the same session: that is the point.
            clean: opts.clean && kind != Kind::Storm,
            prefix,
            worker: opts.worker.unwrap_or(0),
            workers: opts.workers,
            tls: match opts.transport.tls() {
                true => Some(crate::tls::Tls::from_opts(opts)?),
                false => None,
            },
        })
    }

    /// Clients over all workers.
    pub fn total(&self) -> u32 {
        let o = &self.opts;
        match self.kind {
            Kind::Conn | Kind::Pub | Kind::Sub => o.count,
            Kind::Fanout | Kind::Sharedsub => o.count + o.publishers,
            Kind::P2p | Kind::Storm => o.count * 2,
            Kind::Fanin => o.count + 1,
        }
    }

    /// Deliveries each published message should cause, when this run holds
    /// both sides; `None` for one-sided fleets.
    /// Messages/s the publishers are asked to send in all (0: flat out, or
    /// no publishers).
    pub fn offered_per_sec(&self) -> f64 {
        let o = &self.opts;
        let publishers = match self.kind {
            Kind::Conn | Kind::Sub => 0,
            Kind::Fanout | Kind::Sharedsub => o.publishers,
            Kind::Pub | Kind::P2p | Kind::Storm | Kind::Fanin => o.count,
        };
        o.rate * f64::from(publishers)
    }

    pub fn multiplicity(&self) -> Option<u64> {
        match self.kind {
            Kind::Conn | Kind::Pub | Kind::Sub => None,
            Kind::Fanout => Some(u64::from(self.opts.count)),
            Kind::P2p | Kind::Storm | Kind::Fanin | Kind::Sharedsub => Some(1),
        }
    }

    pub fn storm(&self) -> bool {
        self.kind == Kind::Storm
    }

    /// The clients this worker process runs: every `workers`-th index.
    pub fn my_clients(&self) -> Vec<ClientSpec> {
        (0..self.total())
            .filter(|i| *i as usize % self.workers == self.worker)
            .map(|i| self.spec(i))
            .collect()
    }

    fn topic(&self, default: &str, i: u32) -> String {
        self.opts
            .topic
            .as_deref()
            .unwrap_or(default)
            .replace("%i", &i.to_string())
    }

    pub fn spec(&self, index: u32) -> ClientSpec {
        let o = &self.opts;
        let role = match self.kind {
            Kind::Conn => Role::Idle,
            Kind::Pub => Role::Publisher {
                topic: self.topic("bench/%i", index),
            },
            Kind::Sub => Role::Subscriber {
                filter: self.topic("bench/%i", index),
            },
            Kind::Fanout | Kind::Sharedsub => {
                let topic = self.topic("bench/fanout", index);
                if index < o.count {
                    let filter = if self.kind == Kind::Sharedsub {
                        format!("$share/bench/{topic}")
                    } else {
                        topic
                    };
                    Role::Subscriber { filter }
                } else {
                    Role::Publisher { topic }
                }
            }
            Kind::P2p | Kind::Storm => {
                let topic = self.topic("bench/p2p/%i", index / 2);
                if index.is_multiple_of(2) {
                    Role::Subscriber { filter: topic }
                } else {
                    Role::Publisher { topic }
                }
            }
            Kind::Fanin => {
                if index == 0 {
                    let pattern = o.topic.as_deref().unwrap_or("bench/fanin/%i");
                    Role::Subscriber {
                        filter: pattern.replace("%i", "+"),
                    }
                } else {
                    Role::Publisher {
                        topic: self.topic("bench/fanin/%i", index),
                    }
                }
            }
        };
        let source =
            (!o.source_ips.is_empty()).then(|| o.source_ips[index as usize % o.source_ips.len()]);
        ClientSpec {
            index,
            client_id: format!("{}-{index}", self.prefix),
            role,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(std::iter::once("tether-bench").chain(args.iter().copied()))
            .expect("valid arguments");
        let (name, o) = cli.scenario.parts().expect("an MQTT scenario");
        Plan::new(name, o).expect("valid plan")
    }

    #[test]
    fn fanout_puts_subscribers_first_and_counts_deliveries() {
        let p = plan(&["fanout", "-c", "3", "-P", "2"]);
        assert_eq!(p.total(), 5);
        assert!(matches!(p.spec(2).role, Role::Subscriber { .. }));
        assert_eq!(
            p.spec(3).role,
            Role::Publisher {
                topic: "bench/fanout".into()
            }
        );
        assert_eq!(p.multiplicity(), Some(3));
    }

    #[test]
    fn p2p_pairs_share_a_private_topic_and_workers_split_clients() {
        let mut p = plan(&["p2p", "-c", "2", "--procs", "2"]);
        assert_eq!(
            p.spec(2).role,
            Role::Subscriber {
                filter: "bench/p2p/1".into()
            }
        );
        assert_eq!(
            p.spec(3).role,
            Role::Publisher {
                topic: "bench/p2p/1".into()
            }
        );
        p.workers = 2;
        p.worker = 1;
        let mine: Vec<u32> = p.my_clients().iter().map(|c| c.index).collect();
        assert_eq!(mine, vec![1, 3]);
    }

    #[test]
    fn fanin_subscriber_uses_a_wildcard_and_sources_rotate() {
        let p = plan(&["fanin", "-c", "4", "--source-ips", "127.0.0.2,127.0.0.3"]);
        assert_eq!(
            p.spec(0).role,
            Role::Subscriber {
                filter: "bench/fanin/+".into()
            }
        );
        assert_eq!(p.spec(1).source, Some("127.0.0.3".parse().unwrap()));
        assert_eq!(p.spec(2).source, Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn small_payloads_and_bad_levels_are_refused_with_the_reason() {
        let cli = Cli::try_parse_from(["tether-bench", "pub", "-s", "8"]).unwrap();
        let (name, o) = cli.scenario.parts().expect("an MQTT scenario");
        assert!(Plan::new(name, o).unwrap_err().contains("16-byte header"));
        let cli = Cli::try_parse_from(["tether-bench", "pub", "-V", "6"]).unwrap();
        let (name, o) = cli.scenario.parts().expect("an MQTT scenario");
        assert!(Plan::new(name, o).unwrap_err().contains("--mqtt 6"));
    }

    #[test]
    fn storm_forces_persistent_sessions() {
        let p = plan(&["storm", "-c", "1"]);
        assert!(!p.clean && p.storm());
    }
}
