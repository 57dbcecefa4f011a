//! DISCONNECT and AUTH: both are "reason code + optional properties", and both
//! may shrink to an empty body when the reason is 0 with no properties.

use super::error::{DecodeError, EncodeError};
use super::properties::PropertyContext;
use super::reader::Reader;
use super::writer::Sink;
use super::{Properties, ProtocolVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// MQTT 5 reason code; v3.x DISCONNECT has no body (decoded as 0, not written).
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

/// Remaining length 0: reason 0, no properties; 1: reason only; more: reason and
/// properties (MQTT 5 sections 3.14.2.1 and 3.15.2.1).
fn decode_reason_body(r: &mut Reader, ctx: PropertyContext) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.read_u8("reason code")?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, ctx)?
    };
    Ok((reason, properties))
}

/// Writes the shortest valid body.
fn write_reason_body<S: Sink>(
    reason: u8,
    properties: &Properties,
    ctx: PropertyContext,
    s: &mut S,
) -> Result<(), EncodeError> {
    let no_properties = properties.is_empty_for(ctx);
    if reason == 0 && no_properties {
        return Ok(());
    }
    s.write_u8(reason);
    if !no_properties {
        properties.write(ctx, s)?;
    }
    Ok(())
}

impl Disconnect {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if version != ProtocolVersion::V5 {
            // v3.x: remaining length must be 0; the caller rejects trailing bytes.
            return Ok(Disconnect {
                reason: 0,
                properties: Properties::default(),
            });
        }
        let (reason, properties) = decode_reason_body(r, PropertyContext::Disconnect)?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if version != ProtocolVersion::V5 {
            return Ok(());
        }
        write_reason_body(self.reason, &self.properties, PropertyContext::Disconnect, s)
    }
}

impl Auth {
    /// AUTH only exists in MQTT 5; the fixed header check rejects it on v3.x.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let (reason, properties) = decode_reason_body(r, PropertyContext::Auth)?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if version != ProtocolVersion::V5 {
            return Err(EncodeError::UnsupportedInVersion("AUTH"));
        }
        write_reason_body(self.reason, &self.properties, PropertyContext::Auth, s)
    }
}
