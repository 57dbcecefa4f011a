//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use super::error::{DecodeError, EncodeError};
use super::packet::{decode_properties_v5, read_packet_id};
use super::properties::PropertyContext;
use super::reader::Reader;
use super::writer::Sink;
use super::{Properties, ProtocolVersion, QoS};

/// Per-filter options. In v3.x only `qos` exists on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 = send retained on subscribe, 1 = only if new subscription, 2 = never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if version != ProtocolVersion::V5 {
            // Upper 6 bits reserved and QoS 3 invalid: malformed [MQTT-3.8.3-4] (3.1.1).
            if byte & 0xFC != 0 {
                return Err(DecodeError::ReservedBitSet);
            }
            let qos = QoS::from_u8(byte).ok_or(DecodeError::InvalidQoS)?;
            return Ok(SubscriptionOptions {
                qos,
                ..Default::default()
            });
        }
        if byte & 0xC0 != 0 {
            // [MQTT-3.8.3-5]
            return Err(DecodeError::ReservedBitSet);
        }
        // MQTT 5 section 3.8.3.1 calls QoS 3 and Retain Handling 3 protocol errors.
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::ProtocolError("subscription maximum QoS is 3"))?;
        let retain_handling = (byte >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::ProtocolError("retain handling is 3"));
        }
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn to_byte(self, version: ProtocolVersion) -> u8 {
        let qos = self.qos as u8;
        if version != ProtocolVersion::V5 {
            return qos;
        }
        qos | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling & 0x03) << 4)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    /// Filters are not validated here: an invalid one gets a per-filter SUBACK code.
    pub filters: Vec<(String, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = decode_properties_v5(r, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.read_string("topic filter")?;
            let options = SubscriptionOptions::decode(r.read_u8("subscription options")?, version)?;
            if options.no_local && filter.starts_with("$share/") {
                // [MQTT-3.8.3-4]
                return Err(DecodeError::ProtocolError("no local set on a shared subscription"));
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            // [MQTT-3.8.3-3]
            return Err(DecodeError::EmptySubscribe);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::Subscribe, s)?;
        }
        for (filter, options) in &self.filters {
            s.write_str(filter, "topic filter")?;
            s.write_u8(options.to_byte(version));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// One per filter, in order. v3 allows only 0, 1, 2 and 0x80; encode maps any
    /// failure code (>= 0x80) to 0x80.
    pub reason_codes: Vec<u8>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = decode_properties_v5(r, version, PropertyContext::SubAck)?;
        let reason_codes = r.take_rest().to_vec();
        // 3.x return codes are 0, 1, 2 or 0x80 only [MQTT-3.9.3-2].
        if version != ProtocolVersion::V5 && reason_codes.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
            return Err(DecodeError::Malformed(
                "SUBACK return code other than 0, 1, 2 or 0x80 [MQTT-3.9.3-2]",
            ));
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::SubAck, s)?;
            s.write_slice(&self.reason_codes);
        } else {
            for &code in &self.reason_codes {
                s.write_u8(if code >= 0x80 { 0x80 } else { code });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = decode_properties_v5(r, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.read_string("topic filter")?);
        }
        if filters.is_empty() {
            // [MQTT-3.10.3-2]
            return Err(DecodeError::EmptyUnsubscribe);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::Unsubscribe, s)?;
        }
        for filter in &self.filters {
            s.write_str(filter, "topic filter")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// MQTT 5 only; v3.x UNSUBACK has no payload, so this decodes empty and is not written.
    pub reason_codes: Vec<u8>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = decode_properties_v5(r, version, PropertyContext::UnsubAck)?;
        // In v3.x anything left is rejected as trailing data by the caller.
        let reason_codes = if version == ProtocolVersion::V5 {
            r.take_rest().to_vec()
        } else {
            Vec::new()
        };
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::UnsubAck, s)?;
            s.write_slice(&self.reason_codes);
        }
        Ok(())
    }
}
