//! The ACL file (`auth.acl_file`): rules tried in order, the first that
//! applies to a client's PUBLISH or SUBSCRIBE decides; `auth.acl_default`
//! when none does.
//!
//! ```text
//! # allow|deny  publish|subscribe|both  FILTER  [user NAME | client ID | peer CIDR]
//! allow both      user/%u/#          # every user their own tree
//! allow publish   sensors/#  peer 10.1.0.0/16  # only from the plant's network
//! allow subscribe broadcast
//! allow subscribe $SYS/#   user ops  # $SYS for one operator
//! deny  both      #
//! ```
//!
//! `%u` is the client's user name and `%c` its client id. A rule with `%u`
//! does not apply to a client without a user name, nor to one whose name
//! (or id, for `%c`) contains `/`, `+` or `#`: a name must not widen the
//! filter it is put into.
//!
//! A PUBLISH's topic is matched against each rule's filter. A SUBSCRIBE's
//! filter is decided by the first rule whose filter **covers** it (every
//! topic the subscription can receive is one the rule's filter matches),
//! so allowing `user/%u/#` does not allow `user/+/inbox`: a wildcard
//! subscription never receives another user's messages, and retained
//! messages delivered on subscribe are covered by the same check. A deny
//! rule that **overlaps** the filter without covering it refuses it too
//! (some of what it would receive is denied), unless an allow rule before
//! it already covered the filter.
//!
//! The same rules, one per string, may come with a connection's
//! [`super::Grants`] (a JWT claim, an HTTP answer): they are tried before
//! the file's. Only clients' requests are checked against rules; the HTTP
//! API and bridges are trusted backends (see `adapters::auth::Policy`).

use super::authorizer::{AclRequest, Action, Permit};
use crate::config::AclDefault;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// Which actions a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actions {
    Publish,
    Subscribe,
    Both,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Anyone,
    User(String),
    Client(String),
    Peer(Cidr),
}

/// An address block, `10.0.0.0/8` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS[/PREFIX]`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4 client seen as IPv6-mapped
    /// counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    effect: Effect,
    actions: Actions,
    /// The filter, with `%u` and `%c` still in it.
    filter: String,
    who: Who,
}

/// The rules of one ACL file (or one connection's grants), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRules {
    rules: Vec<Rule>,
    default: Permit,
}

/// A line the ACL file cannot have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

impl std::fmt::Display for AclError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: {} (a rule is: allow|deny publish|subscribe|both FILTER [user NAME | client ID | peer ADDRESS/PREFIX])",
            self.line, self.why
        )
    }
}

impl std::error::Error for AclError {}

impl AclRules {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str, default: AclDefault) -> Result<AclRules, AclError> {
        AclRules::parse_lines(text.lines(), default)
    }

    /// Parses rules given one per string (a JWT claim's or an HTTP
    /// answer's list), in the file's syntax.
    pub fn parse_lines<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        default: AclDefault,
    ) -> Result<AclRules, AclError> {
        let mut rules = Vec::new();
        for (i, raw) in lines.into_iter().enumerate() {
            let err = |why: &str| AclError {
                line: i + 1,
                why: why.to_string(),
            };
            // `#` starts a comment as the first word or after the filter
            // (the third word, which may itself be `#`).
            let mut words: Vec<&str> = raw.split_whitespace().collect();
            if words.first().is_none_or(|w| w.starts_with('#')) {
                continue;
            }
            if let Some(at) = words.iter().skip(3).position(|w| w.starts_with('#')) {
                words.truncate(3 + at);
            }
            let effect = match words.first() {
                Some(&"allow") => Effect::Allow,
                Some(&"deny") => Effect::Deny,
                _ => return Err(err("starts with neither allow nor deny")),
            };
            let actions = match words.get(1) {
                Some(&"publish") => Actions::Publish,
                Some(&"subscribe") => Actions::Subscribe,
                Some(&"both") => Actions::Both,
                _ => return Err(err("the action is publish, subscribe or both")),
            };
            let Some(filter) = words.get(2) else {
                return Err(err("no topic filter"));
            };
            let plain = filter.replace("%u", "u").replace("%c", "c");
            if let Err(why) = crate::codec::topic::validate_filter(&plain) {
                return Err(err(&format!("topic filter {filter}: {why}")));
            }
            let who =
                match (words.get(3), words.get(4), words.len()) {
                    (None, _, _) => Who::Anyone,
                    (Some(&"user"), Some(name), 5) => Who::User(name.to_string()),
                    (Some(&"client"), Some(id), 5) => Who::Client(id.to_string()),
                    (Some(&"peer"), Some(net), 5) => match Cidr::parse(net) {
                        Some(c) => Who::Peer(c),
                        None => return Err(err("peer takes an address or ADDRESS/PREFIX")),
                    },
                    _ => return Err(err(
                        "after the filter: nothing, user NAME, client ID or peer ADDRESS/PREFIX",
                    )),
                };
            rules.push(Rule {
                effect,
                actions,
                filter: filter.to_string(),
                who,
            });
        }
        Ok(AclRules {
            rules,
            default: match default {
                AclDefault::Allow => Permit::Allow,
                AclDefault::Deny => Permit::Deny,
            },
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The decision for a client's request: the first rule that applies,
    /// or the default.
    pub fn decide(&self, req: &AclRequest<'_>) -> Permit {
        self.first_match(req).unwrap_or(self.default)
    }

    /// What the first rule that applies decides, if one does.
    pub fn first_match(&self, req: &AclRequest<'_>) -> Option<Permit> {
        for rule in &self.rules {
            let applies = match rule.actions {
                Actions::Both => true,
                Actions::Publish => req.action == Action::Publish,
                Actions::Subscribe => req.action == Action::Subscribe,
            };
            let ours = match &rule.who {
                Who::Anyone => true,
                Who::User(u) => req.username == Some(u.as_str()),
                Who::Client(c) => req.client_id == Some(c.as_str()),
                Who::Peer(net) => req.peer.is_some_and(|ip| net.contains(ip)),
            };
            if !applies || !ours {
                continue;
            }
            let Some(filter) = render(&rule.filter, req) else {
                continue;
            };
            let permit = match rule.effect {
                Effect::Allow => Permit::Allow,
                Effect::Deny => Permit::Deny,
            };
            match req.action {
                Action::Publish => {
                    if crate::codec::topic::matches(&filter, req.topic) {
                        return Some(permit);
                    }
                }
                Action::Subscribe => {
                    if covers(&filter, req.topic) {
                        return Some(permit);
                    }
                    if rule.effect == Effect::Deny && overlaps(&filter, req.topic) {
                        return Some(Permit::Deny);
                    }
                }
            }
        }
        None
    }
}

/// The rule's filter for this client, or `None` when a template names
/// what the client lacks (or would widen the filter).
fn render(filter: &str, req: &AclRequest<'_>) -> Option<String> {
    if !filter.contains('%') {
        return Some(filter.to_string());
    }
    let safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
    let mut out = filter.to_string();
    if out.contains("%u") {
        let u = req.username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        let c = req.client_id.filter(|c| safe(c))?;
        out = out.replace("%c", c);
    }
    Some(out)
}

/// Whether a topic name can start with `$` where `level` stands (wildcards
/// in the first level never match `$` topics).
fn dollar(level: &str) -> bool {
    level.starts_with('$')
}

/// Whether every topic matching `sub` also matches `rule`.
pub fn covers(rule: &str, sub: &str) -> bool {
    let r: Vec<&str> = rule.split('/').collect();
    let s: Vec<&str> = sub.split('/').collect();
    if let (Some(r0), Some(s0)) = (r.first(), s.first()) {
        if matches!(*r0, "+" | "#") && dollar(s0) {
            return false;
        }
    }
    let mut i = 0;
    loop {
        match (r.get(i), s.get(i)) {
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(&l)) if l != "#" => {}
            (Some(&a), Some(&b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            // `a/#` also matches `a`, but `a` does not cover `a/#`.
            _ => return false,
        }
        i += 1;
    }
}

/// Whether some topic matches both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    if let (Some(x0), Some(y0)) = (x.first(), y.first()) {
        let wild = |l: &str| matches!(l, "+" | "#");
        if (wild(x0) && dollar(y0)) || (wild(y0) && dollar(x0)) {
            return false;
        }
    }
    let mut i = 0;
    loop {
        match (x.get(i), y.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (None, None) => return true,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => {}
            (Some(&p), Some(&q)) if p == q => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::id::Source;

    const FILE: &str = "
# every user their own tree
allow both      user/%u/#
allow subscribe broadcast
allow publish   devices/%c/state
allow subscribe $SYS/#    user ops
deny  subscribe secret/#
allow subscribe public/#  # a trailing comment
deny  both      #
";

    fn req<'a>(action: Action, topic: &'a str, user: Option<&'a str>) -> AclRequest<'a> {
        AclRequest {
            action,
            topic,
            qos: QoS::AtMostOnce,
            retain: false,
            source: Source::Client,
            client_id: Some("dev-1"),
            username: user,
            peer: Some("10.1.2.3".parse().unwrap()),
            grants: None,
        }
    }

    #[test]
    fn each_user_has_their_own_tree_and_nothing_leaks() {
        let acl = AclRules::parse(FILE, AclDefault::Deny).unwrap();
        assert_eq!(acl.len(), 7);
        let d = |a, t, u| acl.decide(&req(a, t, u));
        use Action::{Publish as P, Subscribe as S};
        assert_eq!(d(P, "user/ann/x", Some("ann")), Permit::Allow);
        assert_eq!(d(S, "user/ann/#", Some("ann")), Permit::Allow);
        assert_eq!(d(S, "user/ann/+/inbox", Some("ann")), Permit::Allow);
        assert_eq!(d(P, "user/bob/x", Some("ann")), Permit::Deny);
        assert_eq!(d(S, "user/bob/#", Some("ann")), Permit::Deny);
        assert_eq!(
            d(S, "user/+/inbox", Some("ann")),
            Permit::Deny,
            "a wildcard over other users"
        );
        assert_eq!(d(S, "user/#", Some("ann")), Permit::Deny);
        assert_eq!(d(S, "#", Some("ann")), Permit::Deny);
        assert_eq!(
            d(S, "user/ann/#", None),
            Permit::Deny,
            "no user name: %u never applies"
        );
        assert_eq!(
            d(S, "user/a+b/#", Some("a+b")),
            Permit::Deny,
            "a name must not widen the filter"
        );
        assert_eq!(d(P, "devices/dev-1/state", None), Permit::Allow, "%c");
        assert_eq!(d(P, "devices/dev-2/state", None), Permit::Deny);
        assert_eq!(d(S, "$SYS/broker/uptime", Some("ops")), Permit::Allow);
        assert_eq!(d(S, "$SYS/#", Some("ann")), Permit::Deny);
        assert_eq!(d(S, "secret/x", Some("ann")), Permit::Deny);
        assert_eq!(d(S, "public/news", Some("ann")), Permit::Allow);
        assert_eq!(d(S, "broadcast", None), Permit::Allow);
    }

    #[test]
    fn a_deny_rule_overlapping_a_wildcard_refuses_it() {
        let acl = AclRules::parse(
            "deny subscribe a/secret\nallow subscribe a/#",
            AclDefault::Deny,
        )
        .unwrap();
        assert_eq!(
            acl.decide(&req(Action::Subscribe, "a/+", None)),
            Permit::Deny
        );
        assert_eq!(
            acl.decide(&req(Action::Subscribe, "a/public", None)),
            Permit::Allow
        );
        let allow = AclRules::parse("", AclDefault::Allow).unwrap();
        assert_eq!(
            allow.decide(&req(Action::Subscribe, "x", None)),
            Permit::Allow,
            "the default"
        );
    }

    #[test]
    fn peer_rules_match_address_blocks() {
        let acl = AclRules::parse(
            "allow publish sensors/# peer 10.1.0.0/16\ndeny both #",
            AclDefault::Deny,
        )
        .unwrap();
        let mut r = req(Action::Publish, "sensors/t", None);
        assert_eq!(acl.decide(&r), Permit::Allow, "10.1.2.3 is in 10.1.0.0/16");
        r.peer = Some("10.2.0.1".parse().unwrap());
        assert_eq!(acl.decide(&r), Permit::Deny);
        r.peer = Some("::ffff:10.1.9.9".parse().unwrap());
        assert_eq!(acl.decide(&r), Permit::Allow, "IPv4-mapped IPv6");
        let one = Cidr::parse("192.168.0.7").unwrap();
        assert!(one.contains("192.168.0.7".parse().unwrap()));
        assert!(!one.contains("192.168.0.8".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(AclRules::parse("allow both a peer nonsense", AclDefault::Deny).is_err());
    }

    #[test]
    fn coverage_and_overlap_of_filters() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/#"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a", "a/#"));
        assert!(!covers("#", "$SYS/x"), "wildcards never reach $ topics");
        assert!(covers("$SYS/#", "$SYS/x"));
        assert!(overlaps("a/+/c", "a/b/#"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("#", "$SYS/x"));
    }

    #[test]
    fn bad_lines_say_where_and_why() {
        let e = AclRules::parse("allow both a/#\npermit both b", AclDefault::Deny).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(AclRules::parse("allow read a", AclDefault::Deny).is_err());
        assert!(AclRules::parse("allow both a/#/b", AclDefault::Deny).is_err());
        assert!(AclRules::parse("allow both a user", AclDefault::Deny).is_err());
    }
}
