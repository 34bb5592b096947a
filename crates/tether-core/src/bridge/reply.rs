//! Answers from bridge threads back to the core that asked.
//!
//! A core never waits on another thread. When a seam (the authenticator,
//! the authorizer, the session store, the outbound bridge) cannot answer at
//! once, the core records what is waiting in its table of pending requests
//! and hands the seam a [`ReplyTo`]: a one-shot handle that puts the answer
//! on the core's reply queue for that kind of answer and rings the core's
//! doorbell. The core's inbox task then drains the queue and resumes what
//! waited.
//!
//! Exactly one answer arrives per handle: [`ReplyTo::send`] consumes it,
//! and a handle dropped unanswered (a bridge thread that gave up or died)
//! sends the answer type's [`Unanswered::unanswered`] value instead. So a
//! pending request always ends, and its slot in the core's bounded table is
//! always freed. The queues themselves are unbounded channels, bounded in
//! practice by those tables: a core only hands out as many handles as it
//! has slots.

use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// The write end of a core's doorbell: a non-blocking Unix socket whose
/// read end the core's inbox task awaits.
///
/// A ring writes a byte only when no ring is outstanding: under load a
/// bridge thread answers thousands of requests between two drains of the
/// core, and a `write` per answer cost a system call each (per Kafka
/// delivery report, per Redis reply) for wake-ups the core did not need.
#[derive(Debug)]
pub struct Bell {
    tx: StdUnixStream,
    /// A byte was written and the core has not yet begun the drain that
    /// serves it. Set by senders, cleared by the core ([`Bell::answer`]).
    rung: AtomicBool,
}

impl Bell {
    /// Wraps the write end (made non-blocking here).
    pub fn new(tx: StdUnixStream) -> std::io::Result<Bell> {
        tx.set_nonblocking(true)?;
        Ok(Bell {
            tx,
            rung: AtomicBool::new(false),
        })
    }

    /// Wakes the core's inbox task, after the caller queued its message.
    /// Nothing to write while a ring is outstanding: the core drains every
    /// queue after [`Bell::answer`], so it will see this message. A full
    /// socket (WouldBlock) means the bell already holds unread bytes.
    pub fn ring(&self) {
        // AcqRel: the core's `answer` swap reads this write (or a later
        // one of the same release sequence), so the message queued before
        // it is visible to the drain that follows.
        if !self.rung.swap(true, Ordering::AcqRel) {
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// The core woke on the bell and is about to drain its queues: rings
    /// from now on write again.
    pub fn answer(&self) {
        self.rung.swap(false, Ordering::AcqRel);
    }
}

/// An answer type with a value for "nobody answered".
pub trait Unanswered: Send + 'static {
    /// The answer a dropped [`ReplyTo`] delivers.
    fn unanswered() -> Self;
}

/// The sending side of one core's reply queue for answers of type `T`.
pub struct ReplyQueue<T> {
    tx: Sender<(u32, T)>,
    bell: Arc<Bell>,
}

impl<T: Unanswered> ReplyQueue<T> {
    /// A queue ringing `bell`, and the receiver the core drains.
    pub fn new(bell: Arc<Bell>) -> (ReplyQueue<T>, Receiver<(u32, T)>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (ReplyQueue { tx, bell }, rx)
    }

    /// The handle for the pending request `token`.
    pub fn reply_to(&self, token: u32) -> ReplyTo<T> {
        ReplyTo {
            token,
            tx: Some(self.tx.clone()),
            bell: self.bell.clone(),
        }
    }
}

/// Where the answer to one pending request goes; see the module docs.
/// `Send`, so a seam can move it to its own thread.
pub struct ReplyTo<T: Unanswered> {
    token: u32,
    tx: Option<Sender<(u32, T)>>,
    bell: Arc<Bell>,
}

impl<T: Unanswered> ReplyTo<T> {
    /// Delivers the answer and wakes the core.
    pub fn send(mut self, answer: T) {
        self.deliver(answer);
    }

    fn deliver(&mut self, answer: T) {
        if let Some(tx) = self.tx.take() {
            // The core's receiver is gone only when the core has stopped;
            // the answer has nobody left to resume.
            if tx.send((self.token, answer)).is_ok() {
                self.bell.ring();
            }
        }
    }
}

impl<T: Unanswered> Drop for ReplyTo<T> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.deliver(T::unanswered());
        }
    }
}

impl<T: Unanswered> std::fmt::Debug for ReplyTo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({})", self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Answer {
        Yes,
        Nobody,
    }

    impl Unanswered for Answer {
        fn unanswered() -> Self {
            Answer::Nobody
        }
    }

    #[test]
    fn one_answer_per_handle_even_when_dropped() {
        let (bell_tx, bell_rx) = StdUnixStream::pair().unwrap();
        bell_rx.set_nonblocking(true).unwrap();
        let (queue, rx) = ReplyQueue::<Answer>::new(Arc::new(Bell::new(bell_tx).unwrap()));
        queue.reply_to(1).send(Answer::Yes);
        let dropped = queue.reply_to(2);
        std::thread::spawn(move || drop(dropped)).join().unwrap();
        assert_eq!(rx.try_recv().unwrap(), (1, Answer::Yes));
        assert_eq!(rx.try_recv().unwrap(), (2, Answer::Nobody));
        assert!(rx.try_recv().is_err(), "nothing more");
        let mut rung = [0u8; 8];
        assert!(std::io::Read::read(&mut &bell_rx, &mut rung).unwrap() >= 1);
    }

    #[test]
    fn a_bell_writes_once_until_the_core_answers() {
        let (bell_tx, bell_rx) = StdUnixStream::pair().unwrap();
        bell_rx.set_nonblocking(true).unwrap();
        let bell = Bell::new(bell_tx).unwrap();
        let bytes = || {
            let mut buf = [0u8; 64];
            std::io::Read::read(&mut &bell_rx, &mut buf).unwrap_or(0)
        };
        for _ in 0..100 {
            bell.ring();
        }
        assert_eq!(bytes(), 1, "one byte for a hundred rings");
        bell.ring();
        assert_eq!(bytes(), 0, "not answered yet: no new byte");
        bell.answer();
        bell.ring();
        assert_eq!(bytes(), 1, "after the core's answer, a ring writes again");
    }
}
