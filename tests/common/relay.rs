//! A TCP relay to a Unix socket that can be cut: a partition between one
//! node and Redis while everything else still reaches both.
//!
//! Cut, it forwards nothing either way and accepts no new connection, but
//! closes none: the node sees silence, not a reset. Healed, it closes the
//! connections it held (as the partition's TCP timeouts would have, and
//! with them whatever Redis had queued for them, such as pub/sub messages)
//! and relays new ones again. Resumed instead, it delivers what it held
//! and carries on, as TCP's retransmissions do after a short partition.
//! Deafened, it carries requests to Redis but holds its answers until
//! resumed: a slow return path, where what a node sent runs and it never
//! hears back in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// How often a relay thread looks at the cut and stop flags.
const POLL: Duration = Duration::from_millis(20);

pub struct Relay {
    pub port: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    cut: AtomicBool,
    /// Answers (Redis to the node) wait; requests pass.
    deaf: AtomicBool,
    stop: AtomicBool,
    /// Bumped at each heal: connections of an earlier one close.
    era: AtomicU64,
}

impl Relay {
    /// A relay on a free loopback port to the Unix socket at `to`.
    pub fn to_unix(to: PathBuf) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(SeqCst) {
                if st.cut.load(SeqCst) {
                    std::thread::sleep(POLL);
                    continue;
                }
                match listener.accept() {
                    Ok((tcp, _)) => {
                        if let Ok(unix) = UnixStream::connect(&to) {
                            pipe(tcp, unix, st.clone());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(_) => return,
                }
            }
        });
        Relay { port, state }
    }

    /// `redis.urls` through the relay.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Silence: nothing passes, nothing closes. Returns once every copy
    /// thread has seen it (a read in progress ends within [`POLL`]).
    pub fn cut(&self) {
        self.state.cut.store(true, SeqCst);
        std::thread::sleep(3 * POLL);
    }

    /// Requests pass, answers wait (until [`Relay::resume`]): an answer
    /// read from then on is held.
    pub fn deafen(&self) {
        self.state.deaf.store(true, SeqCst);
    }

    /// Connections held through the cut (or the deafness) deliver what
    /// waited and carry on; new ones pass.
    pub fn resume(&self) {
        self.state.cut.store(false, SeqCst);
        self.state.deaf.store(false, SeqCst);
    }

    /// Connections held through the cut close; new ones pass.
    pub fn heal(&self) {
        self.state.era.fetch_add(1, SeqCst);
        self.state.cut.store(false, SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
    }
}

/// Copies both ways on two threads until either side closes, the relay
/// stops, or a heal ends the connection's era.
fn pipe(tcp: TcpStream, unix: UnixStream, st: Arc<State>) {
    let era = st.era.load(SeqCst);
    tcp.set_read_timeout(Some(POLL)).unwrap();
    unix.set_read_timeout(Some(POLL)).unwrap();
    let (tcp2, unix2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
    let st2 = st.clone();
    std::thread::spawn(move || copy(tcp, unix, &st, era, false));
    std::thread::spawn(move || copy(unix2, tcp2, &st2, era, true));
}

/// `answers`: this copies Redis's side to the node's.
fn copy<R: Read + Sock, W: Write + Sock>(
    mut from: R,
    mut to: W,
    st: &State,
    era: u64,
    answers: bool,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if st.stop.load(SeqCst) || st.era.load(SeqCst) != era {
            break;
        }
        let held = || st.cut.load(SeqCst) || (answers && st.deaf.load(SeqCst));
        if held() {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read just as the relay was cut or deafened: held too.
                while held() && !st.stop.load(SeqCst) && st.era.load(SeqCst) == era {
                    std::thread::sleep(POLL);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    from.close();
    to.close();
}

/// Either kind of socket, closed both ways.
trait Sock {
    fn close(&self);
}

impl Sock for TcpStream {
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Sock for UnixStream {
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}
