//! The typed configuration and HiveMQ's defaults (REFERENCE §4, CE `config.xsd`).

use serde::Serialize;

use super::cluster::ClusterConfig;
use super::enterprise::{ControlCenterConfig, HealthApiConfig, OverloadProtectionConfig, RestApiConfig};
use super::listeners::{Listener, TcpListenerConfig};

/// The whole effective configuration of a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// MQTT listeners. Never empty: with none configured, one TCP listener on 0.0.0.0:1883.
    pub listeners: Vec<Listener>,
    /// `<mqtt>`.
    pub mqtt: MqttConfig,
    /// `<restrictions>`.
    pub restrictions: Restrictions,
    /// `<security>`.
    pub security: Security,
    /// `<persistence><mode>`.
    pub persistence: PersistenceMode,
    /// `<anonymous-usage-statistics><enabled>` (schema default false; CE's shipped file sets true).
    pub anonymous_usage_statistics: bool,
    /// `<cluster>`.
    pub cluster: ClusterConfig,
    /// `<rest-api>` (enterprise).
    pub rest_api: RestApiConfig,
    /// `<health-api>` (enterprise).
    pub health_api: HealthApiConfig,
    /// `<control-center>` (enterprise).
    pub control_center: ControlCenterConfig,
    /// `<overload-protection>` (enterprise).
    pub overload_protection: OverloadProtectionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![Listener::Tcp(TcpListenerConfig::default())],
            mqtt: MqttConfig::default(),
            restrictions: Restrictions::default(),
            security: Security::default(),
            persistence: PersistenceMode::default(),
            anonymous_usage_statistics: false,
            cluster: ClusterConfig::default(),
            rest_api: RestApiConfig::default(),
            health_api: HealthApiConfig::default(),
            control_center: ControlCenterConfig::default(),
            overload_protection: OverloadProtectionConfig::default(),
        }
    }
}

/// "Never" for `message-expiry` and `session-expiry` `max-interval` (seconds): 2^32.
pub const EXPIRY_NEVER: u64 = 4_294_967_296;

/// Largest `max-packet-size` (bytes): 268435460, MQTT's maximum packet size.
pub const MAX_PACKET_SIZE: u32 = 268_435_460;

/// `<mqtt>`: protocol limits and features.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MqttConfig {
    /// `queued-messages/max-queue-size` (default 1000).
    pub max_queue_size: u64,
    /// `queued-messages/strategy` (default `discard`).
    pub queue_strategy: QueueStrategy,
    /// `retained-messages/enabled` (default true).
    pub retained_messages_enabled: bool,
    /// `wildcard-subscriptions/enabled` (default true).
    pub wildcard_subscriptions_enabled: bool,
    /// `shared-subscriptions/enabled` (default true).
    pub shared_subscriptions_enabled: bool,
    /// `subscription-identifier/enabled` (default true).
    pub subscription_identifier_enabled: bool,
    /// `quality-of-service/max-qos`: 0, 1 or 2 (default 2).
    pub max_qos: u8,
    /// `topic-alias/enabled` (default true).
    pub topic_alias_enabled: bool,
    /// `topic-alias/max-per-client`: 1..=65535 (default 5).
    pub topic_alias_max_per_client: u16,
    /// `message-expiry/max-interval` in seconds, 0..=4294967296; [`EXPIRY_NEVER`] means never.
    pub message_expiry_max_interval: u64,
    /// `session-expiry/max-interval` in seconds, 0..=4294967296; [`EXPIRY_NEVER`] means never.
    pub session_expiry_max_interval: u64,
    /// `keep-alive/max-keep-alive` in seconds (default 65535).
    pub max_keep_alive: u16,
    /// `keep-alive/allow-unlimited` (default true).
    pub allow_unlimited_keep_alive: bool,
    /// `packets/max-packet-size` in bytes, 0..=268435460 (default 268435460).
    pub max_packet_size: u32,
    /// `receive-maximum/server-receive-maximum`: 1..=65535 (default 10).
    pub server_receive_maximum: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_queue_size: 1000,
            queue_strategy: QueueStrategy::Discard,
            retained_messages_enabled: true,
            wildcard_subscriptions_enabled: true,
            shared_subscriptions_enabled: true,
            subscription_identifier_enabled: true,
            max_qos: 2,
            topic_alias_enabled: true,
            topic_alias_max_per_client: 5,
            message_expiry_max_interval: EXPIRY_NEVER,
            session_expiry_max_interval: EXPIRY_NEVER,
            max_keep_alive: 65535,
            allow_unlimited_keep_alive: true,
            max_packet_size: MAX_PACKET_SIZE,
            server_receive_maximum: 10,
        }
    }
}

/// `queued-messages/strategy`: what to do when a client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueueStrategy {
    /// `discard`: drop the new message.
    #[default]
    Discard,
    /// `discard-oldest`: drop the oldest queued message.
    DiscardOldest,
}

/// `<restrictions>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restrictions {
    /// `max-connections`: -1 (default) means unlimited; otherwise ≥ 0.
    pub max_connections: i64,
    /// `max-client-id-length`: 1..=65535 (default 65535).
    pub max_client_id_length: u32,
    /// `max-topic-length`: 1..=65535 (default 65535).
    pub max_topic_length: u32,
    /// `no-connect-idle-timeout` in milliseconds, ≥ 1 (default 10000).
    pub no_connect_idle_timeout_ms: u64,
    /// `incoming-bandwidth-throttling` in bytes per second; 0 (default) means unlimited.
    pub incoming_bandwidth_throttling: u64,
}

impl Default for Restrictions {
    fn default() -> Self {
        Restrictions {
            max_connections: -1,
            max_client_id_length: 65535,
            max_topic_length: 65535,
            no_connect_idle_timeout_ms: 10_000,
            incoming_bandwidth_throttling: 0,
        }
    }
}

/// `<security>`: each setting is `<x><enabled>bool</enabled></x>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Security {
    /// `payload-format-validation` (default false).
    pub payload_format_validation: bool,
    /// `utf8-validation` (default true).
    pub utf8_validation: bool,
    /// `allow-empty-client-id` (default true).
    pub allow_empty_client_id: bool,
    /// `allow-request-problem-information` (default true).
    pub allow_request_problem_information: bool,
    /// `control-center-audit-log` (enterprise; used by HiveMQ's k8s image). Default true:
    /// **UNVERIFIED**, our choice.
    pub control_center_audit_log: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            payload_format_validation: false,
            utf8_validation: true,
            allow_empty_client_id: true,
            allow_request_problem_information: true,
            control_center_audit_log: true,
        }
    }
}

/// `<persistence><mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PersistenceMode {
    /// `file` (default): data survives restarts.
    #[default]
    File,
    /// `in-memory`: nothing is written to disk.
    InMemory,
}
