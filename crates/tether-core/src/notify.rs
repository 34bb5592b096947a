//! A single-waiter wake-up flag for tasks of one core (not `Send`: a core's
//! tasks share it through `Rc`). Used for the router queues, the wheel's
//! first timer and the end of a shutdown drain.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Set by [`Notify::notify`], consumed by the one task awaiting
/// [`Notify::wait`]. A notification with nobody waiting is kept, so a
/// waiter never misses one that came first.
#[derive(Default)]
pub struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Sets the flag and wakes the waiter, if any.
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Forgets a notification nobody waited for (its cause was dealt with
    /// already).
    pub fn clear(&self) {
        self.flag.set(false);
    }

    /// Resolves once the flag is set, and clears it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
