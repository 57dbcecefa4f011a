//! Decode and encode errors.
//!
//! Every decode error maps to the MQTT 5 reason code the broker should send (in a
//! CONNACK or DISCONNECT) before closing the connection; v3.x connections are
//! simply closed [MQTT-4.8.0-1].

use super::reason;

/// Why an incoming packet could not be decoded.
///
/// Variants name the field or rule that failed so logs are actionable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header's remaining length used a 5th byte [MQTT-1.5.5-1] / [MQTT-2.2.3].
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A variable byte integer inside the packet (property length, subscription identifier) is too long.
    #[error("malformed variable byte integer in {0}")]
    MalformedVarInt(&'static str),
    /// The packet ended before the named field was complete.
    #[error("packet too short: missing {0}")]
    MissingData(&'static str),
    /// Bytes left over after the named packet or section was fully decoded.
    #[error("unexpected trailing bytes after {0}")]
    TrailingData(&'static str),
    /// A UTF-8 string field is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// A UTF-8 string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// CONNECT protocol name is neither "MQTT" nor "MQIsdp" [MQTT-3.1.2-1].
    #[error("invalid protocol name {0:?}")]
    InvalidProtocolName(String),
    /// CONNECT protocol level is not one we speak for the given name [MQTT-3.1.2-2].
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocolVersion(u8),
    /// Packet type 0, or AUTH (15) on a v3.x connection.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed header flags are wrong for the packet type (the value is the packet type) [MQTT-2.1.3-1].
    #[error("invalid fixed header flags for packet type {0}")]
    InvalidFlags(u8),
    /// A QoS field holds 3 [MQTT-3.3.1-4].
    #[error("invalid QoS value 3")]
    InvalidQoS,
    /// A reserved bit is set (CONNECT flag bit 0 [MQTT-3.1.2-3], subscription options bits 6-7 [MQTT-3.8.3-5]).
    #[error("reserved bit set")]
    ReservedBitSet,
    /// Any other structural violation that the spec calls a Malformed Packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Unknown MQTT 5 property identifier.
    #[error("invalid property identifier 0x{0:02X}")]
    InvalidPropertyId(u8),
    /// A known property on a packet type that does not allow it (MQTT 5 table 2-4).
    #[error("property 0x{id:02X} not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    /// A single-valued property appears more than once.
    #[error("duplicate property 0x{0:02X}")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range (e.g. Receive Maximum 0).
    #[error("invalid value for property 0x{0:02X}")]
    InvalidPropertyValue(u8),
    /// Packet identifier 0 where a non-zero one is required [MQTT-2.2.1-3].
    #[error("packet identifier must be non-zero")]
    ZeroPacketId,
    /// SUBSCRIBE with no topic filters [MQTT-3.8.3-3].
    #[error("SUBSCRIBE contains no topic filters")]
    EmptySubscribe,
    /// UNSUBSCRIBE with no topic filters [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE contains no topic filters")]
    EmptyUnsubscribe,
    /// PUBLISH topic name contains a wildcard or is empty [MQTT-3.3.2-2], [MQTT-4.7.3-1].
    #[error("invalid topic name in PUBLISH")]
    InvalidTopicName,
    /// Whole packet (fixed header included) exceeds our Maximum Packet Size [MQTT-3.2.2-15].
    #[error("packet of {size} bytes exceeds maximum of {max}")]
    PacketTooLarge { size: u32, max: u32 },
    /// Any other rule the spec calls a Protocol Error.
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code to report for this error (CONNACK or DISCONNECT).
    pub fn reason_code(&self) -> u8 {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            // A client speaking a protocol we do not know gets "unsupported protocol
            // version" (v3 CONNACK return code 1) rather than a bare disconnect.
            UnsupportedProtocolVersion(_) | InvalidProtocolName(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            InvalidTopicName => reason::TOPIC_NAME_INVALID,
            PropertyNotAllowed { .. }
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | ZeroPacketId
            | EmptySubscribe
            | EmptyUnsubscribe
            | ProtocolError(_) => reason::PROTOCOL_ERROR,
            MalformedRemainingLength
            | MalformedVarInt(_)
            | MissingData(_)
            | TrailingData(_)
            | InvalidUtf8(_)
            | NullCharacter
            | InvalidPacketType(_)
            | InvalidFlags(_)
            | InvalidQoS
            | ReservedBitSet
            | Malformed(_)
            | InvalidPropertyId(_) => reason::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded. Encoding never writes a partial packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A UTF-8 string field is longer than 65,535 bytes [MQTT-1.5.4].
    #[error("string too long in {0}")]
    StringTooLong(&'static str),
    /// A binary field is longer than 65,535 bytes [MQTT-1.5.6].
    #[error("binary data too long in {0}")]
    BinaryTooLong(&'static str),
    /// A string contains U+0000, which the peer must reject [MQTT-1.5.4-2].
    #[error("string contains U+0000 in {0}")]
    NullCharacter(&'static str),
    /// A variable byte integer value exceeds 268,435,455.
    #[error("value too large for a variable byte integer in {0}")]
    VarIntTooLarge(&'static str),
    /// Remaining length would exceed 268,435,455 bytes.
    #[error("packet body of {0} bytes is too large to encode")]
    PacketTooLarge(usize),
    /// The packet type does not exist in the target protocol version (AUTH on v3.x).
    #[error("{0} cannot be encoded for this protocol version")]
    UnsupportedInVersion(&'static str),
}
