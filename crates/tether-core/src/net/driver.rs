//! The core's connection driver: one task per core that runs every
//! connection's state machine ([`super::conn::ConnTask`]), instead of one
//! glommio task per connection.
//!
//! Why: an idle connection used to cost a glommio task (~320 B) and a
//! pending readiness `Source` in glommio's reactor (~450 B), more than its
//! session state. Here an idle connection costs its slot in [`Driver`]'s
//! slab and one entry in the core's *readiness set*, an edge-triggered
//! epoll instance: kernel memory, none in userspace.
//!
//! - **Registered once:** a socket joins the set when its connection is
//!   added, for `EPOLLIN | EPOLLRDHUP | EPOLLOUT`, edge-triggered, tagged
//!   with its slot. Nothing is armed again per message: no `epoll_ctl`, no
//!   submission. It leaves the set when its file closes (the kernel drops
//!   the entry), or explicitly when its socket went to another core.
//! - **Readable:** an edge marks the slot readable and queues it. A slot
//!   that is not readable is not read: no `recv` that fails with EAGAIN.
//!   A read that would block, or came back short (it drained the socket),
//!   clears the mark ([`read_drained`]); data that arrives after it raises
//!   a new edge.
//! - **Writable:** a send that would block marks the slot write-blocked
//!   ([`arm_writable`]); the `EPOLLOUT` edge that comes when the kernel
//!   frees room (it only comes after a send hit a full buffer) queues it.
//! - **Woken by the core** (outbox, close, verdict), by a timer or by a
//!   paused flow: the connection's `Waker` is a [`RawWaker`] carrying its
//!   slot id (no allocation), whose `wake` queues the slot on this core's
//!   driver.
//!
//! The driver task sleeps until the readiness set is readable (awaited
//! through glommio's own ring, `glommio::net::poll_readable`, a patch in
//! `vendor/glommio`: a one-shot poll) or a waker queued a slot, then runs
//! passes, each harvesting the set (`epoll_wait` without a timeout) and
//! polling every ready connection, until none is left. While it runs, the
//! one-shot poll has fired and is not armed again: sockets that become
//! ready meanwhile wait in the set's ready list and never interrupt the
//! core. So the executor's wake-up, timer and syscall costs are paid per
//! batch, not per connection, and the core is told at once when it sleeps.
//!
//! Why not a second io_uring (which this driver was until issue 27): the
//! only wake-up a ring with deferred task work gives a thread asleep in
//! another ring is its registered eventfd, and on Linux 6.18 the kernel
//! signals that eventfd from a socket's wake-up through an RCU callback,
//! one grace period later: 4-20 ms of every message at low load
//! (bench/RESULTS.md "Late wake-ups"). A plain ring wakes promptly but
//! interrupts a busy core for every ready socket. epoll's wake-up is a
//! direct wait-queue wake on every kernel, and the one-shot poll keeps
//! the batching. Reads and writes are plain non-blocking `recv`/`send`.
//!
//! Invariant: a connection's waker is woken only on its core's thread (the
//! core, its timers and its flows all live there); the driver is found
//! through a thread-local.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};

use slab::Slab;
use tracing::warn;

use super::conn::ConnTask;
use crate::notify::Notify;
use crate::shard::Core;
use crate::stats::bump;

/// Readiness events taken per `epoll_wait`: a pass harvests at most this
/// many sockets (a full harvest runs another pass at once, so this bounds a
/// batch, not the connections). 1,024 × 12 B = 12 KiB per core.
pub const EVENTS_PER_WAIT: usize = 1024;
/// Connections polled per pass before the driver yields to the core's
/// other tasks (timers, mesh, inbox), so a busy core stays responsive.
const POLL_BUDGET: usize = 512;
/// Passes the driver runs back to back before it yields to the core's other
/// tasks, when every pass leaves more work: bounds a run to about
/// `POLL_BUDGET × PASSES_PER_RUN` connection polls.
const PASSES_PER_RUN: usize = 4;

/// What a socket is registered for: readable (and the peer's half-close),
/// writable, edge-triggered. `EPOLLOUT` edges only come after a send found
/// the buffer full, so keeping it registered costs nothing otherwise.
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT | libc::EPOLLET) as u32;
/// Events that mean "read it": data, the peer's half-close, a hang-up or
/// an error (the read reports which).
const READ_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Events that end a write wait: room, a hang-up or an error.
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// A connection's identity in the driver: slab index and generation, so a
/// stale event or wake for a reused slot is ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct SlotId {
    index: u32,
    gen: u32,
}

impl SlotId {
    /// The id as one word: an epoll event's data, a waker's data pointer.
    fn pack(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.index)
    }

    fn unpack(v: u64) -> SlotId {
        SlotId {
            index: v as u32,
            gen: (v >> 32) as u32,
        }
    }
}

/// One connection in the driver. 96 bytes, most of them the task: the two
/// flags ride in the generation word's top bits (generations stay below
/// 2^30), so the slot is no larger for holding its socket.
struct Slot {
    /// The generation, and [`READABLE`] and [`WRITE_BLOCKED`].
    gen_flags: u32,
    /// The socket registered in the readiness set under this slot, or -1
    /// (an HTTP session's pipe has none).
    fd: RawFd,
    /// Taken out while it is polled (a poll may queue other slots).
    task: Option<ConnTask>,
}

/// Data may be waiting: a readable edge came since the last read that
/// drained the socket (or the connection is new).
const READABLE: u32 = 1 << 31;
/// A send would block: the next writable edge queues the slot.
const WRITE_BLOCKED: u32 = 1 << 30;
/// The generation's bits in [`Slot::gen_flags`].
const GEN_MASK: u32 = WRITE_BLOCKED - 1;

impl Slot {
    fn gen(&self) -> u32 {
        self.gen_flags & GEN_MASK
    }

    fn is(&self, flag: u32) -> bool {
        self.gen_flags & flag != 0
    }

    fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.gen_flags |= flag;
        } else {
            self.gen_flags &= !flag;
        }
    }
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
    /// Connections started during a pass (an HTTP session's, opened by a
    /// request being polled): added once the pass is over.
    spawned: RefCell<Vec<ConnTask>>,
    /// Whether the slot being polled is known to have nothing to read: no
    /// readable edge came since its socket was drained, or a read this
    /// poll came back short. A read then returns `Pending` without a
    /// system call: a connection woken to write, or looping after a short
    /// read, would otherwise pay a `recv` that fails with EAGAIN (two of
    /// every three `recv`s at low load, counted).
    drained: Cell<bool>,
    /// Whether the slot being polled found its send buffer full.
    write_blocked: Cell<bool>,
    /// Slots queued so far (a running count, see [`wakes`]).
    wakes: Cell<u64>,
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
            self.wakes.set(self.wakes.get() + 1);
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
    /// The readiness set: every socket of the core, edge-triggered.
    epoll: OwnedFd,
    /// `epoll_wait`'s output, reused by every pass.
    events: RefCell<Vec<libc::epoll_event>>,
    slots: RefCell<Slab<Slot>>,
    shared: Rc<Shared>,
    /// Bumped per slot insert, so reused indices get new generations.
    next_gen: Cell<u32>,
    /// The core, for its counters (`readiness_refused`); `None` in unit
    /// tests.
    core: Option<Rc<Core>>,
}

impl Driver {
    /// A driver for the calling thread's core, with its readiness set.
    ///
    /// `slots` connections are reserved up front (address space; RSS only
    /// as slots fill), so the slab and its per-slot tables do not grow by
    /// doubling, which would copy them and leave up to half of the last
    /// size resident and unused.
    pub fn new(slots: usize, core: Option<Rc<Core>>) -> io::Result<Rc<Driver>> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return
        // is a new descriptor owned by nothing else.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here alone.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Rc::new(Shared::default());
        shared.queued.borrow_mut().reserve_exact(slots);
        shared.live.borrow_mut().reserve_exact(slots);
        SHARED.with(|s| *s.borrow_mut() = Some(shared.clone()));
        Ok(Rc::new(Driver {
            epoll,
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_WAIT)),
            slots: RefCell::new(Slab::with_capacity(slots)),
            shared,
            next_gen: Cell::new(0),
            core,
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

    /// Takes over a connection, registers its socket and polls it once: it
    /// reads what the client sent already.
    pub fn add(&self, task: ConnTask) {
        let gen = (self.next_gen.get() + 1) & GEN_MASK;
        self.next_gen.set(gen);
        let fd = task.fd().unwrap_or(-1);
        let index = self.slots.borrow().vacant_key();
        let id = SlotId {
            index: index as u32,
            gen,
        };
        if fd >= 0 {
            if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, id) {
                // The task is dropped: its socket closes, the client sees
                // the connection end. ENOSPC is fs.epoll.max_user_watches.
                warn!(
                    "cannot watch a new connection's socket ({e}); it is closed. \
                     If this says 'No space left on device', raise \
                     fs.epoll.max_user_watches (tether doctor checks it)"
                );
                if let Some(core) = &self.core {
                    bump(&core.stats().readiness_refused, 1);
                }
                return;
            }
        }
        self.slots.borrow_mut().insert(Slot {
            gen_flags: gen | READABLE,
            fd,
            task: Some(task),
        });
        self.shared.set_live(id.index, Some(gen));
        self.queue(id);
    }

    /// `epoll_ctl` for slot `id`'s socket.
    fn ctl(&self, op: libc::c_int, fd: RawFd, id: SlotId) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: INTEREST,
            u64: id.pack(),
        };
        // SAFETY: `ev` is a valid epoll_event for the call (ignored by
        // EPOLL_CTL_DEL); both descriptors are plain integers to the kernel.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
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
        self.shared.enqueue(id);
        self.shared.bell.notify();
    }

    /// Takes what the readiness set has (no wait) into the ready queue;
    /// returns how many events came.
    fn harvest(&self) -> usize {
        let mut events = self.events.borrow_mut();
        // SAFETY: the kernel writes at most EVENTS_PER_WAIT events into the
        // vector's spare capacity, which holds that many; the length is
        // set to what it reports written.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("readiness set: epoll_wait failed: {e}");
            }
            return 0;
        }
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { events.set_len(n as usize) };
        let mut slots = self.slots.borrow_mut();
        for ev in events.iter() {
            let (flags, data) = (ev.events, ev.u64);
            let id = SlotId::unpack(data);
            let Some(s) = slots
                .get_mut(id.index as usize)
                .filter(|s| s.gen() == id.gen)
            else {
                continue;
            };
            let mut wake = false;
            if flags & READ_EVENTS != 0 {
                s.set(READABLE, true);
                wake = true;
            }
            if flags & WRITE_EVENTS != 0 && s.is(WRITE_BLOCKED) {
                s.set(WRITE_BLOCKED, false);
                wake = true;
            }
            if wake {
                self.shared.enqueue(id);
            }
        }
        n as usize
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
            let (task, readable) = {
                let mut slots = self.slots.borrow_mut();
                match slots
                    .get_mut(id.index as usize)
                    .filter(|s| s.gen() == id.gen)
                {
                    Some(s) => (s.task.take(), s.is(READABLE)),
                    None => (None, false),
                }
            };
            let Some(mut task) = task else { continue };
            let waker = waker(id);
            let mut cx = Context::from_waker(&waker);
            self.shared.drained.set(!readable);
            self.shared.write_blocked.set(false);
            let done = Pin::new(&mut task).poll(&mut cx).is_ready();
            if done {
                self.remove(id, &task);
                drop(task);
            } else if let Some(slot) = self.slots.borrow_mut().get_mut(id.index as usize) {
                slot.task = Some(task);
                slot.set(READABLE, !self.shared.drained.get());
                if self.shared.write_blocked.get() {
                    slot.set(WRITE_BLOCKED, true);
                }
            }
        }
    }

    /// A connection ended. Its socket leaves the readiness set by itself
    /// when the task closes it (the kernel drops a file's entries at its
    /// last close); a socket the task handed to another core is still
    /// open, so it is removed here, or its events would keep waking this
    /// core.
    fn remove(&self, id: SlotId, task: &ConnTask) {
        let slot = self.slots.borrow_mut().remove(id.index as usize);
        self.shared.set_live(id.index, None);
        if slot.fd >= 0 && task.fd() != Some(slot.fd) {
            // ENOENT: the socket was closed already (by the core it went
            // to), which removed it.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, slot.fd, id);
        }
    }

    /// Runs passes until nothing is left (true) or [`PASSES_PER_RUN`] were
    /// run and something is (false: the caller yields to the core's other
    /// tasks first). A pass that harvested a full buffer, or whose polls
    /// queued more slots, is followed by another at once.
    fn passes(&self) -> bool {
        for _ in 0..PASSES_PER_RUN {
            let harvested = self.harvest();
            self.poll_ready();
            self.add_spawned();
            if self.shared.ready.borrow().is_empty() && harvested < EVENTS_PER_WAIT {
                return true;
            }
        }
        false
    }

    /// The driver task: runs for the life of the core.
    pub async fn run(self: Rc<Driver>) {
        let epoll = self.epoll.as_raw_fd();
        let mut readable: Option<Pin<Box<dyn Future<Output = io::Result<()>>>>> = None;
        loop {
            let all = self.passes();
            if let Some(core) = &self.core {
                core.served();
            }
            if !all {
                futures_lite::future::yield_now().await;
                continue;
            }
            // The run served every slot queued before it ended, the ones
            // whose wakes rang the bell during it too: that ring is spent
            // (otherwise every wake-up would cost one more pass and one more
            // `epoll_wait` that finds nothing). Wakes from other tasks come
            // only after the await below.
            self.shared.bell.clear();
            // Sleep until the set has events or a waker queued a slot. The
            // poll is kept across wake-ups by wakers, so it is one request,
            // not one per pass; armed on a set with events, it completes
            // at once.
            let wait = readable.get_or_insert_with(|| Box::pin(glommio::net::poll_readable(epoll)));
            let set_ready = futures_lite::future::or(async { wait.await.map(|_| true) }, async {
                self.shared.bell.wait().await;
                Ok(false)
            })
            .await;
            match set_ready {
                Ok(true) => readable = None,
                Ok(false) => {}
                Err(e) => {
                    warn!("readiness set: poll failed: {e}");
                    readable = None;
                }
            }
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

/// How many times this core's driver queued a connection so far: a
/// connection compares it before and after handling what it read, to tell
/// whether that woke others (it delivered to them).
pub fn wakes() -> u64 {
    SHARED.with(|s| s.borrow().as_ref().map_or(0, |s| s.wakes.get()))
}

/// Called by a connection (during its poll) whose read would block, or
/// came back shorter than its buffer (it drained the socket): it is not
/// read again until a readable edge comes (data that arrived since the
/// read raises one). A short read so spares the `recv` that would fail.
pub fn read_drained() {
    SHARED.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            shared.drained.set(true);
        }
    });
}

/// Called by a connection whose send would block (during its poll): the
/// writable edge that comes when the kernel frees room queues it again.
pub fn arm_writable() {
    SHARED.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            shared.write_blocked.set(true);
        }
    });
}

/// Whether the connection `waker` belongs to is queued in this core's
/// driver: it has input the core has not read (a readable edge came), or
/// the core woke it to write, and the driver has not polled it yet. The
/// core paces publishers by it (`shard::Core::set_queued_probe`): a copy
/// that waits behind such a connection's window waits on the core, not on
/// the client. False for any other waker.
pub fn is_queued(waker: &Waker) -> bool {
    if !std::ptr::eq(waker.vtable(), &VTABLE) {
        return false;
    }
    let id = SlotId::unpack(waker.data() as usize as u64);
    SHARED.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|s| s.queued.borrow().get(id.index as usize).copied() == Some(id.gen + 1))
    })
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
    fn a_packed_id_keeps_the_slot_and_the_generation() {
        let id = SlotId {
            index: u32::MAX,
            gen: (1 << 30) - 1,
        };
        assert_eq!(SlotId::unpack(id.pack()), id);
    }
}
