//! Output sink used by every encoder.
//!
//! Encoders are written once, generic over [`Sink`]; running them against a
//! [`Counter`] gives the exact encoded length, so `encoded_len` can never drift
//! from `encode`, and length prefixes are computed before anything is written.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::reader::MAX_VARINT;

pub(crate) trait Sink {
    fn write_u8(&mut self, v: u8);
    fn write_slice(&mut self, s: &[u8]);

    fn write_u16(&mut self, v: u16) {
        self.write_slice(&v.to_be_bytes());
    }

    fn write_u32(&mut self, v: u32) {
        self.write_slice(&v.to_be_bytes());
    }

    /// Variable byte integer [MQTT-1.5.5], always in the minimum number of bytes.
    fn write_varint(&mut self, v: u32, what: &'static str) -> Result<(), EncodeError> {
        if v > MAX_VARINT {
            return Err(EncodeError::VarIntTooLarge(what));
        }
        let mut v = v;
        loop {
            // Truncation is intended: we take the low 7 bits.
            let mut byte = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            self.write_u8(byte);
            if v == 0 {
                return Ok(());
            }
        }
    }

    /// Two-byte length prefix + data [MQTT-1.5.6].
    fn write_binary(&mut self, b: &[u8], what: &'static str) -> Result<(), EncodeError> {
        let len = u16::try_from(b.len()).map_err(|_| EncodeError::BinaryTooLong(what))?;
        self.write_u16(len);
        self.write_slice(b);
        Ok(())
    }

    /// UTF-8 string; refuses what the peer would have to reject [MQTT-1.5.4-2].
    fn write_str(&mut self, s: &str, what: &'static str) -> Result<(), EncodeError> {
        let len = u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(what))?;
        if s.contains('\0') {
            return Err(EncodeError::NullCharacter(what));
        }
        self.write_u16(len);
        self.write_slice(s.as_bytes());
        Ok(())
    }
}

impl Sink for BytesMut {
    fn write_u8(&mut self, v: u8) {
        self.put_u8(v);
    }

    fn write_slice(&mut self, s: &[u8]) {
        self.put_slice(s);
    }
}

/// A sink that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn write_u8(&mut self, _: u8) {
        self.0 += 1;
    }

    fn write_slice(&mut self, s: &[u8]) {
        self.0 += s.len();
    }
}

/// Number of bytes `write_varint` uses for `v`.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Runs `f` against a [`Counter`] and returns how many bytes it would write.
pub(crate) fn measure(f: impl FnOnce(&mut Counter) -> Result<(), EncodeError>) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    f(&mut counter)?;
    Ok(counter.0)
}
