//! Parsers for the plain CE sections: `<mqtt>`, `<restrictions>`, `<security>`,
//! `<persistence>` and `<anonymous-usage-statistics>`.

use super::error::ConfigError;
use super::model::{EXPIRY_NEVER, MAX_PACKET_SIZE, MqttConfig, PersistenceMode, QueueStrategy, Restrictions, Security};
use super::walk::Node;

/// Reads `<mqtt>`.
pub(crate) fn parse_mqtt(n: &Node<'_>) -> Result<MqttConfig, ConfigError> {
    n.expect_children(
        &[
            "queued-messages",
            "retained-messages",
            "wildcard-subscriptions",
            "shared-subscriptions",
            "subscription-identifier",
            "quality-of-service",
            "topic-alias",
            "message-expiry",
            "session-expiry",
            "keep-alive",
            "packets",
            "receive-maximum",
        ],
        &[],
    )?;
    let mut m = MqttConfig::default();
    if let Some(q) = n.child("queued-messages") {
        q.expect_children(&["max-queue-size", "strategy"], &[])?;
        m.max_queue_size = q.int_or("max-queue-size", 0, i64::MAX as u64, m.max_queue_size)?;
        if let Some(s) = q.child("strategy") {
            m.queue_strategy = s.one_of(&[
                ("discard", QueueStrategy::Discard),
                ("discard-oldest", QueueStrategy::DiscardOldest),
            ])?;
        }
    }
    m.retained_messages_enabled = n.enabled_section("retained-messages", true)?;
    m.wildcard_subscriptions_enabled = n.enabled_section("wildcard-subscriptions", true)?;
    m.shared_subscriptions_enabled = n.enabled_section("shared-subscriptions", true)?;
    m.subscription_identifier_enabled = n.enabled_section("subscription-identifier", true)?;
    if let Some(q) = n.child("quality-of-service") {
        q.expect_children(&["max-qos"], &[])?;
        m.max_qos = q.int_or("max-qos", 0u8, 2, m.max_qos)?;
    }
    if let Some(t) = n.child("topic-alias") {
        t.expect_children(&["enabled", "max-per-client"], &[])?;
        m.topic_alias_enabled = t.bool_or("enabled", m.topic_alias_enabled)?;
        m.topic_alias_max_per_client = t.int_or("max-per-client", 1u16, 65535, m.topic_alias_max_per_client)?;
    }
    if let Some(e) = n.child("message-expiry") {
        e.expect_children(&["max-interval"], &[])?;
        m.message_expiry_max_interval = e.int_or("max-interval", 0, EXPIRY_NEVER, m.message_expiry_max_interval)?;
    }
    if let Some(e) = n.child("session-expiry") {
        e.expect_children(&["max-interval"], &[])?;
        // The XSD says 0..4294967295 but HiveMQ's own default is 4294967296; accept both.
        m.session_expiry_max_interval = e.int_or("max-interval", 0, EXPIRY_NEVER, m.session_expiry_max_interval)?;
    }
    if let Some(k) = n.child("keep-alive") {
        k.expect_children(&["max-keep-alive", "allow-unlimited"], &[])?;
        m.max_keep_alive = k.int_or("max-keep-alive", 0u16, 65535, m.max_keep_alive)?;
        m.allow_unlimited_keep_alive = k.bool_or("allow-unlimited", m.allow_unlimited_keep_alive)?;
    }
    if let Some(p) = n.child("packets") {
        p.expect_children(&["max-packet-size"], &[])?;
        m.max_packet_size = p.int_or("max-packet-size", 0u32, MAX_PACKET_SIZE, m.max_packet_size)?;
    }
    if let Some(r) = n.child("receive-maximum") {
        r.expect_children(&["server-receive-maximum"], &[])?;
        m.server_receive_maximum = r.int_or("server-receive-maximum", 1u16, 65535, m.server_receive_maximum)?;
    }
    Ok(m)
}

/// Reads `<restrictions>`.
pub(crate) fn parse_restrictions(n: &Node<'_>) -> Result<Restrictions, ConfigError> {
    n.expect_children(
        &[
            "max-connections",
            "max-client-id-length",
            "max-topic-length",
            "no-connect-idle-timeout",
            "incoming-bandwidth-throttling",
        ],
        &[],
    )?;
    let d = Restrictions::default();
    Ok(Restrictions {
        max_connections: n.int_or("max-connections", -1i64, i64::MAX, d.max_connections)?,
        max_client_id_length: n.int_or("max-client-id-length", 1u32, 65535, d.max_client_id_length)?,
        max_topic_length: n.int_or("max-topic-length", 1u32, 65535, d.max_topic_length)?,
        no_connect_idle_timeout_ms: n.int_or(
            "no-connect-idle-timeout",
            1,
            i64::MAX as u64,
            d.no_connect_idle_timeout_ms,
        )?,
        incoming_bandwidth_throttling: n.int_or(
            "incoming-bandwidth-throttling",
            0,
            i64::MAX as u64,
            d.incoming_bandwidth_throttling,
        )?,
    })
}

/// Reads `<security>`.
pub(crate) fn parse_security(n: &Node<'_>) -> Result<Security, ConfigError> {
    n.expect_children(
        &[
            "payload-format-validation",
            "utf8-validation",
            "allow-empty-client-id",
            "allow-request-problem-information",
            "control-center-audit-log",
        ],
        &[],
    )?;
    let d = Security::default();
    Ok(Security {
        payload_format_validation: n.enabled_section("payload-format-validation", d.payload_format_validation)?,
        utf8_validation: n.enabled_section("utf8-validation", d.utf8_validation)?,
        allow_empty_client_id: n.enabled_section("allow-empty-client-id", d.allow_empty_client_id)?,
        allow_request_problem_information: n
            .enabled_section("allow-request-problem-information", d.allow_request_problem_information)?,
        control_center_audit_log: n.enabled_section("control-center-audit-log", d.control_center_audit_log)?,
    })
}

/// Reads `<persistence>`.
pub(crate) fn parse_persistence(n: &Node<'_>) -> Result<PersistenceMode, ConfigError> {
    n.expect_children(&["mode"], &[])?;
    Ok(n.opt("mode", |m| {
        m.one_of(&[
            ("file", PersistenceMode::File),
            ("in-memory", PersistenceMode::InMemory),
        ])
    })?
    .unwrap_or_default())
}

/// Reads `<anonymous-usage-statistics>`.
pub(crate) fn parse_usage_statistics(n: &Node<'_>) -> Result<bool, ConfigError> {
    n.expect_children(&["enabled"], &[])?;
    n.bool_or("enabled", false)
}
