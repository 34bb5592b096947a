//! Authorization: one [`Authorizer`] is consulted for every SUBSCRIBE
//! filter and every PUBLISH, whether it comes from a client, the HTTP API or
//! a bridge.
//!
//! The fast path ([`Authorizer::check`]) answers from rules or a cache on
//! the core. [`Permit::Ask`] defers to [`Authorizer::ask`]: the client's
//! packet, and everything it sent after it, waits (the connection reads
//! nothing more) until the answer arrives, so a client's packets are still
//! handled in order. [`DenyLists`], the default, never defers.

use crate::bridge::{ReplyTo, Unanswered};
use crate::codec::{topic, QoS};
use crate::config::MqttConfig;
use crate::id::Source;

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter (the inner filter of a `$share/...`).
    Subscribe,
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct AclRequest<'a> {
    /// Publish or subscribe.
    pub action: Action,
    /// Topic name (publish) or filter (subscribe).
    pub topic: &'a str,
    /// QoS published or requested.
    pub qos: QoS,
    /// RETAIN on a publish.
    pub retain: bool,
    /// Who asks.
    pub source: Source,
    /// The client's id (clients only).
    pub client_id: Option<&'a str>,
    /// The client's user name, when it gave one.
    pub username: Option<&'a str>,
    /// The client's address (clients only).
    pub peer: Option<std::net::IpAddr>,
    /// What the client's authenticator granted its connection.
    pub grants: Option<&'a super::Grants>,
}

/// [`AclRequest`] that can travel to another thread, for [`Authorizer::ask`]
/// (without the grants: they are applied before anything is asked).
#[derive(Debug, Clone)]
pub struct OwnedAclRequest {
    /// Publish or subscribe.
    pub action: Action,
    /// Topic name or filter.
    pub topic: String,
    /// QoS published or requested.
    pub qos: QoS,
    /// RETAIN on a publish.
    pub retain: bool,
    /// Who asks.
    pub source: Source,
    /// The client's id.
    pub client_id: Option<String>,
    /// The client's user name.
    pub username: Option<String>,
    /// The client's address.
    pub peer: Option<std::net::IpAddr>,
}

impl AclRequest<'_> {
    /// An owned copy, for the slow path.
    pub fn to_owned(&self) -> OwnedAclRequest {
        OwnedAclRequest {
            action: self.action,
            topic: self.topic.to_owned(),
            qos: self.qos,
            retain: self.retain,
            source: self.source,
            client_id: self.client_id.map(str::to_owned),
            username: self.username.map(str::to_owned),
            peer: self.peer,
        }
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead.
    Allow,
    /// Refused: SUBACK 0x87 / 0x80, publish ack 0x87, HTTP 403.
    Deny,
    /// From [`Authorizer::check`] only: call [`Authorizer::ask`]. As an
    /// answer through [`ReplyTo`] it counts as [`Permit::Deny`].
    Ask,
}

impl Unanswered for Permit {
    /// Nobody decided: refuse (fail closed).
    fn unanswered() -> Self {
        Permit::Deny
    }
}

/// Decides what a client (or the API, or a bridge) may publish and
/// subscribe to.
pub trait Authorizer: Send + Sync + 'static {
    /// Fast path, on the core: must answer from memory; [`Permit::Ask`]
    /// defers to [`Authorizer::ask`].
    fn check(&self, req: &AclRequest<'_>) -> Permit;

    /// Slow path, called after [`Permit::Ask`] while the core has room for
    /// one more pending permit (otherwise the connection pauses until it
    /// has): decide on another thread and answer through `reply`. The
    /// default refuses.
    fn ask(&self, req: OwnedAclRequest, reply: ReplyTo<Permit>) {
        let _ = req;
        reply.send(Permit::Deny);
    }

    /// The authorizer's own figures for `/metrics` (calls, cache).
    fn figures(&self) -> Vec<crate::stats::Figure> {
        Vec::new()
    }
}

/// The static deny lists `mqtt.deny_subscribe` and `mqtt.deny_publish`:
/// a subscription whose filter one of them matches (wildcards in the
/// request compared as literal levels) is refused, and so is a publish to a
/// matching topic. Everything else is allowed.
#[derive(Debug, Clone, Default)]
pub struct DenyLists {
    subscribe: Vec<String>,
    publish: Vec<String>,
}

impl DenyLists {
    /// The lists from the `[mqtt]` section.
    pub fn from_config(m: &MqttConfig) -> DenyLists {
        DenyLists {
            subscribe: m.deny_subscribe.clone(),
            publish: m.deny_publish.clone(),
        }
    }
}

impl Authorizer for DenyLists {
    fn check(&self, req: &AclRequest<'_>) -> Permit {
        let list = match req.action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
        };
        if list.iter().any(|f| topic::matches(f, req.topic)) {
            Permit::Deny
        } else {
            Permit::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: Action, topic: &str) -> AclRequest<'_> {
        AclRequest {
            action,
            topic,
            qos: QoS::AtMostOnce,
            retain: false,
            source: Source::Client,
            client_id: Some("c"),
            username: None,
            peer: None,
            grants: None,
        }
    }

    #[test]
    fn deny_lists_refuse_matches_and_allow_the_rest() {
        let m = MqttConfig {
            deny_subscribe: vec!["secret/#".into()],
            deny_publish: vec!["$SYS/#".into(), "ro/+".into()],
            ..Default::default()
        };
        let z = DenyLists::from_config(&m);
        assert_eq!(z.check(&req(Action::Subscribe, "secret/x")), Permit::Deny);
        assert_eq!(
            z.check(&req(Action::Subscribe, "secret/#")),
            Permit::Deny,
            "a wildcard request is compared level by level"
        );
        assert_eq!(z.check(&req(Action::Subscribe, "public/x")), Permit::Allow);
        assert_eq!(z.check(&req(Action::Publish, "ro/a")), Permit::Deny);
        assert_eq!(z.check(&req(Action::Publish, "ro/a/b")), Permit::Allow);
        assert_eq!(
            z.check(&req(Action::Publish, "secret/x")),
            Permit::Allow,
            "the subscribe list does not restrict publishing"
        );
    }
}
