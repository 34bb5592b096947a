//! How a connection ends: a drain's or a shutdown's settle (the
//! acknowledgements the client already sent are applied first), the final
//! DISCONNECT flushed within [`CLOSE_FLUSH_TIMEOUT`], then the linger that
//! lets the client read it before the socket closes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use glommio::timer::Timer;

use super::{read_now, Conn, Io, ReadStep, READ_BUDGET};
use crate::mqtt;
use crate::shard::CloseRequest;

/// How long a closing connection may take to flush its last frames.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// After the write side is shut, how long a closing connection keeps
/// reading (and discarding) what the client still sends. Closing a socket
/// with unread data makes the kernel send a reset, and a reset makes the
/// client's kernel drop what it had not yet read: the final DISCONNECT and
/// its reason code. One second lets a client that was pipelining read it
/// and close first.
pub(super) const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this much is read and discarded while lingering.
const LINGER_BYTES: u32 = 64 * 1024;

impl Conn {
    /// Before a drain's or a shutdown's final flush: reads what the client
    /// already sent (without waiting for more) and applies its
    /// acknowledgements, so the node that takes the session over does not
    /// send again a message the client acknowledged here. Nothing else is
    /// handled: what the client sent and was not acknowledged, it sends
    /// again there.
    fn settle(&mut self, cx: &mut Context<'_>) {
        self.core.settling.set(true);
        for _ in 0..READ_BUDGET {
            if !matches!(self.read_once(cx), ReadStep::Handled) {
                break;
            }
        }
        self.core.settling.set(false);
    }

    /// Reads and discards what the client still sends after the write side
    /// was shut, until it closes too, [`LINGER_BYTES`] were read, or
    /// [`LINGER_TIMEOUT`] passed: then the socket may close without a
    /// reset. A client that already closed ends it on the first read.
    pub(super) fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        loop {
            let read = self.lingered.unwrap_or(LINGER_BYTES);
            if read >= LINGER_BYTES {
                return Poll::Ready(());
            }
            let Io::Tcp(stream) = &mut self.io else {
                return Poll::Ready(());
            };
            match read_now(stream, &mut scratch) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    self.lingered = Some(read.saturating_add(n as u32));
                }
                Poll::Pending => {
                    return match self.closing.as_mut() {
                        Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
                        None => Poll::Ready(()),
                    };
                }
            }
        }
    }

    /// Sends the final DISCONNECT (if any) and finishes within the timeout.
    pub(super) fn poll_close(&mut self, cx: &mut Context<'_>, req: CloseRequest) -> Poll<()> {
        if self.closing.is_none() {
            if req.settle {
                self.settle(cx);
            }
            self.closing = Some(Timer::new(CLOSE_FLUSH_TIMEOUT));
            if let Some(ws) = self.ws.as_mut().filter(|w| w.open) {
                ws.close.get_or_insert(crate::net::ws::close::NORMAL);
            }
            mqtt::closing(&self.core, self.key, req);
        }
        match self.poll_flush(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => {
                let timer = self.closing.as_mut().expect("set above");
                Pin::new(timer).poll(cx).map(|_| ())
            }
        }
    }
}
