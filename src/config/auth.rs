//! `[auth]`: who may connect (a users file with password hashes) and what
//! they may publish and subscribe to (an ACL file with `%u`/`%c` templates).

use serde::Deserialize;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A users file: `name:$argon2id$...` lines (`tether passwd FILE USER`
    /// adds or updates one). Empty (the default): every client is admitted.
    pub users_file: String,
    /// With a users file: whether a client that gives no user name is
    /// admitted (it then matches only ACL rules without `%u`).
    pub allow_anonymous: bool,
    /// An ACL file: rules tried in order, the first that applies decides
    /// (see `tether.example.toml`). Empty (the default): only the
    /// `mqtt.deny_*` lists restrict clients.
    pub acl_file: String,
    /// What a client may do when no ACL rule applies: `deny` (the default)
    /// or `allow`.
    pub acl_default: AclDefault,
    /// How long a verified user name and password are remembered, so a
    /// reconnecting client costs no new hash verification.
    pub cache_secs: u64,
    /// How long a refused password is remembered: a reconnect storm with
    /// the same bad password costs one verification per this interval.
    pub deny_cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: String::new(),
            allow_anonymous: false,
            acl_file: String::new(),
            acl_default: AclDefault::Deny,
            cache_secs: 300,
            deny_cache_secs: 30,
        }
    }
}

/// What happens when no ACL rule applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclDefault {
    /// Refused.
    #[default]
    Deny,
    /// Allowed.
    Allow,
}
