//! The authentication and authorization adapters that `[auth]` configures,
//! each implementing a port of [`crate::auth`]:
//!
//! | file | concern |
//! | --- | --- |
//! | `users.rs` | the users file (`auth.users_file`): argon2id hashes, checked on the `tether-auth` thread |
//! | `jwt.rs` | `[auth.jwt]`: tokens verified on the core (ring), ACL rules from a claim |
//! | `http.rs` | `[auth.http]`: the business's auth service, asked from the `tether-auth-http` thread |
//! | `cache.rs` | the verdict cache the slow authenticators share with the cores |
//! | `policy.rs` | [`Policy`], the authorizer: deny lists, grants, the ACL file, the HTTP authorizer |
//! | `files.rs` | `[auth]` made into the listeners' chains and the policy ([`AuthSetup`]), and their SIGHUP reload ([`AuthFiles`]) |

mod cache;
mod files;
pub mod http;
pub mod jwt;
mod policy;
pub mod users;

pub use files::{describe, AuthFiles, AuthSetup, AuthSetupError};
pub use policy::Policy;
