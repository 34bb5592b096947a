//! The authenticator chain of each listener: `[auth] chain` (and
//! `[auth.listener_chains]` per listener) names which authenticators are
//! asked, in order. Each answers allow, deny or "not mine"
//! ([`Verdict::Pass`]); a pass goes on to the next one, and after the last
//! the anonymous policy decides: a client with neither user name nor
//! password is admitted when `auth.allow_anonymous` is on, everyone else is
//! refused (0x86 with credentials, 0x87 without).
//!
//! A step may defer ([`Verdict::Ask`]): the core parks the CONNECT with
//! the [`Step`] that asked, and when the slow path answers "not mine" it
//! continues the chain from the next step. So the walk itself always runs
//! on the core; authenticators never call each other.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::{AuthExchange, Authenticator, Credentials, Identity, Verdict};
use crate::bridge::ReplyTo;
use crate::codec::reason;
use crate::id::TRANSPORT_NAMES;
use crate::stats::{Figure, Histogram};

/// A position in a listener's chain (the authenticator that answered or
/// was asked).
pub type Step = u8;

/// Every listener's chain.
pub struct AuthChain {
    /// Every authenticator once, in the order first named.
    all: Vec<Arc<dyn Authenticator>>,
    /// Per listener ([`TRANSPORT_NAMES`] order): positions in `all`.
    chains: [Vec<u8>; TRANSPORT_NAMES.len()],
    /// After every step passed: admit clients with no credentials at all.
    allow_anonymous: bool,
    /// Clients admitted by the anonymous policy.
    anonymous: AtomicU64,
    /// Clients no authenticator took and the anonymous policy refused.
    unclaimed: AtomicU64,
}

impl AuthChain {
    /// One authenticator for every listener; a pass admits only clients
    /// without credentials, when `allow_anonymous`.
    pub fn single(auth: Arc<dyn Authenticator>, allow_anonymous: bool) -> AuthChain {
        AuthChain::new(
            vec![auth],
            std::array::from_fn(|_| vec![0]),
            allow_anonymous,
        )
    }

    /// Chains over `all`: `chains[listener]` lists positions in `all`.
    pub fn new(
        all: Vec<Arc<dyn Authenticator>>,
        chains: [Vec<u8>; TRANSPORT_NAMES.len()],
        allow_anonymous: bool,
    ) -> AuthChain {
        debug_assert!(chains.iter().flatten().all(|&i| usize::from(i) < all.len()));
        AuthChain {
            all,
            chains,
            allow_anonymous,
            anonymous: AtomicU64::new(0),
            unclaimed: AtomicU64::new(0),
        }
    }

    fn chain(&self, listener: u8) -> &[u8] {
        self.chains
            .get(usize::from(listener))
            .map_or(&[], Vec::as_slice)
    }

    /// Walks `listener`'s chain from step `from`: the step that decided (or
    /// asked) and its verdict. Never [`Verdict::Pass`]: past the last step
    /// the anonymous policy answers. An empty chain admits everyone.
    pub fn authenticate(&self, listener: u8, from: Step, who: &Credentials<'_>) -> (Step, Verdict) {
        let chain = self.chain(listener);
        if chain.is_empty() {
            return (0, Verdict::Allow);
        }
        for (step, &i) in chain.iter().enumerate().skip(usize::from(from)) {
            match self.all[usize::from(i)].authenticate(who) {
                Verdict::Pass => continue,
                v => return (step as Step, v),
            }
        }
        (chain.len() as Step, self.nobody_took(who))
    }

    /// The anonymous policy, after every step passed.
    fn nobody_took(&self, who: &Credentials<'_>) -> Verdict {
        match (who.username, who.password) {
            (None, None) if self.allow_anonymous => {
                self.anonymous.fetch_add(1, Relaxed);
                Verdict::Allow
            }
            (None, None) => {
                self.unclaimed.fetch_add(1, Relaxed);
                Verdict::Deny(reason::NOT_AUTHORIZED)
            }
            _ => {
                self.unclaimed.fetch_add(1, Relaxed);
                Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD)
            }
        }
    }

    /// The slow path of the step that answered [`Verdict::Ask`].
    pub fn ask(&self, listener: u8, step: Step, who: Identity, reply: ReplyTo<Verdict>) {
        match self.chain(listener).get(usize::from(step)) {
            Some(&i) => self.all[usize::from(i)].ask(who, reply),
            None => reply.send(Verdict::Deny(reason::UNSPECIFIED_ERROR)),
        }
    }

    /// The first authenticator of the listener's chain that supports the
    /// enhanced-authentication `method`.
    pub fn enhanced(
        &self,
        listener: u8,
        method: &str,
        who: &Credentials<'_>,
    ) -> Option<Box<dyn AuthExchange>> {
        self.chain(listener)
            .iter()
            .find_map(|&i| self.all[usize::from(i)].enhanced(method, who))
    }

    /// The chain's figures, then every authenticator's.
    pub fn figures(&self) -> Vec<Figure> {
        let mut f = vec![
            (
                "auth_anonymous",
                "CONNECTs without credentials that no authenticator took, admitted by auth.allow_anonymous.",
                self.anonymous.load(Relaxed),
                true,
            ),
            (
                "auth_unclaimed",
                "CONNECTs that no authenticator in the listener's chain took, refused (unknown user, no token).",
                self.unclaimed.load(Relaxed),
                true,
            ),
        ];
        for a in &self.all {
            f.extend(a.figures());
        }
        f
    }

    /// Round trips to the service behind an authenticator (the first that
    /// has one).
    pub fn latency(&self) -> Option<&Histogram> {
        self.all.iter().find_map(|a| a.latency())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AllowAll;

    /// Takes only the user it is named for.
    struct Only(&'static str, Verdict);

    impl Authenticator for Only {
        fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
            if who.username == Some(self.0) {
                self.1.clone()
            } else {
                Verdict::Pass
            }
        }
    }

    fn who(user: Option<&'static str>) -> Credentials<'static> {
        Credentials {
            client_id: "c",
            username: user,
            password: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            listener: "mqtt",
            protocol: 4,
            certificate_cn: None,
        }
    }

    #[test]
    fn passes_walk_on_and_the_anonymous_policy_ends_the_chain() {
        let all: Vec<Arc<dyn Authenticator>> = vec![
            Arc::new(Only("ann", Verdict::Allow)),
            Arc::new(Only("bob", Verdict::Ask)),
            Arc::new(AllowAll),
        ];
        // mqtt: ann's, then bob's; ws: everyone; mqtts: nothing.
        let chains = [vec![0, 1], vec![2], vec![], vec![1], vec![]];
        let chain = AuthChain::new(all, chains, true);
        assert_eq!(
            chain.authenticate(0, 0, &who(Some("ann"))),
            (0, Verdict::Allow)
        );
        assert_eq!(
            chain.authenticate(0, 0, &who(Some("bob"))),
            (1, Verdict::Ask)
        );
        assert_eq!(
            chain.authenticate(0, 2, &who(Some("bob"))),
            (2, Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD)),
            "continuing after bob's step passed: nobody else takes bob"
        );
        assert_eq!(
            chain.authenticate(0, 0, &who(None)),
            (2, Verdict::Allow),
            "anonymous"
        );
        assert_eq!(chain.authenticate(1, 0, &who(Some("x"))).1, Verdict::Allow);
        assert_eq!(
            chain.authenticate(2, 0, &who(Some("x"))).1,
            Verdict::Allow,
            "no chain"
        );
        assert_eq!(
            chain.authenticate(3, 0, &who(Some("ann"))).1,
            Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD),
            "ann's authenticator is not on wss"
        );
        let strict = AuthChain::single(Arc::new(Only("ann", Verdict::Allow)), false);
        assert_eq!(
            strict.authenticate(0, 0, &who(None)).1,
            Verdict::Deny(reason::NOT_AUTHORIZED)
        );
    }
}
