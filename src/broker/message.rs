//! An application message as the broker keeps it: shared (`Arc`) between every session it is
//! delivered to, and convertible to and from the PUBLISH that carried it.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mqtt::{Properties, Publish, QoS};

/// The properties that travel with a message from publisher to subscriber unchanged
/// [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// A published message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    pub retain: bool,
    pub properties: MessageProperties,
    /// Absolute expiry time in Unix milliseconds, from the Message Expiry Interval.
    pub expires_at_ms: Option<u64>,
    /// The client id of the publisher, for No Local [MQTT-3.8.3-3]; empty for wills of
    /// sessions that are gone and for messages restored from a backup.
    pub publisher: String,
    /// When it was published (Unix ms). Retained messages are ordered by their version
    /// ([`super::retained`]), not by this; it stands in for the version only for data and peers
    /// from before versions existed.
    pub created_ms: u64,
}

/// Milliseconds since the Unix epoch, the clock that expiry times are kept in so that they
/// survive a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    /// Builds the message carried by an incoming PUBLISH (its topic already resolved from any alias).
    /// `max_expiry_secs` is the operator's `message-expiry/max-interval`.
    pub fn from_publish(publish: &Publish, publisher: &str, max_expiry_secs: u64) -> Message {
        let p = &publish.properties;
        let expiry = match p.message_expiry_interval {
            Some(secs) => Some(u64::from(secs).min(max_expiry_secs)),
            None if max_expiry_secs < u64::from(u32::MAX) + 1 => Some(max_expiry_secs),
            None => None,
        };
        Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            qos: publish.qos as u8,
            retain: publish.retain,
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            expires_at_ms: expiry.map(|secs| now_ms().saturating_add(secs.saturating_mul(1000))),
            publisher: publisher.to_owned(),
            created_ms: now_ms(),
        }
    }

    /// A retained QoS 1 message, for unit tests.
    #[cfg(test)]
    pub fn retained_for_test(topic: &str, payload: &'static str, publisher: &str, created_ms: u64) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: 1,
            retain: true,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: publisher.into(),
            created_ms,
        }
    }

    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The PUBLISH that delivers this message, with the remaining expiry interval
    /// [MQTT-3.3.2-6] and the given delivery attributes.
    pub fn to_publish(&self, qos: QoS, retain: bool, packet_id: u16, subscription_ids: &[u32], now_ms: u64) -> Publish {
        let m = &self.properties;
        let properties = Properties {
            payload_format_indicator: m.payload_format_indicator,
            content_type: m.content_type.clone(),
            response_topic: m.response_topic.clone(),
            correlation_data: m.correlation_data.clone(),
            user_properties: m.user_properties.clone(),
            message_expiry_interval: self
                .expires_at_ms
                .map(|at| (at.saturating_sub(now_ms).div_ceil(1000)).min(u64::from(u32::MAX)) as u32),
            subscription_identifiers: subscription_ids.to_vec(),
            ..Properties::default()
        };
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id,
            properties,
            payload: self.payload.clone(),
        }
    }
}
