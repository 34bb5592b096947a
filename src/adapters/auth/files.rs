//! `[auth]` made into seams: the listeners' [`AuthChain`](crate::auth::AuthChain) of the users
//! file's [`FileAuthenticator`], the [`JwtAuthenticator`] and the
//! [`HttpAuthenticator`](super::http::HttpAuthenticator); the [`Policy`]
//! of the ACL file and the HTTP authorizer; and their reload on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use super::http::HttpService;
use super::jwt::JwtAuthenticator;
use super::policy::Policy;
use super::users::{FileAuthenticator, Users};
use crate::auth::acl::AclRules;
use crate::auth::AuthChain;
use crate::auth::{Authenticator, Authorizer, DenyLists, Permit};
use crate::config::{AclDefault, AuthConfig, Config};
use crate::error::{Classify, Origin};
use crate::id::TRANSPORT_NAMES;

/// Why `[auth]` could not be set up.
#[derive(Debug)]
pub struct AuthSetupError {
    /// The file (or section), as configured.
    pub file: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

impl std::fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.why)
    }
}

impl std::error::Error for AuthSetupError {}

impl Classify for AuthSetupError {
    fn origin(&self) -> Origin {
        Origin::Config
    }
}

fn setup_error(section: &str, why: impl Into<String>) -> AuthSetupError {
    AuthSetupError {
        file: PathBuf::from(section),
        why: why.into(),
    }
}

/// The authenticators a chain can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jwt,
    File,
    Http,
}

impl Kind {
    /// The default chain's order.
    const ALL: [Kind; 3] = [Kind::Jwt, Kind::File, Kind::Http];

    fn name(self) -> &'static str {
        match self {
            Kind::Jwt => "jwt",
            Kind::File => "file",
            Kind::Http => "http",
        }
    }

    fn configured(self, a: &AuthConfig) -> bool {
        match self {
            Kind::Jwt => a.jwt.enabled(),
            Kind::File => !a.users_file.is_empty(),
            Kind::Http => !a.http.url.is_empty(),
        }
    }

    /// What must be set for the name to mean something.
    fn needs(self) -> &'static str {
        match self {
            Kind::Jwt => "auth.jwt.secret, public_key_file or jwks_file",
            Kind::File => "auth.users_file",
            Kind::Http => "auth.http.url",
        }
    }
}

/// Each listener's chain by kind, from `chain` and `listener_chains`.
fn chains(a: &AuthConfig) -> Result<[Vec<Kind>; TRANSPORT_NAMES.len()], AuthSetupError> {
    let parse = |key: &str, names: &[String]| -> Result<Vec<Kind>, AuthSetupError> {
        let mut out = Vec::new();
        for n in names {
            let k = Kind::ALL
                .into_iter()
                .find(|k| k.name() == n)
                .ok_or_else(|| setup_error(key, format!("{n} is not one of jwt, file, http")))?;
            if !k.configured(a) {
                return Err(setup_error(
                    key,
                    format!("{n} is named but {} is not set", k.needs()),
                ));
            }
            if out.contains(&k) {
                return Err(setup_error(key, format!("{n} is named twice")));
            }
            out.push(k);
        }
        Ok(out)
    };
    let default = if a.chain.is_empty() {
        Kind::ALL.into_iter().filter(|k| k.configured(a)).collect()
    } else {
        parse("auth.chain", &a.chain)?
    };
    for name in a.listener_chains.keys() {
        if !TRANSPORT_NAMES.contains(&name.as_str()) {
            return Err(setup_error(
                "auth.listener_chains",
                format!("{name} is not a listener (mqtt, ws, mqtts, wss)"),
            ));
        }
    }
    let mut out: [Vec<Kind>; TRANSPORT_NAMES.len()] = Default::default();
    for (t, chain) in TRANSPORT_NAMES.iter().zip(out.iter_mut()) {
        *chain = match a.listener_chains.get(*t) {
            Some(names) => parse(&format!("auth.listener_chains.{t}"), names)?,
            None => default.clone(),
        };
    }
    Ok(out)
}

/// One line for the banner: each listener's chain and the authorizer.
pub fn describe(cfg: &Config) -> String {
    let a = &cfg.auth;
    let Ok(chains) = chains(a) else {
        return "(not valid, see the error)".into();
    };
    let mut parts: Vec<String> = Vec::new();
    let same = chains.iter().all(|c| *c == chains[0]);
    let show = |c: &Vec<Kind>| {
        if c.is_empty() {
            "anyone".to_string()
        } else {
            c.iter().map(|k| k.name()).collect::<Vec<_>>().join(" → ")
        }
    };
    if same {
        parts.push(format!("connect: {}", show(&chains[0])));
    } else {
        for (t, c) in TRANSPORT_NAMES.iter().zip(&chains) {
            parts.push(format!("{t}: {}", show(c)));
        }
    }
    if a.allow_anonymous {
        parts.push("anonymous allowed".into());
    }
    let mut authz = Vec::new();
    if !a.acl_file.is_empty() {
        authz.push(format!("acl {}", a.acl_file));
    }
    if !a.http.acl_url.is_empty() {
        authz.push("http".into());
    }
    if authz.is_empty() {
        parts.push("publish/subscribe: deny lists only".into());
    } else {
        let default = match a.acl_default {
            AclDefault::Deny => "deny",
            AclDefault::Allow => "allow",
        };
        parts.push(format!(
            "publish/subscribe: {} (else {default})",
            authz.join(" → ")
        ));
    }
    parts.join("; ")
}

/// The files `[auth]` names, and the seams they feed (for reloading).
#[derive(Default)]
pub struct AuthFiles {
    users: Option<(PathBuf, Arc<FileAuthenticator>)>,
    jwt: Option<Arc<JwtAuthenticator>>,
    acl: Option<(AclDefault, Arc<Policy>)>,
    /// The policy `[auth]` built (absent when a custom authorizer was
    /// injected): its deny lists follow `mqtt.deny_*` on SIGHUP.
    policy: Option<Arc<Policy>>,
}

/// The seams `[auth]` asks for.
pub struct AuthSetup {
    /// Decides CONNECTs, per listener.
    pub chain: AuthChain,
    /// Decides PUBLISH and SUBSCRIBE: the [`Policy`].
    pub authorizer: Arc<dyn Authorizer>,
    /// What SIGHUP reloads.
    pub files: Arc<AuthFiles>,
}

fn read(path: &PathBuf) -> Result<String, AuthSetupError> {
    std::fs::read_to_string(path).map_err(|e| AuthSetupError {
        file: path.clone(),
        why: format!("cannot read it: {e}"),
    })
}

fn users(path: &PathBuf) -> Result<Users, AuthSetupError> {
    Users::parse(&read(path)?).map_err(|e| AuthSetupError {
        file: path.clone(),
        why: e.to_string(),
    })
}

fn rules(path: &PathBuf, default: AclDefault) -> Result<AclRules, AuthSetupError> {
    AclRules::parse(&read(path)?, default).map_err(|e| AuthSetupError {
        file: path.clone(),
        why: e.to_string(),
    })
}

impl AuthSetup {
    /// Reads the configured files and starts the threads the configured
    /// authenticators need (nothing configured: admit everyone, deny lists
    /// only).
    pub fn from_config(cfg: &Config) -> Result<AuthSetup, AuthSetupError> {
        let a = &cfg.auth;
        let kinds = chains(a)?;
        let mut files = AuthFiles::default();
        let http = if a.http.url.is_empty() && a.http.acl_url.is_empty() {
            None
        } else {
            let service = HttpService::start(&a.http, a.acl_default).map_err(|e| {
                setup_error(
                    "[auth.http]",
                    format!("cannot start the tether-auth-http thread: {e}"),
                )
            })?;
            Some(service)
        };
        // Each configured authenticator once, in the default order; the
        // chains point into this list.
        let mut all: Vec<Arc<dyn Authenticator>> = Vec::new();
        let mut position = [None; Kind::ALL.len()];
        for (slot, kind) in Kind::ALL.into_iter().enumerate() {
            if !kinds.iter().flatten().any(|k| *k == kind) {
                continue;
            }
            let auth: Arc<dyn Authenticator> = match kind {
                Kind::Jwt => {
                    let jwt = JwtAuthenticator::new(&a.jwt)
                        .map_err(|e| setup_error("[auth.jwt]", e.to_string()))?;
                    let jwt = Arc::new(jwt);
                    files.jwt = Some(jwt.clone());
                    jwt
                }
                Kind::File => {
                    let path = PathBuf::from(&a.users_file);
                    let auth =
                        FileAuthenticator::new(users(&path)?, a).map_err(|e| AuthSetupError {
                            file: path.clone(),
                            why: format!("cannot start the tether-auth thread: {e}"),
                        })?;
                    let auth = Arc::new(auth);
                    files.users = Some((path, auth.clone()));
                    auth
                }
                Kind::Http => Arc::new(
                    http.as_ref()
                        .expect("started above: auth.http.url is set")
                        .authenticator(),
                ),
            };
            position[slot] = Some(all.len() as u8);
            all.push(auth);
        }
        let chains = kinds.map(|kinds| {
            kinds
                .iter()
                .filter_map(|k| position[Kind::ALL.iter().position(|x| x == k).unwrap_or(0)])
                .collect()
        });
        let chain = AuthChain::new(all, chains, a.allow_anonymous);
        let default = match a.acl_default {
            AclDefault::Allow => Permit::Allow,
            AclDefault::Deny => Permit::Deny,
        };
        let mut policy =
            Policy::new(DenyLists::from_config(&cfg.mqtt)).with_sys_readers(a.sys_readers.clone());
        if !a.acl_file.is_empty() {
            let path = PathBuf::from(&a.acl_file);
            let r = rules(&path, a.acl_default)?;
            policy = policy.with_file(path, r, default);
        }
        if let Some(h) = http.as_ref().filter(|_| !a.http.acl_url.is_empty()) {
            policy = policy.with_http(h.authorizer(), default);
        }
        let policy = Arc::new(policy);
        if policy.file().is_some() {
            files.acl = Some((a.acl_default, policy.clone()));
        }
        files.policy = Some(policy.clone());
        Ok(AuthSetup {
            chain,
            authorizer: policy,
            files: Arc::new(files),
        })
    }
}

impl AuthFiles {
    /// Reads the files again and puts what parses in place; a file that
    /// does not parse leaves the previous rules in force. One line per
    /// file, saying what happened. Existing subscriptions are not checked
    /// again: new rules apply to what clients ask from now on.
    pub fn reload(&self) -> Vec<Result<String, AuthSetupError>> {
        let mut out = Vec::new();
        if let Some((path, auth)) = &self.users {
            out.push(users(path).map(|u| {
                let n = u.len();
                auth.replace(u);
                format!("{}: {n} users", path.display())
            }));
        }
        if let Some(jwt) = &self.jwt {
            out.push(
                jwt.reload()
                    .map_err(|e| setup_error("[auth.jwt]", e.to_string())),
            );
        }
        if let Some((default, policy)) = &self.acl {
            if let Some(path) = policy.file() {
                out.push(rules(path, *default).map(|r| {
                    let n = r.len();
                    policy.replace_rules(r);
                    format!("{}: {n} rules", path.display())
                }));
            }
        }
        out
    }

    /// Puts `mqtt.deny_*` from `mqtt` in force; `false` when the node
    /// runs a custom authorizer, which has no such lists.
    pub fn replace_deny_lists(&self, mqtt: &crate::config::MqttConfig) -> bool {
        match &self.policy {
            Some(p) => {
                p.replace_deny_lists(DenyLists::from_config(mqtt));
                true
            }
            None => false,
        }
    }

    /// Whether any file is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_none() && self.acl.is_none() && self.jwt.is_none()
    }
}
