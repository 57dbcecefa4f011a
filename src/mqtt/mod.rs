//! MQTT 3.1, 3.1.1 and 5.0 wire codec.
//!
//! [`decode`] turns bytes into [`Packet`]s incrementally and rejects anything the
//! specifications call malformed or a protocol error at the packet level, with the
//! reason code to report ([`DecodeError::reason_code`]). [`encode`] writes the
//! exact bytes [`decode`] reads back. Session-level rules (topic alias mapping,
//! authorization, receive maximum, ...) are left to the broker.

mod ack;
mod connect;
mod disconnect;
mod error;
mod packet;
mod properties;
mod publish;
mod reader;
pub mod reason;
mod subscribe;
pub mod topic;
mod writer;

#[cfg(test)]
mod tests;

pub use ack::PubResponse;
pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use packet::{Packet, decode, encode, encoded_len};
pub use properties::Properties;
pub use publish::Publish;
pub use reason::{v3_connack, v5_connack_to_v3};
pub use subscribe::{SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};
pub use topic::{SharedFilter, is_strict_utf8_clean, matches, parse_shared, valid_topic_filter, valid_topic_name};

/// Protocol version; the discriminant is the CONNECT protocol level byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp".
    V31 = 3,
    /// MQTT 3.1.1, protocol name "MQTT".
    V311 = 4,
    /// MQTT 5.0, protocol name "MQTT".
    V5 = 5,
}

/// Quality of service level [MQTT-4.3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which every version treats as invalid [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}
