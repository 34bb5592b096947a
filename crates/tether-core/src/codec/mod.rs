//! Sans-IO MQTT 3.1.1 / 5.0 codec.
//!
//! Nothing here knows about sockets or executors: [`decode`] takes a byte
//! slice and either returns one complete packet and how many bytes it used,
//! asks for more bytes, or explains why the input is invalid. [`encode`]
//! appends a packet to a `Vec<u8>`.
//!
//! The decoder is *check-then-parse* (as in mini-redis): the fixed header is
//! inspected first and a packet is only parsed once all of its bytes are in
//! the buffer, so no allocation is ever sized from an untrusted length field
//! before the bytes it describes have arrived.

mod decode;
mod encode;
mod packet;
mod properties;
mod reader;
pub mod topic;

pub use decode::{decode, frame_len, plain_puback, DecodeError};
pub use encode::{encode, encode_publish, encoded_len_publish};
pub use packet::*;
pub use properties::Properties;

/// Largest value the variable byte integer can carry (268,435,455, MQTT 1.5.5).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[cfg(test)]
mod tests;
