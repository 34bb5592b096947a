//! [`Peer`]: a client's address in 20 bytes instead of `SocketAddr`'s 32.
//! Every connection's link keeps one, and the flow label and scope id a
//! `SocketAddrV6` carries are never used for a client (a link-local client
//! with a scope is shown without it).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A client's IP address and port (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// IPv6 octets; an IPv4 address as its first four.
    octets: [u8; 16],
    port: u16,
    v4: bool,
}

impl Peer {
    /// The address as the standard type.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        if self.v4 {
            let [a, b, c, d, ..] = self.octets;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.octets))
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        let mut octets = [0; 16];
        match a.ip() {
            IpAddr::V4(ip) => octets[..4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => octets = ip.octets(),
        }
        Peer {
            octets,
            port: a.port(),
            v4: a.is_ipv4(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr().fmt(f)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families_in_20_bytes() {
        assert_eq!(std::mem::size_of::<Peer>(), 20);
        for a in ["10.1.2.3:1883", "[2001:db8::7]:8883", "[::ffff:10.0.0.1]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let p = Peer::from(a);
            assert_eq!(p.addr(), a);
            assert_eq!(p.to_string(), a.to_string());
        }
    }
}
