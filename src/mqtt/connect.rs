//! CONNECT (with its will message) and CONNACK: connection establishment.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::packet::decode_properties_v5;
use super::properties::PropertyContext;
use super::reader::Reader;
use super::writer::Sink;
use super::{Properties, ProtocolVersion, QoS};

/// CONNECT flag bits [MQTT-3.1.2.3].
mod flag {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

/// Will message published if the connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay, payload format, message expiry, content type,
    /// response topic, correlation data, user properties).
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// From protocol name + level: "MQIsdp"/3, "MQTT"/4, "MQTT"/5. Also selects the
    /// version a CONNECT is encoded in.
    pub protocol: ProtocolVersion,
    /// "Clean session" in v3.x.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// May be empty; whether that is acceptable is the broker's decision [MQTT-3.1.3-6].
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

impl Connect {
    /// Decodes a CONNECT body; the version comes from the packet itself.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.read_string("protocol name")?;
        let level = r.read_u8("protocol level")?;
        let protocol = match (name.as_str(), level) {
            ("MQIsdp", 3) => ProtocolVersion::V31,
            ("MQTT", 4) => ProtocolVersion::V311,
            ("MQTT", 5) => ProtocolVersion::V5,
            // Known name, unknown level: answer with "unacceptable protocol version" [MQTT-3.1.2-2].
            ("MQIsdp" | "MQTT", other) => return Err(DecodeError::UnsupportedProtocolVersion(other)),
            // [MQTT-3.1.2-1]
            _ => return Err(DecodeError::InvalidProtocolName(name)),
        };
        let v5 = protocol == ProtocolVersion::V5;

        let flags = r.read_u8("connect flags")?;
        if flags & flag::RESERVED != 0 {
            // [MQTT-3.1.2-3]
            return Err(DecodeError::ReservedBitSet);
        }
        let will_flag = flags & flag::WILL != 0;
        let will_qos_bits = (flags >> flag::WILL_QOS_SHIFT) & 0x03;
        let will_retain = flags & flag::WILL_RETAIN != 0;
        let has_password = flags & flag::PASSWORD != 0;
        let has_username = flags & flag::USERNAME != 0;
        // Will QoS 3 is malformed [MQTT-3.1.2-12].
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS)?;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]
            return Err(DecodeError::Malformed("will QoS or retain set without the will flag"));
        }
        if !v5 && has_password && !has_username {
            // 3.1.1 [MQTT-3.1.2-22]; MQTT 5 allows a password without a user name.
            return Err(DecodeError::ProtocolError("password flag set without user name flag"));
        }

        let keep_alive = r.read_u16("keep alive")?;
        let properties = decode_properties_v5(r, protocol, PropertyContext::Connect)?;
        let client_id = r.read_string("client identifier")?;
        // Payload order is fixed: client id, will properties, will topic, will payload,
        // user name, password [MQTT-3.1.3-1].
        let will = if will_flag {
            let properties = decode_properties_v5(r, protocol, PropertyContext::Will)?;
            let topic = r.read_string("will topic")?;
            let payload = r.read_binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.read_string("user name")?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.read_binary("password")?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & flag::CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        let (name, level) = match self.protocol {
            ProtocolVersion::V31 => ("MQIsdp", 3),
            ProtocolVersion::V311 => ("MQTT", 4),
            ProtocolVersion::V5 => ("MQTT", 5),
        };
        let v5 = self.protocol == ProtocolVersion::V5;
        s.write_str(name, "protocol name")?;
        s.write_u8(level);

        let mut flags = 0;
        if self.clean_start {
            flags |= flag::CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= flag::WILL | ((will.qos as u8) << flag::WILL_QOS_SHIFT);
            if will.retain {
                flags |= flag::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= flag::USERNAME;
        }
        if self.password.is_some() {
            flags |= flag::PASSWORD;
        }
        s.write_u8(flags);
        s.write_u16(self.keep_alive);
        if v5 {
            self.properties.write(PropertyContext::Connect, s)?;
        }
        s.write_str(&self.client_id, "client identifier")?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(PropertyContext::Will, s)?;
            }
            s.write_str(&will.topic, "will topic")?;
            s.write_binary(&will.payload, "will payload")?;
        }
        if let Some(username) = &self.username {
            s.write_str(username, "user name")?;
        }
        if let Some(password) = &self.password {
            s.write_binary(password, "password")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Not on the wire in MQTT 3.1 (always decoded as false there).
    pub session_present: bool,
    /// MQTT 5 reason code; for v3.x the 0..5 return code (see [`super::v5_connack_to_v3`]).
    pub code: u8,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.read_u8("connect acknowledge flags")?;
        // Bits 7-1 are reserved [MQTT-3.2.2-1]; in 3.1 the whole byte is reserved.
        let reserved = if version == ProtocolVersion::V31 { 0xFF } else { 0xFE };
        if flags & reserved != 0 {
            return Err(DecodeError::ReservedBitSet);
        }
        let code = r.read_u8("connect reason code")?;
        let properties = decode_properties_v5(r, version, PropertyContext::ConnAck)?;
        Ok(ConnAck {
            session_present: flags & 0x01 != 0,
            code,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        let session_present = self.session_present && version != ProtocolVersion::V31;
        s.write_u8(u8::from(session_present));
        s.write_u8(self.code);
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::ConnAck, s)?;
        }
        Ok(())
    }
}
