//! PUBLISH: application messages in either direction.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::packet::{decode_properties_v5, read_packet_id};
use super::properties::PropertyContext;
use super::reader::Reader;
use super::writer::Sink;
use super::{Properties, ProtocolVersion, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Forced to false on encode for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be "" in v5 when a topic alias is used.
    pub topic: String,
    /// 0 for QoS 0 (not on the wire).
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    /// `flags` are the fixed header flags, already checked for QoS 3 and DUP on QoS 0.
    pub(crate) fn decode(flags: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let topic = r.read_string("topic name")?;
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { read_packet_id(r)? };
        let properties = decode_properties_v5(r, version, PropertyContext::Publish)?;

        if topic.contains(['+', '#']) {
            // [MQTT-3.3.2-2]
            return Err(DecodeError::InvalidTopicName);
        }
        if topic.is_empty() {
            if version != ProtocolVersion::V5 {
                // [MQTT-4.7.3-1]
                return Err(DecodeError::InvalidTopicName);
            }
            if properties.topic_alias.is_none() {
                // Only a topic alias can stand in for the name [MQTT-3.3.2-1]; whether the
                // alias is known is the broker's check.
                return Err(DecodeError::ProtocolError("empty topic name without a topic alias"));
            }
        }
        Ok(Publish {
            // 3.x clients that set DUP on QoS 0 are tolerated, but the flag means nothing
            // there [MQTT-3.3.1-2]; v5 refuses it in the fixed header check.
            dup: flags & 0x08 != 0 && qos != QoS::AtMostOnce,
            qos,
            retain: flags & 0x01 != 0,
            topic,
            packet_id,
            properties,
            payload: r.take_rest(),
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_str(&self.topic, "topic name")?;
        if self.qos != QoS::AtMostOnce {
            s.write_u16(self.packet_id);
        }
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::Publish, s)?;
        }
        s.write_slice(&self.payload);
        Ok(())
    }
}
