//! The core's connection driver: one task per core that runs every
//! connection's state machine ([`super::conn::ConnTask`]), instead of one
//! glommio task per connection.
//!
//! Why: an idle connection used to cost a glommio task (~320 B) and a
//! pending readiness `Source` in glommio's reactor (~450 B), more than its
//! session state. Here an idle connection costs its slot in [`Driver`]'s
//! slab and one poll request in the core's *readiness ring*, a second
//! io_uring that holds no userspace memory per socket:
//!
//! - **Readable:** a socket whose read would block, or came back short
//!   (it drained the socket), arms a `POLL_ADD(POLLIN | POLLRDHUP)` tagged
//!   with its slot ([`read_drained`]); its completion
//!   marks the slot readable and queues it. The poll is *multishot* (armed
//!   once, it stays) on a ring with deferred task work, and one-shot on the
//!   fallback ring: without deferral every completion on a busy socket was
//!   task work run on the core at the sender's interrupt, which cost 30 %
//!   of the flat-out p2p rate when tried; with it, wake-ups of one socket
//!   coalesce into one completion per pass. A slot that is not readable is
//!   not read: no `recv` that fails with EAGAIN (it was two of every three
//!   `recv`s at low load).
//! - **Writable:** a socket whose send would block arms a one-shot
//!   `POLL_ADD(POLLOUT)` ([`arm_writable`]).
//! - **Woken by the core** (outbox, close, verdict), by a timer or by a
//!   paused flow: the connection's `Waker` is a [`RawWaker`] carrying its
//!   slot id (no allocation), whose `wake` queues the slot on this core's
//!   driver.
//!
//! The driver task waits until the readiness ring has work (its eventfd,
//! or without deferral the ring fd, is readable: awaited through
//! `glommio::net::poll_readable`, a patch in `vendor/glommio`) or a waker
//! queued a slot, then runs passes, each polling every ready connection,
//! until none is left: the executor's wake-up, timer and syscall costs are
//! paid per batch, not per connection. Reads and writes are plain
//! non-blocking `recv`/`send` (what glommio did too, after its poll).
//!
//! Invariant: a connection's waker is woken only on its core's thread (the
//! core, its timers and its flows all live there); the driver is found
//! through a thread-local.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use tracing::{debug, warn};

use super::conn::ConnTask;
use crate::notify::Notify;

/// Submission queue entries of the readiness ring: arming polls for new
/// sockets and writes, and removing them; a full queue is submitted and
/// reused, so this bounds a batch, not the connections.
pub const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries: readiness events waiting to be reaped (one
/// per armed poll at most, so a burst beyond it means more than this many
/// sockets became ready in one pass; the kernel keeps the excess,
/// IORING_FEAT_NODROP). 16,384 × 16 B = 256 KiB per core.
pub const CQ_ENTRIES: u32 = 16_384;
/// Connections polled per pass before the driver yields to the core's
/// other tasks (timers, mesh, inbox), so a busy core stays responsive.
const POLL_BUDGET: usize = 512;
/// Passes the driver runs back to back before it yields to the core's other
/// tasks, when every pass leaves more work: bounds a run to about
/// `POLL_BUDGET × PASSES_PER_RUN` connection polls.
const PASSES_PER_RUN: usize = 4;

/// What a readiness-ring request was for, in the low bits of its user data.
const KIND_BITS: u32 = 2;
const KIND_READ: u64 = 0;
const KIND_WRITE: u64 = 1;
/// Completions of removals: nothing to do.
const KIND_IGNORE: u64 = 2;

/// A connection's identity in the driver: slab index and generation, so a
/// stale completion or wake for a reused slot is ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct SlotId {
    index: u32,
    gen: u32,
}

impl SlotId {
    fn pack(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.index)
    }

    fn unpack(v: u64) -> SlotId {
        SlotId {
            index: v as u32,
            gen: (v >> 32) as u32,
        }
    }

    /// Request user data: the id shifted over the kind bits. Generations
    /// are kept below 2^30 so nothing is lost in the shift.
    fn user_data(self, kind: u64) -> u64 {
        (self.pack() << KIND_BITS) | kind
    }

    fn from_user_data(ud: u64) -> (SlotId, u64) {
        (SlotId::unpack(ud >> KIND_BITS), ud & ((1 << KIND_BITS) - 1))
    }
}

/// One connection in the driver.
struct Slot {
    gen: u32,
    /// Taken out while it is polled (a poll may queue other slots).
    task: Option<ConnTask>,
    /// A POLLIN request is pending (a multishot one stays pending across
    /// its completions).
    read_armed: bool,
    /// Data may be waiting: a readable completion came since the last read
    /// that drained the socket (or the connection is new).
    readable: bool,
    /// A POLLOUT request is pending.
    write_armed: bool,
}

/// The part wakers reach (through the thread-local): slots to poll.
#[derive(Default)]
struct Shared {
    ready: RefCell<VecDeque<SlotId>>,
    /// Per slot index: generation + 1 of the id waiting in `ready`, 0 for
    /// none. Dedupes wakes (a subscriber is woken once per message, and
    /// must be polled once per pass); an entry whose generation does not
    /// match is a stale duplicate and is skipped.
    queued: RefCell<Vec<u32>>,
    /// Per slot index: generation + 1 of the connection living there, 0
    /// for none. A wake for any other generation comes from a waker that
    /// outlived its connection (a tombstone's, a paused flow's) and is
    /// dropped, so it cannot displace a live entry in `queued`.
    live: RefCell<Vec<u32>>,
    /// Wakes the driver task when a slot is queued while it sleeps.
    bell: Notify,
    /// Sockets whose read or write would block during the pass: a
    /// one-shot poll is armed for each (kind) at the end of the pass.
    want: RefCell<Vec<(SlotId, u64)>>,
    /// Connections started during a pass (an HTTP session's, opened by a
    /// request being polled): added once the pass is over.
    spawned: RefCell<Vec<ConnTask>>,
    /// The slot being polled right now (for [`arm_writable`]).
    current: Cell<Option<SlotId>>,
    /// Whether the slot being polled is known to have nothing to read: its
    /// readable poll is pending, or a read this pass came back short (it
    /// drained the socket) and the poll will be armed. A read then returns
    /// `Pending` without a system call: a connection woken to write, or
    /// looping after a short read, would otherwise pay a `recv` that fails
    /// with EAGAIN (two of every three `recv`s at low load, counted).
    drained: Cell<bool>,
}

impl Shared {
    /// Marks slot `id` live (or, with `None`, gone).
    fn set_live(&self, index: u32, gen: Option<u32>) {
        let mut live = self.live.borrow_mut();
        let i = index as usize;
        if live.len() <= i {
            live.resize(i + 1, 0);
        }
        live[i] = gen.map_or(0, |g| g + 1);
    }

    /// Queues `id` unless it is queued already or no longer lives.
    fn enqueue(&self, id: SlotId) {
        let i = id.index as usize;
        if self.live.borrow().get(i).copied() != Some(id.gen + 1) {
            return;
        }
        let mut queued = self.queued.borrow_mut();
        if queued.len() <= i {
            queued.resize(i + 1, 0);
        }
        if queued[i] != id.gen + 1 {
            queued[i] = id.gen + 1;
            self.ready.borrow_mut().push_back(id);
        }
    }

    /// Whether a popped `id` is the live queue entry (then it is cleared).
    fn dequeue(&self, id: SlotId) -> bool {
        let mut queued = self.queued.borrow_mut();
        match queued.get_mut(id.index as usize) {
            Some(q) if *q == id.gen + 1 => {
                *q = 0;
                true
            }
            _ => false,
        }
    }
}

thread_local! {
    /// This core's driver (one executor per thread).
    static SHARED: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
}

/// The driver of one core.
pub struct Driver {
    ring: RefCell<IoUring>,
    /// Signalled by the kernel when the ring's deferred work list becomes
    /// non-empty; `None` on a kernel without deferred task work (the ring
    /// fd itself is awaited then).
    eventfd: Option<OwnedFd>,
    slots: RefCell<Slab<Slot>>,
    shared: Rc<Shared>,
    /// Bumped per slot insert, so reused indices get new generations.
    next_gen: Cell<u32>,
}

/// Counters of one driver, for tests and the run loop.
impl Driver {
    /// A driver for the calling thread's core; its readiness ring.
    ///
    /// The ring defers its completion work to the core
    /// (`IORING_SETUP_DEFER_TASKRUN`): a socket that becomes ready queues
    /// work on the ring instead of interrupting the core (a reschedule IPI
    /// per readiness event when the core is busy, 9 % of its time at low
    /// load in a profile), and the core runs it in one batch at its next
    /// enter. The core hears of new work through an eventfd the kernel
    /// signals when the ring's work list goes from empty to not empty:
    /// once per batch. Kernels before 6.1 lack the flag: the ring is then
    /// a plain one, awaited through its own fd.
    ///
    /// `slots` connections are reserved up front (address space; RSS only
    /// as slots fill), so the slab and its per-slot tables do not grow by
    /// doubling, which would copy them and leave up to half of the last
    /// size resident and unused.
    pub fn new(slots: usize) -> io::Result<Rc<Driver>> {
        // Not COOP_TASKRUN alone: with it the kernel only flags the
        // completion work for the core's next system call instead of waking
        // it, and a core asleep in glommio's wait would never hear of a
        // ready socket. DEFER_TASKRUN has the eventfd for that.
        let deferred = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(SQ_ENTRIES)
            .and_then(|ring| {
                // SAFETY: eventfd(2) takes no pointers; a non-negative
                // return is a new descriptor owned by nothing else.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was just created and is owned here alone.
                let bell = unsafe { OwnedFd::from_raw_fd(fd) };
                ring.submitter().register_eventfd(bell.as_raw_fd())?;
                Ok((ring, bell))
            });
        let (ring, eventfd) = match deferred {
            Ok((ring, bell)) => (ring, Some(bell)),
            Err(e) => {
                debug!("readiness ring without deferred task work ({e}): a plain ring");
                let ring = IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(SQ_ENTRIES)?;
                (ring, None)
            }
        };
        let shared = Rc::new(Shared::default());
        shared.queued.borrow_mut().reserve_exact(slots);
        shared.live.borrow_mut().reserve_exact(slots);
        SHARED.with(|s| *s.borrow_mut() = Some(shared.clone()));
        Ok(Rc::new(Driver {
            ring: RefCell::new(ring),
            eventfd,
            slots: RefCell::new(Slab::with_capacity(slots)),
            shared,
            next_gen: Cell::new(0),
        }))
    }

    /// Connections the driver holds.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes over a connection and polls it once: it reads what the client
    /// sent already, and arms its readable poll when there is nothing.
    pub fn add(&self, task: ConnTask) {
        let gen = (self.next_gen.get() + 1) & ((1 << 30) - 1);
        self.next_gen.set(gen);
        let index = self.slots.borrow_mut().insert(Slot {
            gen,
            task: Some(task),
            read_armed: false,
            write_armed: false,
            readable: true,
        });
        let id = SlotId {
            index: index as u32,
            gen,
        };
        self.shared.set_live(id.index, Some(gen));
        self.queue(id);
    }

    /// Adds the connections [`spawn`] queued during the pass.
    fn add_spawned(&self) {
        let spawned = std::mem::take(&mut *self.shared.spawned.borrow_mut());
        for task in spawned {
            self.add(task);
        }
    }

    /// Queues a new connection's first poll and wakes the driver task.
    fn queue(&self, id: SlotId) {
        self.wake_id(id);
        self.shared.bell.notify();
    }

    /// Queues a submission, submitting first if the queue is full.
    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entries reference no memory (polls and removals by
        // fd and user data), so nothing must outlive the submission.
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            if let Err(e) = ring.submit() {
                warn!("readiness ring: submit failed: {e}");
                return;
            }
        }
    }

    /// Moves completions into the ready queue.
    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        for cqe in ring.completion() {
            let (id, kind) = SlotId::from_user_data(cqe.user_data());
            if kind == KIND_IGNORE {
                continue;
            }
            if let Some(s) = self
                .slots
                .borrow_mut()
                .get_mut(id.index as usize)
                .filter(|s| s.gen == id.gen)
            {
                match kind {
                    KIND_READ => {
                        s.readable = true;
                        // A multishot poll ends (no MORE flag) on an error
                        // or cancellation; it is armed again when drained.
                        s.read_armed &= io_uring::cqueue::more(cqe.flags());
                    }
                    _ => s.write_armed = false,
                }
            }
            self.wake_id(id);
        }
    }

    fn wake_id(&self, id: SlotId) {
        self.shared.enqueue(id);
    }

    /// Polls up to [`POLL_BUDGET`] ready connections.
    fn poll_ready(&self) {
        for _ in 0..POLL_BUDGET {
            let Some(id) = self.shared.ready.borrow_mut().pop_front() else {
                return;
            };
            if !self.shared.dequeue(id) {
                continue;
            }
            let task = self
                .slots
                .borrow_mut()
                .get_mut(id.index as usize)
                .filter(|s| s.gen == id.gen)
                .and_then(|s| s.task.take());
            let Some(mut task) = task else { continue };
            let waker = waker(id);
            let mut cx = Context::from_waker(&waker);
            let readable = self
                .slots
                .borrow()
                .get(id.index as usize)
                .is_some_and(|s| s.readable);
            self.shared.current.set(Some(id));
            self.shared.drained.set(!readable);
            let done = Pin::new(&mut task).poll(&mut cx).is_ready();
            self.shared.current.set(None);
            if done {
                self.remove(id);
                drop(task);
            } else if let Some(slot) = self.slots.borrow_mut().get_mut(id.index as usize) {
                slot.task = Some(task);
                slot.readable = !self.shared.drained.get();
            }
        }
    }

    /// A connection ended: its polls are removed (before the socket closes
    /// with the task, so no completion names a reused slot: the generation
    /// check covers the rest).
    fn remove(&self, id: SlotId) {
        let slot = self.slots.borrow_mut().remove(id.index as usize);
        self.shared.set_live(id.index, None);
        if slot.read_armed {
            self.push(
                opcode::PollRemove::new(id.user_data(KIND_READ))
                    .build()
                    .user_data(KIND_IGNORE),
            );
        }
        if slot.write_armed {
            self.push(
                opcode::PollRemove::new(id.user_data(KIND_WRITE))
                    .build()
                    .user_data(KIND_IGNORE),
            );
        }
    }

    /// Arms a one-shot poll for each socket that would block during the
    /// pass (unless one is pending already).
    fn arm_wanted(&self) {
        let wanted = std::mem::take(&mut *self.shared.want.borrow_mut());
        for (id, kind) in wanted {
            let fd = {
                let mut slots = self.slots.borrow_mut();
                let Some(s) = slots.get_mut(id.index as usize).filter(|s| s.gen == id.gen) else {
                    continue;
                };
                // Arms are collected during the pass and applied after it,
                // when every task is back in its slot.
                let Some(fd) = s.task.as_ref().and_then(ConnTask::fd) else {
                    continue;
                };
                let armed = match kind {
                    KIND_READ => &mut s.read_armed,
                    _ => &mut s.write_armed,
                };
                if std::mem::replace(armed, true) {
                    continue;
                }
                fd
            };
            let events = match kind {
                KIND_READ => libc::POLLIN | libc::POLLRDHUP,
                _ => libc::POLLOUT,
            };
            self.push(
                opcode::PollAdd::new(types::Fd(fd), events as u32)
                    .multi(kind == KIND_READ && self.eventfd.is_some())
                    .build()
                    .user_data(id.user_data(kind)),
            );
        }
    }

    /// Submits what the pass queued and runs the ring's deferred work (no
    /// wait): completions land in the queue for the next [`Self::reap`].
    fn submit(&self) {
        let mut ring = self.ring.borrow_mut();
        let work = ring.submission().taskrun();
        if work || !ring.submission().is_empty() {
            if let Err(e) = ring.submit() {
                warn!("readiness ring: submit failed: {e}");
            }
        }
    }

    /// Whether the ring has something for the next pass: completions, or
    /// deferred work (which the next [`Self::submit`] runs).
    fn ring_busy(&self) -> bool {
        let mut ring = self.ring.borrow_mut();
        ring.submission().taskrun() || !ring.completion().is_empty()
    }

    /// Runs passes until nothing is left (true) or [`PASSES_PER_RUN`] were
    /// run and something is (false: the caller yields to the core's other
    /// tasks first). A pass's own submission often posts completions (a
    /// poll armed on a socket that has data, deferred work run); running
    /// the next pass at once, not after a yield, spares the executor a
    /// round of its scheduler and its preemption timer per wake-up.
    fn passes(&self) -> bool {
        for _ in 0..PASSES_PER_RUN {
            self.submit();
            self.reap();
            self.poll_ready();
            self.add_spawned();
            self.arm_wanted();
            self.submit();
            if self.shared.ready.borrow().is_empty() && !self.ring_busy() {
                return true;
            }
        }
        false
    }

    /// The driver task: runs for the life of the core.
    pub async fn run(self: Rc<Driver>) {
        // Deferred mode waits on the eventfd, else on the ring fd.
        let wait_fd = match &self.eventfd {
            Some(bell) => bell.as_raw_fd(),
            None => self.ring.borrow().as_raw_fd(),
        };
        let mut readable: Option<Pin<Box<dyn Future<Output = io::Result<()>>>>> = None;
        loop {
            if !self.passes() {
                futures_lite::future::yield_now().await;
                continue;
            }
            // Sleep until the ring has work or a waker queued a slot. The
            // readiness wait is kept across wake-ups by wakers, so it is
            // one poll request, not one per pass.
            let wait =
                readable.get_or_insert_with(|| Box::pin(glommio::net::poll_readable(wait_fd)));
            let ring_ready = futures_lite::future::or(async { wait.await.map(|_| true) }, async {
                self.shared.bell.wait().await;
                Ok(false)
            })
            .await;
            match ring_ready {
                Ok(true) => {
                    readable = None;
                    self.drain_eventfd();
                }
                Ok(false) => {}
                Err(e) => {
                    warn!("readiness ring: poll failed: {e}");
                    readable = None;
                }
            }
        }
    }

    /// Resets the eventfd before the work it announced is run (the next
    /// pass's [`Self::submit`]), so work queued after that run signals it
    /// again: reset, then run, never the other way round.
    fn drain_eventfd(&self) {
        if let Some(bell) = &self.eventfd {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a local u64 from a descriptor we
            // own; a failed read (EAGAIN: already reset) leaves it alone.
            unsafe {
                libc::read(
                    bell.as_raw_fd(),
                    (&mut count as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        SHARED.with(|s| s.borrow_mut().take());
    }
}

/// Hands a connection started on this core's thread (an HTTP session's) to
/// its driver: added after the current pass, or at the next one.
pub fn spawn(task: ConnTask) {
    SHARED.with(|s| {
        if let Some(s) = s.borrow().as_ref() {
            s.spawned.borrow_mut().push(task);
            s.bell.notify();
        }
    });
}

/// Whether the connection being polled has nothing to read for sure (see
/// `Shared::drained`): the caller skips the `recv`.
pub fn drained() -> bool {
    SHARED.with(|s| s.borrow().as_ref().is_some_and(|s| s.drained.get()))
}

/// Called by a connection (during its poll) whose read would block, or
/// came back shorter than its buffer (it drained the socket): it is not
/// read again until its readable poll completes, which the driver arms at
/// the end of the pass unless one is pending (it completes at once if
/// more arrived since). A short read so spares the `recv` that would fail.
pub fn read_drained() {
    SHARED.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            shared.drained.set(true);
        }
    });
    want(KIND_READ);
}

/// Called by a connection whose send would block (during its poll): the
/// driver arms a writable poll for it at the end of the pass.
pub fn arm_writable() {
    want(KIND_WRITE);
}

fn want(kind: u64) {
    SHARED.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            if let Some(id) = shared.current.get() {
                shared.want.borrow_mut().push((id, kind));
            }
        }
    });
}

fn waker(id: SlotId) -> Waker {
    // SAFETY: the vtable's functions treat the data pointer as a plain
    // integer (the slot id) and never dereference it.
    unsafe { Waker::from_raw(RawWaker::new(id.pack() as usize as *const (), &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    let id = SlotId::unpack(data as usize as u64);
    SHARED.with(|s| match s.borrow().as_ref() {
        Some(shared) => {
            shared.enqueue(id);
            shared.bell.notify();
        }
        None => debug_assert!(false, "a connection woken off its core's thread"),
    });
}

fn drop_raw(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds of [`an_idle_connection_stays_small`], as measured.
    const SLOT_BYTES: usize = 96;
    const ENTRY_BYTES: usize = 256;

    #[test]
    fn a_slot_is_queued_once_and_stale_wakes_cannot_displace_it() {
        let s = Shared::default();
        let old = SlotId { index: 3, gen: 7 };
        let new = SlotId { index: 3, gen: 8 };
        s.set_live(3, Some(7));
        s.enqueue(old);
        s.enqueue(old);
        assert_eq!(s.ready.borrow().len(), 1, "one entry per pass");
        let first = s.ready.borrow_mut().pop_front().unwrap();
        assert!(s.dequeue(first));
        // The connection ends while a wake of its own is queued; the slot
        // is reused.
        s.enqueue(old);
        s.set_live(3, None);
        s.set_live(3, Some(8));
        s.enqueue(new);
        s.enqueue(old);
        let popped: Vec<SlotId> = s.ready.borrow_mut().drain(..).collect();
        assert_eq!(popped, vec![old, new]);
        assert!(!s.dequeue(old), "the stale entry is skipped");
        assert!(s.dequeue(new), "the live one is polled");
    }

    /// What an idle connection costs in userspace is mostly these three
    /// structs (bench/RESULTS.md has the whole breakdown); a field that
    /// grows one fails here, not in a benchmark.
    #[test]
    fn an_idle_connection_stays_small() {
        use std::mem::size_of;
        let sizes = (
            size_of::<Slot>(),
            size_of::<crate::shard::Entry>(),
            size_of::<crate::shard::Link>(),
        );
        eprintln!(
            "Slot, Entry, Link: {sizes:?} bytes; Phase {} B, task {} B, Session {} B",
            size_of::<crate::shard::Phase>(),
            size_of::<ConnTask>(),
            size_of::<crate::session::Session>()
        );
        eprintln!(
            "HTTP fallback: Exchange {} B (boxed), Pipe {} B",
            size_of::<crate::net::fallback::Exchange>(),
            size_of::<crate::net::fallback::Pipe>()
        );
        assert!(sizes.0 <= SLOT_BYTES, "driver slot {} B", sizes.0);
        assert!(sizes.1 <= ENTRY_BYTES, "slab entry {} B", sizes.1);
    }

    #[test]
    fn user_data_keeps_the_slot_and_the_kind() {
        let id = SlotId {
            index: u32::MAX,
            gen: (1 << 30) - 1,
        };
        for kind in [KIND_READ, KIND_WRITE] {
            assert_eq!(SlotId::from_user_data(id.user_data(kind)), (id, kind));
        }
        assert_eq!(SlotId::unpack(id.pack()), id);
    }
}
