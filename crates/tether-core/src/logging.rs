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

/// How often a repeating warning is written at most: the first at once,
/// then at most one line per interval, which counts those held back.
pub const REPEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One warning site that can fire many times a second (a Kafka broker that
/// is down reports every reconnect attempt): the log gets its first line,
/// then one per [`REPEAT_EVERY`] with `held_back`, instead of a line per
/// event. Each site has its own (a `static`).
pub struct Throttle {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// A site that has not warned yet.
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to write the warning now: `Some(n)` with the number held
    /// back since the last line written, or `None` (counted, held back).
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < REPEAT_EVERY => {
                s.1 += 1;
                None
            }
            _ => {
                s.0 = Some(now);
                Some(std::mem::take(&mut s.1))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_warning_is_written_once_per_interval_with_a_count() {
        let t = Throttle::new();
        assert_eq!(t.admit(), Some(0), "the first at once");
        for _ in 0..99 {
            assert_eq!(t.admit(), None);
        }
        *t.state.lock().unwrap() = (Some(std::time::Instant::now() - REPEAT_EVERY), 99);
        assert_eq!(t.admit(), Some(99), "then one line with the count");
        assert_eq!(t.admit(), None);
    }

    /// The engine logs under `tether_core::…` and the rest of the gateway
    /// under `tether::…`; README's filter `tether=debug` must reach both
    /// (a directive's target is a prefix of the event's), and
    /// `tether::adapters=debug` only the adapters.
    #[test]
    fn the_filter_tether_covers_the_engine_crate_too() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let seen = |spec: &str| {
            let lines = Lines::default();
            let out = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(spec))
                .with_writer(move || out.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(target: "tether_core::shard::takeover", "engine");
                tracing::debug!(target: "tether::adapters::redis", "adapter");
            });
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            (text.contains("engine"), text.contains("adapter"))
        };
        assert_eq!(seen("info,tether=debug"), (true, true));
        assert_eq!(seen("info,tether::adapters=debug"), (false, true));
        assert_eq!(seen("info,tether_core::shard=debug"), (true, false));
        assert_eq!(seen("info"), (false, false));
    }
}
