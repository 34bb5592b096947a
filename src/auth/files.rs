//! `[auth]` made into seams: the users file's [`FileAuthenticator`] and
//! the ACL file's [`AclAuthorizer`], and their reload on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use super::acl::{AclAuthorizer, AclRules};
use super::jwt::JwtAuthenticator;
use super::users::{FileAuthenticator, Users};
use super::{AllowAll, Authenticator, Authorizer, Credentials, DenyLists, Verdict};
use crate::codec::reason;
use crate::config::{AclDefault, Config};
use crate::error::{Classify, Origin};

/// Why `[auth]` could not be set up.
#[derive(Debug)]
pub struct AuthSetupError {
    /// The file, as configured.
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

/// The files `[auth]` names, and the seams they feed (for reloading).
#[derive(Default)]
pub struct AuthFiles {
    users: Option<(PathBuf, Arc<FileAuthenticator>)>,
    jwt: Option<Arc<JwtAuthenticator>>,
    acl: Option<(PathBuf, AclDefault, Arc<AclAuthorizer>)>,
}

/// The seams `[auth]` asks for.
pub struct AuthSetup {
    /// Decides CONNECTs: the users file's, or [`AllowAll`].
    pub authenticator: Arc<dyn Authenticator>,
    /// Decides PUBLISH and SUBSCRIBE: the ACL file with the deny lists, or
    /// the deny lists alone.
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
    /// Reads the configured files (none: admit everyone, deny lists only).
    pub fn from_config(cfg: &Config) -> Result<AuthSetup, AuthSetupError> {
        let a = &cfg.auth;
        let mut files = AuthFiles::default();
        if !a.http.url.is_empty() && !a.users_file.is_empty() {
            return Err(AuthSetupError {
                file: PathBuf::from(&a.users_file),
                why: "auth.users_file and auth.http.url both decide who connects: set one".into(),
            });
        }
        let authenticator: Arc<dyn Authenticator> = if !a.http.url.is_empty() {
            let http =
                super::http::HttpAuthenticator::new(&a.http).map_err(|e| AuthSetupError {
                    file: PathBuf::from("[auth.http]"),
                    why: format!("cannot start the tether-auth-http thread: {e}"),
                })?;
            Arc::new(http)
        } else if a.users_file.is_empty() && a.jwt.enabled() {
            // Tokens only: a client without one is anonymous, or refused.
            Arc::new(NoUsers {
                allow_anonymous: a.allow_anonymous,
            })
        } else if a.users_file.is_empty() {
            Arc::new(AllowAll)
        } else {
            let path = PathBuf::from(&a.users_file);
            let auth = FileAuthenticator::new(users(&path)?, a).map_err(|e| AuthSetupError {
                file: path.clone(),
                why: format!("cannot start the tether-auth thread: {e}"),
            })?;
            let auth = Arc::new(auth);
            files.users = Some((path, auth.clone()));
            auth
        };
        let authenticator: Arc<dyn Authenticator> = if a.jwt.enabled() {
            let jwt = JwtAuthenticator::new(&a.jwt, authenticator).map_err(|e| AuthSetupError {
                file: PathBuf::from("[auth.jwt]"),
                why: e.to_string(),
            })?;
            let jwt = Arc::new(jwt);
            files.jwt = Some(jwt.clone());
            jwt
        } else {
            authenticator
        };
        let deny = DenyLists::from_config(&cfg.mqtt);
        let authorizer: Arc<dyn Authorizer> = if a.acl_file.is_empty() {
            Arc::new(deny)
        } else {
            let path = PathBuf::from(&a.acl_file);
            let authz = Arc::new(AclAuthorizer::new(rules(&path, a.acl_default)?, deny));
            files.acl = Some((path, a.acl_default, authz.clone()));
            authz
        };
        Ok(AuthSetup {
            authenticator,
            authorizer,
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
            out.push(jwt.reload().map_err(|e| AuthSetupError {
                file: PathBuf::from("[auth.jwt]"),
                why: e.to_string(),
            }));
        }
        if let Some((path, default, authz)) = &self.acl {
            out.push(rules(path, *default).map(|r| {
                let n = r.len();
                authz.replace(r);
                format!("{}: {n} rules", path.display())
            }));
        }
        out
    }

    /// Whether any file is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_none() && self.acl.is_none() && self.jwt.is_none()
    }
}

/// With JWTs and no users file: what a client without a token gets.
struct NoUsers {
    allow_anonymous: bool,
}

impl Authenticator for NoUsers {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        match (who.username, who.password) {
            (None, None) if self.allow_anonymous => Verdict::Allow,
            (None, None) => Verdict::Deny(reason::NOT_AUTHORIZED),
            _ => Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD),
        }
    }
}
