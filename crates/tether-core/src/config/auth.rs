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
    /// Whether a client that gives neither user name nor password, and so
    /// is taken by no authenticator of its listener's chain, is admitted (it
    /// then matches only ACL rules without `%u`).
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
    /// Refusals of bad credentials from one source address, within
    /// `ban_window_secs`, after which that address is banned (CONNACK
    /// 0x8A) for `ban_secs`. Counted for the node. 0: never banned.
    pub ban_after_failures: u32,
    /// The window the failures are counted in.
    pub ban_window_secs: u64,
    /// How long a ban lasts.
    pub ban_secs: u64,
    /// `[auth.jwt]`: a password that is a JWT is decided by its signature
    /// and claims instead of the users file.
    pub jwt: JwtConfig,
    /// `[auth.http]`: the business decides, over HTTP, who connects and
    /// what they may publish and subscribe to.
    pub http: HttpAuthConfig,
    /// The authenticators every listener asks, in order, of `jwt`, `file`
    /// (the users file) and `http`; a client one passes on ("not mine":
    /// not a token, an unknown user, an `ignore` answer) goes to the next.
    /// Empty (the default): every configured one, in the order jwt, file,
    /// http.
    pub chain: Vec<String>,
    /// Per listener (`mqtt`, `ws`, `mqtts`, `wss`), a chain that replaces
    /// `chain`, e.g. `ws = ["jwt"]` for browsers with tokens only, or
    /// `mqtts = []` to admit whoever holds a client certificate.
    pub listener_chains: std::collections::BTreeMap<String, Vec<String>>,
    /// User names that may subscribe to `$SYS/...` (with superusers); every
    /// other client is refused them before any rule is tried. Empty (the
    /// default): `$SYS` is decided like any topic (wildcard rules never
    /// cover it, so only a rule that names `$SYS` allows it).
    pub sys_readers: Vec<String>,
}

/// `[auth.http]`: an HTTP service decides who connects. Off unless `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// Where CONNECTs are POSTed (`http://host:port/path`). Empty: off.
    pub url: String,
    /// Where publish and subscribe questions are POSTed, for what no
    /// connection grant or ACL file rule decides. Empty: off.
    pub acl_url: String,
    /// How long a call may take; past it the fail policy decides.
    pub timeout_ms: u64,
    /// How long an "allow" is remembered.
    pub allow_cache_secs: u64,
    /// How long a "deny" is remembered.
    pub deny_cache_secs: u64,
    /// Calls out at once, at most; more wait their turn.
    pub max_concurrent: usize,
    /// While the service is down, slow or answering nonsense: `closed`
    /// (refuse, CONNACK 0x88) or `open` (admit).
    pub fail: FailPolicy,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            url: String::new(),
            acl_url: String::new(),
            timeout_ms: 2000,
            allow_cache_secs: 300,
            deny_cache_secs: 30,
            max_concurrent: 64,
            fail: FailPolicy::Closed,
        }
    }
}

/// What a failed call to an auth service means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailPolicy {
    /// Refuse.
    #[default]
    Closed,
    /// Admit.
    Open,
}

/// `[auth.jwt]`: clients that send a JWT as their password. Off unless a
/// key is given (`secret`, `public_key_file` or `jwks_file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256's shared secret.
    pub secret: String,
    /// A PEM public key (RSA for RS256, P-256 for ES256). SIGHUP reloads it.
    pub public_key_file: String,
    /// A JWKS file: the key is picked by the token's `kid`. SIGHUP reloads it.
    pub jwks_file: String,
    /// Algorithms accepted (of HS256, RS256, ES256).
    pub algorithms: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: String,
    /// Required `aud` (one of the token's), when set.
    pub audience: String,
    /// The claim that names the user. A client that sends a user name must
    /// send this one; its ACL rules see it as `%u`.
    pub username_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim that may carry ACL rules for the connection: a list of
    /// strings in the ACL file's syntax, tried before the ACL file.
    pub acl_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
            issuer: String::new(),
            audience: String::new(),
            username_claim: "sub".into(),
            leeway_secs: 30,
            acl_claim: "acl".into(),
        }
    }
}

impl JwtConfig {
    /// Whether a key is configured.
    pub fn enabled(&self) -> bool {
        !self.secret.is_empty() || !self.public_key_file.is_empty() || !self.jwks_file.is_empty()
    }
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
            ban_after_failures: 20,
            ban_window_secs: 60,
            ban_secs: 300,
            jwt: JwtConfig::default(),
            http: HttpAuthConfig::default(),
            chain: Vec::new(),
            listener_chains: Default::default(),
            sys_readers: Vec::new(),
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
