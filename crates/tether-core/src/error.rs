//! Where an error comes from, so that logs, metrics and operators can tell
//! whose problem it is (after pingora's error sources).
//!
//! Every error type that leaves a module says its [`Origin`] through
//! [`Classify`]. A client's protocol violation is the client's business
//! (logged at `info`, counted, the connection closed); a configuration
//! error needs the operator (it names the key to fix); an internal error is
//! ours; a bridge error is Redis, Kafka or an HTTP callback misbehaving.

use std::fmt;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A client sent something malformed or not allowed.
    Client,
    /// The configuration or the host's environment (files, ports, limits).
    Config,
    /// Tether itself: a resource it could not get, or a bug.
    Internal,
    /// A service behind a bridge thread: the session store, a message
    /// queue, an authentication callback.
    Bridge,
}

impl Origin {
    /// Lower-case name, for log fields and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Config => "config",
            Origin::Internal => "internal",
            Origin::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error that knows where it came from.
pub trait Classify {
    /// The error's [`Origin`].
    fn origin(&self) -> Origin;
}
