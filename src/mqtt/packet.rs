//! The [`Packet`] enum, fixed header handling and the top-level
//! [`decode`] / [`encode`] / [`encoded_len`] entry points.

use bytes::{Buf, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::PropertyContext;
use super::reader::{MAX_VARINT, Reader, VarInt, parse_varint};
use super::writer::{Sink, measure, varint_len};
use super::{
    Auth, ConnAck, Connect, Disconnect, ProtocolVersion, PubResponse, Publish, QoS, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};

/// Control packet type numbers (fixed header bits 7-4).
mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Any MQTT control packet.
// CONNECT is the largest variant by far, but the public API keeps it unboxed and
// it is decoded once per connection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Packet name for error messages.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::CONNECT => "CONNECT",
        kind::CONNACK => "CONNACK",
        kind::PUBLISH => "PUBLISH",
        kind::PUBACK => "PUBACK",
        kind::PUBREC => "PUBREC",
        kind::PUBREL => "PUBREL",
        kind::PUBCOMP => "PUBCOMP",
        kind::SUBSCRIBE => "SUBSCRIBE",
        kind::SUBACK => "SUBACK",
        kind::UNSUBSCRIBE => "UNSUBSCRIBE",
        kind::UNSUBACK => "UNSUBACK",
        kind::PINGREQ => "PINGREQ",
        kind::PINGRESP => "PINGRESP",
        kind::DISCONNECT => "DISCONNECT",
        kind::AUTH => "AUTH",
        _ => "reserved packet type",
    }
}

/// Validates the first byte of the fixed header so garbage is rejected before
/// anything else is buffered.
fn check_fixed_header(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    match kind {
        // Type 0 is reserved; AUTH exists only in MQTT 5.
        0 => Err(DecodeError::InvalidPacketType(kind)),
        kind::AUTH if version != ProtocolVersion::V5 => Err(DecodeError::InvalidPacketType(kind)),
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                // [MQTT-3.3.1-4]
                return Err(DecodeError::InvalidQoS);
            }
            if version == ProtocolVersion::V5 && qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"));
            }
            Ok(())
        }
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags != 0b0010 => Err(DecodeError::InvalidFlags(kind)),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Ok(()),
        // All other packet types have reserved flags that must be 0 [MQTT-2.1.3-1].
        _ if flags != 0 => Err(DecodeError::InvalidFlags(kind)),
        _ => Ok(()),
    }
}

/// Packets of at most this many bytes (fixed header included) are copied out of the read buffer
/// by [`decode`].
pub const COPY_MAX: usize = 1024;

/// Incremental decode. `Ok(None)` = need more bytes (buf untouched). On `Ok(Some)`, the packet's bytes are
/// consumed from buf. The remaining-length is checked against `max_packet_size` (whole packet size incl.
/// fixed header) as soon as the fixed header is readable — before the body is buffered — giving
/// `DecodeError::PacketTooLarge`. `version` is the connection's negotiated version; a CONNECT carries its
/// own version and is decoded regardless of `version`. Payload `Bytes` are slices of the packet's
/// bytes: a copy for packets of at most [`COPY_MAX`] bytes, a zero-copy split of buf above.
///
/// After an error the connection must be closed; whether the bad packet's bytes
/// were consumed is unspecified.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_fixed_header(first, version)?;
    let (remaining, len_bytes) = match parse_varint(buf.get(1..).unwrap_or_default()) {
        VarInt::Complete(value, len) => (value, len),
        VarInt::Incomplete => return Ok(None),
        VarInt::Malformed => return Err(DecodeError::MalformedRemainingLength),
    };
    let header_len = 1 + len_bytes;
    // remaining <= MAX_VARINT, so this cannot overflow a u32.
    let size = remaining.saturating_add(header_len as u32);
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    let total = header_len + remaining as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = if total <= COPY_MAX {
        // A small packet is copied out, so that `buf` stays the only owner of its allocation
        // and the next read reuses it. A split would share it with the payload until that is
        // delivered and dropped, and the caller's next `reserve` would allocate a new buffer:
        // one allocation of the whole read buffer per PUBLISH read on its own.
        let frame = Bytes::copy_from_slice(&buf[..total]);
        buf.advance(total);
        frame
    } else {
        buf.split_to(total).freeze()
    };
    let mut r = Reader::new(frame.slice(header_len..));
    let kind = first >> 4;
    let packet = decode_body(kind, first & 0x0F, &mut r, version)?;
    r.finish(kind_name(kind))?;
    Ok(Some(packet))
}

fn decode_body(kind: u8, flags: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let response = |r: &mut Reader| PubResponse::decode(r, version);
    Ok(match kind {
        kind::CONNECT => Packet::Connect(Connect::decode(r)?),
        kind::CONNACK => Packet::ConnAck(ConnAck::decode(r, version)?),
        kind::PUBLISH => Packet::Publish(Publish::decode(flags, r, version)?),
        kind::PUBACK => Packet::PubAck(response(r)?),
        kind::PUBREC => Packet::PubRec(response(r)?),
        kind::PUBREL => Packet::PubRel(response(r)?),
        kind::PUBCOMP => Packet::PubComp(response(r)?),
        kind::SUBSCRIBE => Packet::Subscribe(Subscribe::decode(r, version)?),
        kind::SUBACK => Packet::SubAck(SubAck::decode(r, version)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        kind::UNSUBACK => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        // Remaining length must be 0; `decode` checks nothing is left.
        kind::PINGREQ => Packet::PingReq,
        kind::PINGRESP => Packet::PingResp,
        kind::DISCONNECT => Packet::Disconnect(Disconnect::decode(r, version)?),
        kind::AUTH => Packet::Auth(Auth::decode(r)?),
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

impl Packet {
    /// A CONNECT is always written in its own protocol version.
    fn wire_version(&self, version: ProtocolVersion) -> ProtocolVersion {
        match self {
            Packet::Connect(c) => c.protocol,
            _ => version,
        }
    }

    fn first_byte(&self) -> u8 {
        let (kind, flags) = match self {
            Packet::Connect(_) => (kind::CONNECT, 0),
            Packet::ConnAck(_) => (kind::CONNACK, 0),
            Packet::Publish(p) => {
                // DUP must be 0 for QoS 0 [MQTT-3.3.1-2].
                let dup = p.dup && p.qos != QoS::AtMostOnce;
                (
                    kind::PUBLISH,
                    (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain),
                )
            }
            Packet::PubAck(_) => (kind::PUBACK, 0),
            Packet::PubRec(_) => (kind::PUBREC, 0),
            Packet::PubRel(_) => (kind::PUBREL, 0b0010),
            Packet::PubComp(_) => (kind::PUBCOMP, 0),
            Packet::Subscribe(_) => (kind::SUBSCRIBE, 0b0010),
            Packet::SubAck(_) => (kind::SUBACK, 0),
            Packet::Unsubscribe(_) => (kind::UNSUBSCRIBE, 0b0010),
            Packet::UnsubAck(_) => (kind::UNSUBACK, 0),
            Packet::PingReq => (kind::PINGREQ, 0),
            Packet::PingResp => (kind::PINGRESP, 0),
            Packet::Disconnect(_) => (kind::DISCONNECT, 0),
            Packet::Auth(_) => (kind::AUTH, 0),
        };
        (kind << 4) | flags
    }

    /// Writes everything after the fixed header.
    fn write_body<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(c) => c.write(s),
            Packet::ConnAck(c) => c.write(version, s),
            Packet::Publish(p) => p.write(version, s),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => p.write(version, s),
            Packet::Subscribe(p) => p.write(version, s),
            Packet::SubAck(p) => p.write(version, s),
            Packet::Unsubscribe(p) => p.write(version, s),
            Packet::UnsubAck(p) => p.write(version, s),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(d) => d.write(version, s),
            Packet::Auth(a) => a.write(version, s),
        }
    }
}

/// Encode for the given version (v3.x drops properties/reason codes where the wire has none; for v3 SUBACK map
/// reason codes ≥0x80 to 0x80; v3 CONNACK code is written as is). A CONNECT is written in its own
/// `protocol` version. Nothing is appended to `buf` on error.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let version = packet.wire_version(version);
    let body_len = measure(|c| packet.write_body(version, c))?;
    let remaining = u32::try_from(body_len)
        .ok()
        .filter(|&n| n <= MAX_VARINT)
        .ok_or(EncodeError::PacketTooLarge(body_len))?;
    buf.reserve(1 + varint_len(body_len) + body_len);
    buf.write_u8(packet.first_byte());
    buf.write_varint(remaining, "remaining length")?;
    // The measuring pass ran the same code, so this cannot fail half-way.
    packet.write_body(version, buf)
}

/// Exact encoded size, used to respect a client's Maximum Packet Size [MQTT-3.1.2-24].
/// Returns `usize::MAX` for a packet that [`encode`] would refuse, so such a
/// packet is never judged small enough to send.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let version = packet.wire_version(version);
    match measure(|c| packet.write_body(version, c)) {
        Ok(body_len) if body_len <= MAX_VARINT as usize => 1 + varint_len(body_len) + body_len,
        _ => usize::MAX,
    }
}

/// Shorthand used by several packet modules: properties only exist in MQTT 5.
pub(crate) fn decode_properties_v5(
    r: &mut Reader,
    version: ProtocolVersion,
    ctx: PropertyContext,
) -> Result<super::Properties, DecodeError> {
    if version == ProtocolVersion::V5 {
        super::Properties::decode(r, ctx)
    } else {
        Ok(super::Properties::default())
    }
}

/// Reads a packet identifier, which must be non-zero [MQTT-2.2.1-3].
pub(crate) fn read_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.read_u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}
