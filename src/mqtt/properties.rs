//! MQTT 5 properties (section 2.2.2): one struct for all packet types, with the
//! per-packet allow-list of table 2-4 enforced on decode and applied on encode.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::reader::Reader;
use super::writer::{Sink, measure};

/// Property identifiers (MQTT 5 table 2-4).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

use id::*;

/// All MQTT 5 properties in one struct; decode rejects a property not allowed on the packet type
/// (protocol error 0x82) and a duplicated single-valued property (0x82).
///
/// On encode, properties not allowed on the packet being written are silently
/// skipped, so a struct copied from another packet can never produce output the
/// peer must reject. v3.x encodes ignore properties entirely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Varint, 0 is a protocol error; may repeat in PUBLISH only (a SUBSCRIBE encodes just the first).
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    /// 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    /// 0 is a protocol error [MQTT-3.3.2-8].
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// Order preserved; may repeat [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
    /// 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Which packet (or the CONNECT will) a property block belongs to; decides the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Will => "will properties",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubResponse => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// MQTT 5 table 2-4.
    fn allowed(self) -> &'static [u8] {
        match self {
            Self::Connect => &[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ],
            Self::Will => &[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ],
            Self::ConnAck => &[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ],
            Self::Publish => &[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ],
            Self::PubResponse | Self::SubAck | Self::UnsubAck => &[REASON_STRING, USER_PROPERTY],
            Self::Subscribe => &[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY],
            Self::Unsubscribe => &[USER_PROPERTY],
            Self::Disconnect => &[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY],
            Self::Auth => &[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY],
        }
    }

    fn allows(self, id: u8) -> bool {
        self.allowed().contains(&id)
    }
}

/// Every identifier defined by MQTT 5, to tell "unknown" (malformed) from "not allowed here" (protocol error).
const KNOWN_IDS: [u8; 27] = [
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    SESSION_EXPIRY_INTERVAL,
    ASSIGNED_CLIENT_IDENTIFIER,
    SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    WILL_DELAY_INTERVAL,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_ALIAS,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
];

/// Stores a single-valued property, rejecting a second occurrence.
fn set_once<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// Flags like Maximum QoS or Retain Available: any value but 0 or 1 is a protocol error.
fn zero_or_one(v: u8, id: u8) -> Result<u8, DecodeError> {
    if v <= 1 {
        Ok(v)
    } else {
        Err(DecodeError::InvalidPropertyValue(id))
    }
}

/// Receive Maximum, Topic Alias, Maximum Packet Size, Subscription Identifier: 0 is a protocol error.
fn non_zero<T: PartialEq + Default>(v: T, id: u8) -> Result<T, DecodeError> {
    if v == T::default() {
        Err(DecodeError::InvalidPropertyValue(id))
    } else {
        Ok(v)
    }
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length followed by that many bytes of properties.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.read_varint("property length")?;
        let mut r = r.sub_reader(len as usize, "properties")?;
        let mut p = Properties::default();
        while !r.is_empty() {
            // The identifier is formally a variable byte integer, but every defined
            // one fits in a single byte, so a continuation bit means "unknown".
            let id = r.read_u8("property identifier")?;
            if !KNOWN_IDS.contains(&id) {
                return Err(DecodeError::InvalidPropertyId(id));
            }
            if !ctx.allows(id) {
                return Err(DecodeError::PropertyNotAllowed { id, packet: ctx.name() });
            }
            p.decode_one(id, &mut r, ctx)?;
        }
        Ok(p)
    }

    fn decode_one(&mut self, id: u8, r: &mut Reader, ctx: PropertyContext) -> Result<(), DecodeError> {
        const WHAT: &str = "property value";
        match id {
            PAYLOAD_FORMAT_INDICATOR => set_once(
                &mut self.payload_format_indicator,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            MESSAGE_EXPIRY_INTERVAL => set_once(&mut self.message_expiry_interval, r.read_u32(WHAT)?, id),
            CONTENT_TYPE => set_once(&mut self.content_type, r.read_string("content type")?, id),
            RESPONSE_TOPIC => set_once(&mut self.response_topic, r.read_string("response topic")?, id),
            CORRELATION_DATA => set_once(&mut self.correlation_data, r.read_binary("correlation data")?, id),
            SUBSCRIPTION_IDENTIFIER => {
                let v = non_zero(r.read_varint("subscription identifier")?, id)?;
                // Several identifiers may reach a subscriber in one PUBLISH [MQTT-3.3.4-4],
                // but a SUBSCRIBE carries at most one.
                if ctx != PropertyContext::Publish && !self.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(id));
                }
                self.subscription_identifiers.push(v);
                Ok(())
            }
            SESSION_EXPIRY_INTERVAL => set_once(&mut self.session_expiry_interval, r.read_u32(WHAT)?, id),
            ASSIGNED_CLIENT_IDENTIFIER => set_once(
                &mut self.assigned_client_identifier,
                r.read_string("assigned client identifier")?,
                id,
            ),
            SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, r.read_u16(WHAT)?, id),
            AUTHENTICATION_METHOD => set_once(
                &mut self.authentication_method,
                r.read_string("authentication method")?,
                id,
            ),
            AUTHENTICATION_DATA => set_once(&mut self.authentication_data, r.read_binary("authentication data")?, id),
            REQUEST_PROBLEM_INFORMATION => set_once(
                &mut self.request_problem_information,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, r.read_u32(WHAT)?, id),
            REQUEST_RESPONSE_INFORMATION => set_once(
                &mut self.request_response_information,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            RESPONSE_INFORMATION => set_once(
                &mut self.response_information,
                r.read_string("response information")?,
                id,
            ),
            SERVER_REFERENCE => set_once(&mut self.server_reference, r.read_string("server reference")?, id),
            REASON_STRING => set_once(&mut self.reason_string, r.read_string("reason string")?, id),
            RECEIVE_MAXIMUM => set_once(&mut self.receive_maximum, non_zero(r.read_u16(WHAT)?, id)?, id),
            TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, r.read_u16(WHAT)?, id),
            TOPIC_ALIAS => set_once(&mut self.topic_alias, non_zero(r.read_u16(WHAT)?, id)?, id),
            MAXIMUM_QOS => set_once(&mut self.maximum_qos, zero_or_one(r.read_u8(WHAT)?, id)?, id),
            RETAIN_AVAILABLE => set_once(&mut self.retain_available, zero_or_one(r.read_u8(WHAT)?, id)?, id),
            USER_PROPERTY => {
                let key = r.read_string("user property name")?;
                let value = r.read_string("user property value")?;
                self.user_properties.push((key, value));
                Ok(())
            }
            MAXIMUM_PACKET_SIZE => set_once(&mut self.maximum_packet_size, non_zero(r.read_u32(WHAT)?, id)?, id),
            WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                &mut self.wildcard_subscription_available,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                &mut self.subscription_identifier_available,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                &mut self.shared_subscription_available,
                zero_or_one(r.read_u8(WHAT)?, id)?,
                id,
            ),
            _ => Err(DecodeError::InvalidPropertyId(id)),
        }
    }

    /// Writes the property length and the properties allowed in `ctx`.
    pub(crate) fn write<S: Sink>(&self, ctx: PropertyContext, s: &mut S) -> Result<(), EncodeError> {
        let len = measure(|c| self.write_entries(ctx, c))?;
        let len = u32::try_from(len).map_err(|_| EncodeError::VarIntTooLarge("property length"))?;
        s.write_varint(len, "property length")?;
        self.write_entries(ctx, s)
    }

    /// True when nothing would be written for `ctx` (enables the short ack forms).
    pub(crate) fn is_empty_for(&self, ctx: PropertyContext) -> bool {
        matches!(measure(|c| self.write_entries(ctx, c)), Ok(0))
    }

    fn write_entries<S: Sink>(&self, ctx: PropertyContext, s: &mut S) -> Result<(), EncodeError> {
        let mut w = EntryWriter { s, ctx };
        w.byte(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w.four(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.string(CONTENT_TYPE, &self.content_type, "content type")?;
        w.string(RESPONSE_TOPIC, &self.response_topic, "response topic")?;
        w.binary(CORRELATION_DATA, &self.correlation_data, "correlation data")?;
        // Absent fields are skipped before looking up whether `ctx` allows them: most packets
        // carry no property at all, and this runs two or three times per packet written.
        if !self.subscription_identifiers.is_empty() && w.allows(SUBSCRIPTION_IDENTIFIER) {
            // Only PUBLISH may carry more than one.
            let count = if ctx == PropertyContext::Publish {
                self.subscription_identifiers.len()
            } else {
                1
            };
            for &v in self.subscription_identifiers.iter().take(count) {
                w.s.write_u8(SUBSCRIPTION_IDENTIFIER);
                w.s.write_varint(v, "subscription identifier")?;
            }
        }
        w.four(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.string(
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
            "assigned client identifier",
        )?;
        w.two(SERVER_KEEP_ALIVE, self.server_keep_alive);
        w.string(
            AUTHENTICATION_METHOD,
            &self.authentication_method,
            "authentication method",
        )?;
        w.binary(AUTHENTICATION_DATA, &self.authentication_data, "authentication data")?;
        w.byte(REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        w.four(WILL_DELAY_INTERVAL, self.will_delay_interval);
        w.byte(REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        w.string(RESPONSE_INFORMATION, &self.response_information, "response information")?;
        w.string(SERVER_REFERENCE, &self.server_reference, "server reference")?;
        w.string(REASON_STRING, &self.reason_string, "reason string")?;
        w.two(RECEIVE_MAXIMUM, self.receive_maximum);
        w.two(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w.two(TOPIC_ALIAS, self.topic_alias);
        w.byte(MAXIMUM_QOS, self.maximum_qos);
        w.byte(RETAIN_AVAILABLE, self.retain_available);
        if !self.user_properties.is_empty() && w.allows(USER_PROPERTY) {
            for (key, value) in &self.user_properties {
                w.s.write_u8(USER_PROPERTY);
                w.s.write_str(key, "user property name")?;
                w.s.write_str(value, "user property value")?;
            }
        }
        w.four(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w.byte(WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        w.byte(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        w.byte(SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        Ok(())
    }
}

/// Writes `id + value` for set properties that `ctx` allows.
struct EntryWriter<'a, S> {
    s: &'a mut S,
    ctx: PropertyContext,
}

impl<S: Sink> EntryWriter<'_, S> {
    fn allows(&self, id: u8) -> bool {
        self.ctx.allows(id)
    }

    fn byte(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v
            && self.allows(id)
        {
            self.s.write_u8(id);
            self.s.write_u8(v);
        }
    }

    fn two(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v
            && self.allows(id)
        {
            self.s.write_u8(id);
            self.s.write_u16(v);
        }
    }

    fn four(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v
            && self.allows(id)
        {
            self.s.write_u8(id);
            self.s.write_u32(v);
        }
    }

    fn string(&mut self, id: u8, v: &Option<String>, what: &'static str) -> Result<(), EncodeError> {
        if let Some(v) = v
            && self.allows(id)
        {
            self.s.write_u8(id);
            self.s.write_str(v, what)?;
        }
        Ok(())
    }

    fn binary(&mut self, id: u8, v: &Option<Bytes>, what: &'static str) -> Result<(), EncodeError> {
        if let Some(v) = v
            && self.allows(id)
        {
            self.s.write_u8(id);
            self.s.write_binary(v, what)?;
        }
        Ok(())
    }
}
