//! [`Policy`]: the authorizer `[auth]` builds. Every PUBLISH and
//! SUBSCRIBE is decided by the first of these that has an answer:
//!
//! 1. the `mqtt.deny_*` lists, for everyone (clients, the HTTP API,
//!    bridges): a match is refused;
//! 2. backends (the HTTP API, bridges) are trusted: allowed;
//! 3. the connection's [`Grants`]: a superuser is allowed;
//! 4. `$SYS/...` subscriptions, with `auth.sys_readers` set: allowed to
//!    those users, refused to everyone else;
//! 5. the connection's own rules, when one applies;
//! 6. the ACL file (`auth.acl_file`), when one of its rules applies;
//! 7. the HTTP authorizer (`auth.http.acl_url`): its cache on the core,
//!    or the question parked and asked on the `tether-auth-http` thread;
//! 8. `auth.acl_default` when an ACL file or an HTTP authorizer is
//!    configured; allow when neither is (a connection's own rules then
//!    confine it only as far as they say: end them with `deny both #`).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::http::HttpAuthorizer;
use crate::auth::acl::AclRules;
use crate::auth::{AclRequest, Action, Authorizer, DenyLists, OwnedAclRequest, Permit};
use crate::bridge::ReplyTo;
use crate::id::Source;
use crate::stats::Figure;

/// The deny lists, grants, ACL file and HTTP authorizer, in that order.
pub struct Policy {
    /// `mqtt.deny_*`, replaceable on SIGHUP.
    deny: ArcSwap<DenyLists>,
    /// The ACL file (replaceable on SIGHUP) and where it is.
    file: Option<(PathBuf, ArcSwap<AclRules>)>,
    http: Option<HttpAuthorizer>,
    /// `auth.sys_readers` (empty: `$SYS` is like any topic).
    sys_readers: Vec<String>,
    /// When nothing above decided.
    default: Permit,
}

impl Policy {
    /// The policy of the deny lists alone (plus any grants).
    pub fn new(deny: DenyLists) -> Policy {
        Policy {
            deny: ArcSwap::from_pointee(deny),
            file: None,
            http: None,
            sys_readers: Vec::new(),
            default: Permit::Allow,
        }
    }

    /// Only these users (and superusers) may subscribe to `$SYS/...`.
    pub fn with_sys_readers(mut self, users: Vec<String>) -> Policy {
        self.sys_readers = users;
        self
    }

    /// Adds the ACL file's rules (their default becomes the policy's).
    pub fn with_file(mut self, path: PathBuf, rules: AclRules, default: Permit) -> Policy {
        self.file = Some((path, ArcSwap::from_pointee(rules)));
        self.default = default;
        self
    }

    /// Adds the HTTP authorizer.
    pub fn with_http(mut self, http: HttpAuthorizer, default: Permit) -> Policy {
        self.http = Some(http);
        self.default = default;
        self
    }

    /// The ACL file, if one is configured.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref().map(|(p, _)| p)
    }

    /// Puts new deny lists in place (SIGHUP with changed `mqtt.deny_*`);
    /// requests decided from now on use them.
    pub fn replace_deny_lists(&self, deny: DenyLists) {
        self.deny.store(Arc::new(deny));
    }

    /// Puts new ACL file rules in place; requests decided from now on use
    /// them.
    pub fn replace_rules(&self, rules: AclRules) {
        if let Some((_, r)) = &self.file {
            r.store(Arc::new(rules));
        }
    }
}

impl Authorizer for Policy {
    fn check(&self, req: &AclRequest<'_>) -> Permit {
        if self.deny.load().check(req) == Permit::Deny {
            return Permit::Deny;
        }
        if req.source != Source::Client {
            return Permit::Allow;
        }
        if req.grants.is_some_and(|g| g.superuser) {
            return Permit::Allow;
        }
        if !self.sys_readers.is_empty()
            && req.action == Action::Subscribe
            && req.topic.starts_with("$SYS/")
        {
            let listed = req
                .username
                .is_some_and(|u| self.sys_readers.iter().any(|r| r == u));
            return if listed { Permit::Allow } else { Permit::Deny };
        }
        if let Some(p) = req
            .grants
            .and_then(|g| g.rules.as_ref())
            .and_then(|r| r.first_match(req))
        {
            return p;
        }
        if let Some(p) = self
            .file
            .as_ref()
            .and_then(|(_, r)| r.load().first_match(req))
        {
            return p;
        }
        match &self.http {
            Some(h) => h.check(req),
            None => self.default,
        }
    }

    fn ask(&self, req: OwnedAclRequest, reply: ReplyTo<Permit>) {
        match &self.http {
            Some(h) => h.ask(req, reply),
            None => reply.send(Permit::Deny),
        }
    }

    fn figures(&self) -> Vec<Figure> {
        self.http.as_ref().map(|h| h.figures()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;
    use crate::codec::QoS;
    use crate::config::{AclDefault, MqttConfig};

    fn req<'a>(
        topic: &'a str,
        user: Option<&'a str>,
        grants: Option<&'a Grants>,
    ) -> AclRequest<'a> {
        AclRequest {
            action: Action::Publish,
            topic,
            qos: QoS::AtMostOnce,
            retain: false,
            source: Source::Client,
            client_id: Some("c1"),
            username: user,
            peer: None,
            grants,
        }
    }

    #[test]
    fn grants_come_before_the_file_and_deny_lists_before_everything() {
        let m = MqttConfig {
            deny_publish: vec!["$SYS/#".into()],
            ..Default::default()
        };
        let file = AclRules::parse("allow both user/%u/#", AclDefault::Deny).unwrap();
        let p = Policy::new(DenyLists::from_config(&m)).with_file(
            PathBuf::from("acl"),
            file,
            Permit::Deny,
        );
        assert_eq!(
            p.check(&req("user/ann/x", Some("ann"), None)),
            Permit::Allow
        );
        assert_eq!(
            p.check(&req("feed/x", Some("ann"), None)),
            Permit::Deny,
            "the default"
        );
        let own = Grants {
            rules: Some(
                AclRules::parse_lines(
                    ["allow publish feed/#", "deny publish user/#"],
                    AclDefault::Deny,
                )
                .unwrap(),
            ),
            ..Grants::default()
        };
        assert_eq!(
            p.check(&req("feed/x", Some("ann"), Some(&own))),
            Permit::Allow
        );
        assert_eq!(
            p.check(&req("user/ann/x", Some("ann"), Some(&own))),
            Permit::Deny,
            "the connection's rule applies before the file's"
        );
        assert_eq!(
            p.check(&req("other", Some("ann"), Some(&own))),
            Permit::Deny,
            "no rule: the file, then the default"
        );
        let root = Grants {
            superuser: true,
            ..Grants::default()
        };
        assert_eq!(p.check(&req("anything", None, Some(&root))), Permit::Allow);
        assert_eq!(
            p.check(&req("$SYS/x", None, Some(&root))),
            Permit::Deny,
            "deny lists bind a superuser too"
        );
        let ops = p.with_sys_readers(vec!["ops".into()]);
        let mut sys = req("$SYS/broker/uptime", Some("ops"), None);
        sys.action = Action::Subscribe;
        assert_eq!(ops.check(&sys), Permit::Allow, "a listed reader");
        sys.username = Some("ann");
        assert_eq!(ops.check(&sys), Permit::Deny);
        sys.grants = Some(&own);
        assert_eq!(
            ops.check(&sys),
            Permit::Deny,
            "whatever the connection's rules say"
        );
        let mut api = req("anything", None, None);
        api.source = Source::Api;
        assert_eq!(ops.check(&api), Permit::Allow, "backends are trusted");
    }
}
