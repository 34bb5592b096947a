//! Logging: the `tracing` subscriber the binary installs, with a filter
//! that can be changed while running (`PUT /v1/admin/log-level`, and
//! `log.level` on SIGHUP) without a restart.
//!
//! The filter sits behind a `tracing_subscriber::reload` layer; its handle
//! is kept here once [`init`] ran. A process that did not call it (the
//! integration tests, an embedding program) has no live filter to change:
//! [`set`] then says so.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The live filter and the text it was made from.
struct Live {
    handle: reload::Handle<EnvFilter, Registry>,
    spec: Mutex<String>,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// Installs the subscriber: `RUST_LOG` if set, else `level`; JSON lines or
/// plain text (colours only on a terminal).
pub fn init(level: &str, json: bool) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_thread_names(true);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    let _ = LIVE.set(Live {
        handle,
        spec: Mutex::new(spec),
    });
}

/// Why the filter was not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Not a filter (`info`, `tether=debug,warn`, ...): the parser's words.
    Invalid(String),
    /// This process did not install the subscriber ([`init`]).
    NotManaged,
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetError::Invalid(why) => write!(
                f,
                "not a log filter ({why}); e.g. info, debug, tether=debug,warn"
            ),
            SetError::NotManaged => {
                f.write_str("this process does not manage its logging (the tether binary does)")
            }
        }
    }
}

/// Replaces the filter; returns the previous one.
pub fn set(spec: &str) -> Result<String, SetError> {
    let filter = EnvFilter::try_new(spec).map_err(|e| SetError::Invalid(e.to_string()))?;
    let live = LIVE.get().ok_or(SetError::NotManaged)?;
    live.handle
        .reload(filter)
        .map_err(|_| SetError::NotManaged)?;
    let mut current = live.spec.lock().unwrap_or_else(|p| p.into_inner());
    Ok(std::mem::replace(&mut *current, spec.to_string()))
}

/// The filter in force, when this process manages its logging.
pub fn current() -> Option<String> {
    let live = LIVE.get()?;
    let spec = live.spec.lock().unwrap_or_else(|p| p.into_inner());
    Some(spec.clone())
}
