//! PUBACK, PUBREC, PUBREL and PUBCOMP, which share one body layout.

use super::error::{DecodeError, EncodeError};
use super::packet::read_packet_id;
use super::properties::PropertyContext;
use super::reader::Reader;
use super::writer::Sink;
use super::{Properties, ProtocolVersion};

/// PUBACK, PUBREC, PUBREL, PUBCOMP share this body. v5 short forms: reason 0 and no properties may be omitted on encode (omit when reason==0 and properties empty) and must be accepted on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    /// MQTT 5 reason code; always 0 (success) for v3.x.
    pub reason: u8,
    pub properties: Properties,
}

impl PubResponse {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let mut reason = 0;
        let mut properties = Properties::default();
        // Remaining length 2: success, no properties; 3: reason only; 4+: reason and
        // properties (MQTT 5 section 3.4.2.1).
        if version == ProtocolVersion::V5 && !r.is_empty() {
            reason = r.read_u8("reason code")?;
            if !r.is_empty() {
                properties = Properties::decode(r, PropertyContext::PubResponse)?;
            }
        }
        Ok(PubResponse {
            packet_id,
            reason,
            properties,
        })
    }

    /// Writes the shortest form the spec allows.
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        s.write_u16(self.packet_id);
        if version != ProtocolVersion::V5 {
            return Ok(());
        }
        let no_properties = self.properties.is_empty_for(PropertyContext::PubResponse);
        if self.reason == 0 && no_properties {
            return Ok(());
        }
        s.write_u8(self.reason);
        if !no_properties {
            self.properties.write(PropertyContext::PubResponse, s)?;
        }
        Ok(())
    }
}
