//! The TLS layer of an exchange on the wss listener: the connection's TLS
//! session, taken over from the connection that read the request (or
//! carried from another core with the socket), and the ciphertext not yet
//! written. Responses are sealed whole when they are flushed; requests are
//! opened as they are read.

use crate::mesh::CarriedTls;
use crate::net::tls::{Failure, Inbound, TlsSession};

/// One exchange's TLS state (see the module doc).
pub(super) struct Secure {
    /// The session, in the box the connection kept it in (rustls's state
    /// is large; it is not moved).
    session: Box<TlsSession>,
    /// Records to write, from `spos` on; unallocated once written.
    sealed: Vec<u8>,
    spos: usize,
    /// close_notify is sealed (it goes last, once).
    closed: bool,
}

impl Secure {
    /// Takes over `session`, with the records its connection had not
    /// written yet.
    pub(super) fn new(session: Box<TlsSession>, unwritten: Vec<u8>) -> Secure {
        Secure {
            session,
            sealed: unwritten,
            spos: 0,
            closed: false,
        }
    }

    /// A session that came with its socket from another core.
    pub(super) fn resume(carried: CarriedTls) -> Secure {
        Secure::new(Box::new(TlsSession::resume(carried)), Vec::new())
    }

    /// Appends `plain` to what is to be written, as records.
    pub(super) fn seal(&mut self, plain: &[u8]) {
        self.session.encrypt(plain, &mut self.sealed);
    }

    /// Seals close_notify, once: false when it already was.
    pub(super) fn close(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.session.close();
        self.session.encrypt(&[], &mut self.sealed);
        true
    }

    /// Decrypts `cipher`, just read, appending its plaintext to `plain`.
    pub(super) fn open(
        &mut self,
        cipher: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Inbound, Failure> {
        self.session.decrypt(cipher, plain)
    }

    /// The records to write and how far they are written.
    pub(super) fn unwritten(&mut self) -> (&mut Vec<u8>, &mut usize) {
        (&mut self.sealed, &mut self.spos)
    }

    /// The session as plain data for a handoff; everything sealed was
    /// written (an exchange hands off only after a complete flush).
    pub(super) fn carry(self) -> CarriedTls {
        debug_assert!(
            self.spos == self.sealed.len(),
            "handed off with records unwritten"
        );
        (*self.session).carry()
    }
}
