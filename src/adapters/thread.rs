//! The skeleton every adapter's thread shares: a named OS thread, the
//! current-thread tokio runtime it drives when its work awaits, and a
//! handle the adapter's `stop` joins, once.
//!
//! An adapter keeps the rest as its own: its job queue (a crossbeam
//! channel for a thread that blocks on it, a tokio one for a thread that
//! awaits), what it asks its thread to stop, and its figures. The thread is
//! the part that was written five times.

use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tracing::error;

/// An adapter's thread.
pub(crate) struct Worker {
    name: &'static str,
    handle: Mutex<Option<JoinHandle<()>>>,
}

/// A current-thread runtime with I/O and timers, for a thread whose work
/// awaits. Build it before [`Worker::drive`] when something must be made
/// inside it first (rdkafka's stream consumers).
pub(crate) fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl Worker {
    /// A thread named `name` that runs `body`, a loop over its job queue.
    pub fn spawn(name: &'static str, body: impl FnOnce() + Send + 'static) -> io::Result<Worker> {
        let handle = std::thread::Builder::new().name(name.into()).spawn(body)?;
        Ok(Worker {
            name,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// A thread named `name` that drives `task` to its end on `rt`.
    pub fn drive(
        name: &'static str,
        rt: Runtime,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<Worker> {
        Worker::spawn(name, move || rt.block_on(task))
    }

    /// A thread named `name` that builds its runtime and then its task
    /// there, and drives it on a `LocalSet`: for work that shares `Rc`s
    /// between its tasks. A runtime that cannot be built is logged and the
    /// thread ends.
    pub fn drive_local<F, Fut>(name: &'static str, make: F) -> io::Result<Worker>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Worker::spawn(name, move || match runtime() {
            Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, make()),
            Err(e) => error!("the {name} thread cannot start its runtime: {e}"),
        })
    }

    /// Waits for the thread to end (the adapter told it to stop first). A
    /// second call returns at once.
    pub fn join(&self) {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                error!("the {} thread panicked", self.name);
            }
        }
    }
}
