//! Bounded reader over one packet's body.
//!
//! All reads check the remaining length first, so no wire input can cause a panic,
//! and byte fields are zero-copy slices of the frozen packet buffer.

use bytes::{Buf, Bytes};

use super::error::DecodeError;

/// Largest value a variable byte integer can hold (4 bytes of 7 bits) [MQTT-1.5.5].
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Outcome of parsing a variable byte integer from the front of a slice.
pub(crate) enum VarInt {
    /// Value and the number of bytes it used.
    Complete(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
    /// A 5th byte would be needed.
    Malformed,
}

/// Parses a variable byte integer; shared by the fixed header (which must report
/// "need more bytes") and fields inside a body (where a short read is an error).
pub(crate) fn parse_varint(bytes: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return VarInt::Complete(value, i + 1);
        }
    }
    if bytes.len() >= 4 {
        VarInt::Malformed
    } else {
        VarInt::Incomplete
    }
}

/// Cursor over a packet body. Each `read_*` takes the name of the field being read
/// so errors say what was missing.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn read_u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn read_u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn read_u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn read_varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf) {
            VarInt::Complete(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::MissingData(what)),
            VarInt::Malformed => Err(DecodeError::MalformedVarInt(what)),
        }
    }

    /// Takes exactly `len` bytes as a zero-copy slice.
    pub(crate) fn read_bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// Two-byte length followed by that many bytes [MQTT-1.5.6].
    pub(crate) fn read_binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.read_u16(what)?;
        self.read_bytes(usize::from(len), what)
    }

    /// UTF-8 encoded string: must be valid UTF-8 [MQTT-1.5.4-1] without U+0000 [MQTT-1.5.4-2].
    pub(crate) fn read_string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let raw = self.read_binary(what)?;
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8(what))?;
        if s.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s.to_owned())
    }

    /// Splits off the next `len` bytes as their own reader (e.g. a property block),
    /// so a section cannot read past its declared length.
    pub(crate) fn sub_reader(&mut self, len: usize, what: &'static str) -> Result<Reader, DecodeError> {
        self.read_bytes(len, what).map(Reader::new)
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Errors if anything is left, naming the section that should have ended.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData(what))
        }
    }

    fn need(&self, len: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < len {
            Err(DecodeError::MissingData(what))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_limits() {
        assert!(matches!(parse_varint(&[0x00]), VarInt::Complete(0, 1)));
        assert!(matches!(parse_varint(&[0x7F]), VarInt::Complete(127, 1)));
        assert!(matches!(parse_varint(&[0x80, 0x01]), VarInt::Complete(128, 2)));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0x7F]),
            VarInt::Complete(MAX_VARINT, 4)
        ));
        assert!(matches!(parse_varint(&[0xFF, 0xFF, 0xFF]), VarInt::Incomplete));
        assert!(matches!(parse_varint(&[]), VarInt::Incomplete));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            VarInt::Malformed
        ));
    }

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert_eq!(r.read_string("s"), Err(DecodeError::MissingData("s")));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0x00]));
        assert_eq!(r.read_string("s"), Err(DecodeError::NullCharacter));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xC3, 0x28]));
        assert_eq!(r.read_string("s"), Err(DecodeError::InvalidUtf8("s")));
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(r.read_u16("id"), Err(DecodeError::MissingData("id")));
        assert_eq!(r.read_u8("b"), Ok(1));
        assert_eq!(r.read_u32("x"), Err(DecodeError::MissingData("x")));
    }
}
