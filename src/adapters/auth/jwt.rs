//! `[auth.jwt]`: a client whose password is a JWT is admitted on the
//! token's signature (HS256, RS256 or ES256) and claims (`exp`, `nbf`,
//! `iss`, `aud`); every other client passes to the next authenticator of
//! the listener's chain. A list of ACL rules in `acl_claim` applies to the
//! connection (see [`crate::auth::Grants`]).
//!
//! Verification runs on the core: a signature check costs microseconds
//! (HS256) to some tens of microseconds (RS256, ES256), like a TLS
//! handshake's share of work, with no I/O. Keys come from the
//! configuration or files read at start and on SIGHUP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::acl::AclRules;
use crate::auth::{Authenticator, Credentials, Grants, Verdict};
use crate::codec::reason;
use crate::config::{AclDefault, JwtConfig};
use crate::stats::Figure;

/// The keys a token may be signed with.
struct Keys {
    secret: Option<DecodingKey>,
    /// From `public_key_file`: (key, the algorithm family it serves).
    public: Option<(DecodingKey, Algorithm)>,
    jwks: Option<JwkSet>,
}

/// Why the JWT keys could not be loaded.
#[derive(Debug)]
pub struct JwtSetupError(pub String);

impl std::fmt::Display for JwtSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn load(cfg: &JwtConfig) -> Result<Keys, JwtSetupError> {
    let public = if cfg.public_key_file.is_empty() {
        None
    } else {
        let pem = std::fs::read(&cfg.public_key_file).map_err(|e| {
            JwtSetupError(format!(
                "auth.jwt.public_key_file {}: {e}",
                cfg.public_key_file
            ))
        })?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .map(|k| (k, Algorithm::RS256))
            .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
            .map_err(|e| {
                JwtSetupError(format!(
                    "auth.jwt.public_key_file {}: neither an RSA nor an EC public key in PEM: {e}",
                    cfg.public_key_file
                ))
            })?;
        Some(key)
    };
    let jwks = if cfg.jwks_file.is_empty() {
        None
    } else {
        let text = std::fs::read(&cfg.jwks_file)
            .map_err(|e| JwtSetupError(format!("auth.jwt.jwks_file {}: {e}", cfg.jwks_file)))?;
        Some(serde_json::from_slice(&text).map_err(|e| {
            JwtSetupError(format!(
                "auth.jwt.jwks_file {}: not a JWKS: {e}",
                cfg.jwks_file
            ))
        })?)
    };
    Ok(Keys {
        secret: (!cfg.secret.is_empty()).then(|| DecodingKey::from_secret(cfg.secret.as_bytes())),
        public,
        jwks,
    })
}

/// Whether a password is shaped like a JWT (three base64url parts, a JSON
/// header): only those are this authenticator's.
fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ") && password.iter().filter(|&&b| b == b'.').count() == 2
}

/// Admits clients by JWT; others pass.
pub struct JwtAuthenticator {
    cfg: JwtConfig,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<Keys>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    allowed: std::sync::atomic::AtomicU64,
    denied: std::sync::atomic::AtomicU64,
}

impl JwtAuthenticator {
    /// Loads the keys.
    pub fn new(cfg: &JwtConfig) -> Result<Self, JwtSetupError> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| match a.as_str() {
                "HS256" => Ok(Algorithm::HS256),
                "RS256" => Ok(Algorithm::RS256),
                "ES256" => Ok(Algorithm::ES256),
                other => Err(JwtSetupError(format!(
                    "auth.jwt.algorithms: {other} is not one of HS256, RS256, ES256"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtAuthenticator {
            cfg: cfg.clone(),
            algorithms,
            keys: ArcSwap::from_pointee(load(cfg)?),
            counts: Counts::default(),
        })
    }

    /// Reads the key files again; on failure the previous keys stay.
    pub fn reload(&self) -> Result<String, JwtSetupError> {
        let keys = load(&self.cfg)?;
        let n = keys.jwks.as_ref().map_or(0, |j| j.keys.len());
        self.keys.store(Arc::new(keys));
        Ok(format!("JWT keys reloaded ({n} in the JWKS)"))
    }

    /// The verdict on one token for a client that gave `username`: what
    /// its claims grant.
    fn decide(&self, token: &str, username: Option<&str>) -> Result<Grants, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "a malformed token")?;
        if !self.algorithms.contains(&header.alg) {
            return Err("an algorithm not accepted");
        }
        let keys = self.keys.load();
        let jwk_key;
        let key = match header.alg {
            Algorithm::HS256 => keys.secret.as_ref().ok_or("no secret for HS256")?,
            alg => {
                let from_jwks = keys
                    .jwks
                    .as_ref()
                    .and_then(|set| match &header.kid {
                        Some(kid) => set.find(kid),
                        None => set.keys.first(),
                    })
                    .and_then(|jwk| DecodingKey::from_jwk(jwk).ok());
                match (from_jwks, &keys.public) {
                    (Some(k), _) => {
                        jwk_key = k;
                        &jwk_key
                    }
                    (None, Some((k, family))) if *family == alg => k,
                    _ => return Err("no key for the token"),
                }
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway_secs;
        v.validate_nbf = true;
        if !self.cfg.issuer.is_empty() {
            v.set_issuer(&[&self.cfg.issuer]);
        }
        if self.cfg.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.cfg.audience]);
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
            .map_err(|_| "a bad signature, or exp, nbf, iss or aud")?;
        let claimed = data
            .claims
            .get(&self.cfg.username_claim)
            .and_then(|c| c.as_str())
            .ok_or("no user name claim")?;
        if username.is_some_and(|u| u != claimed) {
            return Err("a user name other than the token's");
        }
        let rules = match data.claims.get(&self.cfg.acl_claim) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(lines)) => {
                let lines: Option<Vec<&str>> = lines.iter().map(|l| l.as_str()).collect();
                let lines = lines.ok_or("an ACL claim that is not a list of strings")?;
                Some(
                    AclRules::parse_lines(lines, AclDefault::Deny)
                        .map_err(|_| "an ACL claim with a rule that does not parse")?,
                )
            }
            Some(_) => return Err("an ACL claim that is not a list of strings"),
        };
        Ok(Grants {
            rules,
            username: username.is_none().then(|| claimed.to_string()),
            ..Grants::default()
        })
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(token) = who.password.filter(|p| looks_like_jwt(p)) else {
            return Verdict::Pass;
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return Verdict::Pass;
        };
        match self.decide(token, who.username) {
            Ok(grants) => {
                self.counts.allowed.fetch_add(1, Relaxed);
                grants.into_verdict()
            }
            Err(why) => {
                self.counts.denied.fetch_add(1, Relaxed);
                tracing::debug!(client = who.client_id, peer = %who.peer, "JWT refused: {why}");
                Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD)
            }
        }
    }

    fn figures(&self) -> Vec<Figure> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (
                "auth_jwt_allowed",
                "CONNECTs admitted by their JWT.",
                self.counts.allowed.load(Relaxed),
                true,
            ),
            (
                "auth_jwt_denied",
                "CONNECTs whose JWT was refused (signature, exp, nbf, iss, aud, user name, ACL claim).",
                self.counts.denied.load(Relaxed),
                true,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwt_shaped_passwords_are_taken() {
        assert!(looks_like_jwt(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig"));
        assert!(!looks_like_jwt(b"hunter2"));
        assert!(!looks_like_jwt(b"eyJ.only-one-dot"));
    }
}
