//! Unit tests of the configuration module.

use std::collections::HashMap;

use super::*;

const ALL_OPTIONS: &str = include_str!("testdata/all-options.xml");
const PLACEHOLDERS: &str = include_str!("testdata/placeholders.xml");
const DEFAULT_CONFIG: &str = include_str!("testdata/config.xml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(xml: &str) -> Config {
    match Config::parse(xml, "config.xml", &no_env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_with(xml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::parse(xml, "config.xml", &move |k| map.get(k).cloned())
}

fn err(xml: &str) -> String {
    match Config::parse(xml, "config.xml", &no_env) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn tcp(port: u16, bind: &str, name: Option<&str>) -> Listener {
    Listener::Tcp(TcpListenerConfig {
        port,
        bind_address: bind.to_string(),
        name: name.map(str::to_string),
    })
}

fn keystore(path: &str) -> Keystore {
    Keystore {
        path: path.to_string(),
        password: "changeme".to_string(),
        private_key_password: "changeme".to_string(),
    }
}

fn truststore(path: &str) -> Truststore {
    Truststore {
        path: path.to_string(),
        password: "changeme".to_string(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Defaults

#[test]
fn defaults_match_reference() {
    let c = Config::default();
    assert_eq!(c.listeners, vec![tcp(1883, "0.0.0.0", None)]);

    let m = &c.mqtt;
    assert_eq!(m.max_queue_size, 1000);
    assert_eq!(m.queue_strategy, QueueStrategy::Discard);
    assert!(m.retained_messages_enabled);
    assert!(m.wildcard_subscriptions_enabled);
    assert!(m.shared_subscriptions_enabled);
    assert!(m.subscription_identifier_enabled);
    assert_eq!(m.max_qos, 2);
    assert!(m.topic_alias_enabled);
    assert_eq!(m.topic_alias_max_per_client, 5);
    assert_eq!(m.message_expiry_max_interval, 4_294_967_296);
    assert_eq!(m.session_expiry_max_interval, 4_294_967_296);
    assert_eq!(m.max_keep_alive, 65535);
    assert!(m.allow_unlimited_keep_alive);
    assert_eq!(m.max_packet_size, 268_435_460);
    assert_eq!(m.server_receive_maximum, 10);

    let r = &c.restrictions;
    assert_eq!(r.max_connections, -1);
    assert_eq!(r.max_client_id_length, 65535);
    assert_eq!(r.max_topic_length, 65535);
    assert_eq!(r.no_connect_idle_timeout_ms, 10_000);
    assert_eq!(r.incoming_bandwidth_throttling, 0);

    let s = &c.security;
    assert!(!s.payload_format_validation);
    assert!(s.utf8_validation);
    assert!(s.allow_empty_client_id);
    assert!(s.allow_request_problem_information);
    assert!(s.control_center_audit_log);

    assert_eq!(c.persistence, PersistenceMode::File);
    assert!(!c.anonymous_usage_statistics);

    // Cluster defaults from the seed: UDP transport + multicast discovery, port 8000.
    let cl = &c.cluster;
    assert!(!cl.enabled);
    assert_eq!(
        cl.transport,
        ClusterTransport::Udp(UdpTransport {
            bind_address: None,
            bind_port: 8000,
            external_address: None,
            external_port: None,
            multicast_enabled: true,
            multicast_address: "228.8.8.8".to_string(),
            multicast_port: 45588,
        })
    );
    assert_eq!(cl.discovery, Discovery::Multicast);
    assert_eq!(cl.replica_count, 2);
    assert_eq!(
        cl.failure_detection.heartbeat,
        Heartbeat {
            enabled: true,
            interval_ms: 8000,
            timeout_ms: 40000
        }
    );
    assert_eq!(
        cl.failure_detection.tcp_health_check,
        TcpHealthCheck {
            enabled: true,
            bind_address: None,
            bind_port: 0,
            port_range: 50,
            external_address: None,
            external_port: None,
        }
    );

    let http = |port| HttpListener {
        port,
        bind_address: "0.0.0.0".to_string(),
        name: None,
    };
    assert!(!c.rest_api.enabled);
    assert_eq!(c.rest_api.listeners, vec![http(8888)]);
    assert!(!c.health_api.enabled);
    assert_eq!(c.health_api.listeners, vec![http(8889)]);
    assert!(c.control_center.enabled);
    assert_eq!(c.control_center.listeners, vec![http(8080)]);
    assert!(c.control_center.users.is_empty());
    assert!(c.overload_protection.enabled);
}

#[test]
fn empty_document_and_empty_sections_give_defaults() {
    assert_eq!(parse("<hivemq/>"), Config::default());
    let xml = "<hivemq><listeners/><mqtt/><restrictions/><security/><persistence/>\
               <anonymous-usage-statistics/><cluster/><rest-api/><health-api/>\
               <control-center/><overload-protection/></hivemq>";
    assert_eq!(parse(xml), Config::default());
}

#[test]
fn tcp_transport_changes_heartbeat_defaults() {
    let c = parse("<hivemq><cluster><transport><tcp/></transport></cluster></hivemq>");
    assert_eq!(c.cluster.transport, ClusterTransport::Tcp(TcpTransport::default()));
    assert_eq!(c.cluster.transport.bind_port(), 8000);
    assert_eq!(
        c.cluster.failure_detection.heartbeat,
        Heartbeat {
            enabled: true,
            interval_ms: 3000,
            timeout_ms: 9000
        }
    );
    // Only the interval written: the timeout keeps the TCP default.
    let c = parse(
        "<hivemq><cluster><transport><tcp/></transport><failure-detection><heartbeat>\
         <interval>4000</interval></heartbeat></failure-detection></cluster></hivemq>",
    );
    assert_eq!(c.cluster.failure_detection.heartbeat.interval_ms, 4000);
    assert_eq!(c.cluster.failure_detection.heartbeat.timeout_ms, 9000);
}

// ---------------------------------------------------------------------------------------------
// Full configuration

fn all_options_expected() -> Config {
    let listener_tls = TlsConfig {
        keystore: keystore("/opt/apiary/conf/server.p12"),
        truststore: Some(truststore("/opt/apiary/conf/clients.pem")),
        protocols: strings(&["TLSv1.3", "TLSv1.2"]),
        cipher_suites: strings(&["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
        prefer_server_cipher_suites: Some(true),
        handshake_timeout_ms: 10_000,
        client_authentication_mode: ClientAuthenticationMode::Optional,
    };
    Config {
        listeners: vec![
            tcp(1883, "0.0.0.0", Some("mqtt")),
            Listener::TlsTcp(TlsTcpListenerConfig {
                port: 8883,
                bind_address: "0.0.0.0".to_string(),
                name: Some("mqtts".to_string()),
                tls: listener_tls,
            }),
            Listener::WebSocket(WebSocketListenerConfig {
                port: 8000,
                bind_address: "0.0.0.0".to_string(),
                name: Some("ws".to_string()),
                path: "/mqtt".to_string(),
                subprotocols: strings(&["mqttv3.1", "mqtt"]),
                allow_extensions: true,
            }),
            Listener::TlsWebSocket(TlsWebSocketListenerConfig {
                port: 8443,
                bind_address: "0.0.0.0".to_string(),
                name: Some("wss".to_string()),
                path: "/mqtt".to_string(),
                subprotocols: strings(&["mqtt"]),
                allow_extensions: false,
                tls: TlsConfig {
                    keystore: keystore("/opt/apiary/conf/server.p12"),
                    truststore: None,
                    protocols: vec![],
                    cipher_suites: vec![],
                    prefer_server_cipher_suites: None,
                    handshake_timeout_ms: 10_000,
                    client_authentication_mode: ClientAuthenticationMode::None,
                },
            }),
        ],
        mqtt: MqttConfig::default(),
        restrictions: Restrictions::default(),
        security: Security::default(),
        persistence: PersistenceMode::File,
        anonymous_usage_statistics: false,
        cluster: ClusterConfig {
            enabled: true,
            transport: ClusterTransport::Tcp(TcpTransport {
                bind_address: Some("192.168.1.10".to_string()),
                bind_port: 7800,
                external_address: Some("10.10.10.10".to_string()),
                external_port: Some(7800),
                tls: Some(ClusterTls {
                    protocols: strings(&["TLSv1.3"]),
                    cipher_suites: strings(&["TLS_AES_256_GCM_SHA384"]),
                    server_keystore: keystore("/opt/apiary/conf/cluster.jks"),
                    server_certificate_truststore: Some(truststore("/opt/apiary/conf/cluster-trust.jks")),
                    client_authentication_mode: ClientAuthenticationMode::Required,
                    client_authentication_keystore: Some(keystore("/opt/apiary/conf/cluster.jks")),
                    client_certificate_truststore: Some(truststore("/opt/apiary/conf/cluster-trust.jks")),
                }),
            }),
            discovery: Discovery::Static(vec![
                NodeAddress {
                    host: "192.168.1.10".to_string(),
                    port: 7800,
                },
                NodeAddress {
                    host: "192.168.1.11".to_string(),
                    port: 7800,
                },
            ]),
            replica_count: 2,
            failure_detection: FailureDetection {
                heartbeat: Heartbeat {
                    enabled: true,
                    interval_ms: 3000,
                    timeout_ms: 9000,
                },
                tcp_health_check: TcpHealthCheck {
                    enabled: true,
                    bind_address: Some("192.168.1.10".to_string()),
                    bind_port: 9000,
                    port_range: 50,
                    external_address: Some("10.10.10.10".to_string()),
                    external_port: Some(9000),
                },
            },
        },
        rest_api: RestApiConfig {
            enabled: true,
            listeners: vec![HttpListener {
                port: 8888,
                bind_address: "127.0.0.1".to_string(),
                name: Some("rest".to_string()),
            }],
        },
        health_api: HealthApiConfig {
            enabled: true,
            listeners: vec![HttpListener {
                port: 8889,
                bind_address: "0.0.0.0".to_string(),
                name: None,
            }],
        },
        control_center: ControlCenterConfig {
            enabled: false,
            listeners: vec![HttpListener {
                port: 8080,
                bind_address: "0.0.0.0".to_string(),
                name: None,
            }],
            users: vec![ControlCenterUser {
                name: "admin".to_string(),
                password: "057ba03d6c44104863dc7361fe4578965d1887360f90a0895882e58a6248fc86".to_string(),
            }],
        },
        overload_protection: OverloadProtectionConfig { enabled: true },
    }
}

#[test]
fn all_options_round_trip_into_the_model() {
    assert_eq!(parse(ALL_OPTIONS), all_options_expected());
}

#[test]
fn non_default_values_reach_the_model() {
    let xml = r#"<hivemq>
    <mqtt>
        <queued-messages><max-queue-size> 42 </max-queue-size><strategy>discard-oldest</strategy></queued-messages>
        <retained-messages><enabled>FALSE</enabled></retained-messages>
        <wildcard-subscriptions><enabled> False </enabled></wildcard-subscriptions>
        <shared-subscriptions><enabled>false</enabled></shared-subscriptions>
        <subscription-identifier><enabled>false</enabled></subscription-identifier>
        <quality-of-service><max-qos>1</max-qos></quality-of-service>
        <topic-alias><enabled>false</enabled><max-per-client>65535</max-per-client></topic-alias>
        <message-expiry><max-interval>0</max-interval></message-expiry>
        <session-expiry><max-interval>4294967295</max-interval></session-expiry>
        <keep-alive><max-keep-alive>0</max-keep-alive><allow-unlimited>false</allow-unlimited></keep-alive>
        <packets><max-packet-size>1024</max-packet-size></packets>
        <receive-maximum><server-receive-maximum>65535</server-receive-maximum></receive-maximum>
    </mqtt>
    <restrictions>
        <max-connections>5000</max-connections>
        <max-client-id-length>23</max-client-id-length>
        <max-topic-length>1</max-topic-length>
        <no-connect-idle-timeout>1</no-connect-idle-timeout>
        <incoming-bandwidth-throttling>1048576</incoming-bandwidth-throttling>
    </restrictions>
    <security>
        <payload-format-validation><enabled>true</enabled></payload-format-validation>
        <utf8-validation><enabled>false</enabled></utf8-validation>
        <allow-empty-client-id><enabled>false</enabled></allow-empty-client-id>
        <allow-request-problem-information><enabled>false</enabled></allow-request-problem-information>
        <control-center-audit-log><enabled>false</enabled></control-center-audit-log>
    </security>
    <persistence><mode>in-memory</mode></persistence>
    <anonymous-usage-statistics><enabled>true</enabled></anonymous-usage-statistics>
</hivemq>"#;
    let c = parse(xml);
    assert_eq!(
        c.mqtt,
        MqttConfig {
            max_queue_size: 42,
            queue_strategy: QueueStrategy::DiscardOldest,
            retained_messages_enabled: false,
            wildcard_subscriptions_enabled: false,
            shared_subscriptions_enabled: false,
            subscription_identifier_enabled: false,
            max_qos: 1,
            topic_alias_enabled: false,
            topic_alias_max_per_client: 65535,
            message_expiry_max_interval: 0,
            session_expiry_max_interval: 4_294_967_295,
            max_keep_alive: 0,
            allow_unlimited_keep_alive: false,
            max_packet_size: 1024,
            server_receive_maximum: 65535,
        }
    );
    assert_eq!(
        c.restrictions,
        Restrictions {
            max_connections: 5000,
            max_client_id_length: 23,
            max_topic_length: 1,
            no_connect_idle_timeout_ms: 1,
            incoming_bandwidth_throttling: 1_048_576,
        }
    );
    assert_eq!(
        c.security,
        Security {
            payload_format_validation: true,
            utf8_validation: false,
            allow_empty_client_id: false,
            allow_request_problem_information: false,
            control_center_audit_log: false,
        }
    );
    assert_eq!(c.persistence, PersistenceMode::InMemory);
    assert!(c.anonymous_usage_statistics);
    // No listener configured: the default one.
    assert_eq!(c.listeners, vec![tcp(1883, "0.0.0.0", None)]);
}

#[test]
fn sections_in_any_order_with_comments_cdata_and_entities() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- leading comment -->
<hivemq xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="config.xsd">
    <persistence><!-- inside --><mode>in-memory</mode></persistence>
    <listeners>
        <websocket-listener>
            <port>8000</port>
            <name><![CDATA[ws&co]]></name>
            <path>/a&amp;b&#47;c</path>
        </websocket-listener>
        <tcp-listener><port>0</port></tcp-listener>
        <tcp-listener><port>0</port></tcp-listener>
    </listeners>
</hivemq>
"#;
    let c = parse(xml);
    assert_eq!(c.persistence, PersistenceMode::InMemory);
    assert_eq!(
        c.listeners[0],
        Listener::WebSocket(WebSocketListenerConfig {
            port: 8000,
            bind_address: "0.0.0.0".to_string(),
            name: Some("ws&co".to_string()),
            path: "/a&b/c".to_string(),
            subprotocols: strings(&["mqttv3.1", "mqtt"]),
            allow_extensions: false,
        })
    );
    // Two ephemeral listeners do not conflict.
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.listeners[1].port(), 0);
}

// ---------------------------------------------------------------------------------------------
// Shipped files

#[test]
fn shipped_default_config_parses() {
    let c = parse(DEFAULT_CONFIG);
    assert_eq!(c, Config::default());
}

#[test]
fn placeholders_example_parses_with_env() {
    let c = parse_with(
        PLACEHOLDERS,
        &[
            ("APIARY_MQTT_PORT", "1883"),
            ("APIARY_BIND_ADDRESS", "0.0.0.0"),
            ("APIARY_WS_PORT", "8000"),
            ("APIARY_PERSISTENCE", "file"),
            ("APIARY_MAX_QUEUE_SIZE", "1000"),
            ("APIARY_MAX_CONNECTIONS", "-1"),
            ("APIARY_CLUSTER_ENABLED", "false"),
            ("APIARY_CLUSTER_PORT", "7800"),
            ("APIARY_REPLICA_COUNT", "2"),
        ],
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.cluster.transport.bind_port(), 7800);
    assert_eq!(
        c.cluster.discovery,
        Discovery::Extension {
            reload_interval_secs: 60
        }
    );
    // And without the environment, the first unset variable is named with its line.
    let e = err(PLACEHOLDERS);
    assert!(e.contains("environment variable \"APIARY_MQTT_PORT\""), "{e}");
}

/// The broker's copies under conf/ must parse too, and must not drift from testdata/.
/// Found at `<crate>/conf` (inside the broker crate) or `<crate>/../../main/conf` (scratch crate).
#[test]
fn main_conf_copies_parse_and_match_testdata() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(conf) = [manifest.join("conf"), manifest.join("../../main/conf")]
        .into_iter()
        .find(|p| p.join("config.xml").exists())
    else {
        return;
    };
    for (rel, embedded) in [
        ("config.xml", DEFAULT_CONFIG),
        ("examples/all-options.xml", ALL_OPTIONS),
        ("examples/placeholders.xml", PLACEHOLDERS),
    ] {
        let path = conf.join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, embedded, "{} differs from testdata", path.display());
    }
    let c = Config::from_file(&conf.join("config.xml")).unwrap();
    assert_eq!(c, Config::default());
    let c = Config::from_file(&conf.join("examples/all-options.xml")).unwrap();
    assert_eq!(c, all_options_expected());
}

#[test]
fn hivemq_ce_shipped_config_parses() {
    // The shape of HiveMQ CE's src/main/resources/config.xml.
    let xml = r#"<?xml version="1.0"?>
<!--
    A license header comment.
-->
<hivemq xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xsi:noNamespaceSchemaLocation="config.xsd">

    <listeners>
        <tcp-listener>
            <port>1883</port>
            <bind-address>0.0.0.0</bind-address>
        </tcp-listener>
    </listeners>

    <anonymous-usage-statistics>
        <enabled>true</enabled>
    </anonymous-usage-statistics>

</hivemq>"#;
    let c = parse(xml);
    assert_eq!(c.listeners, vec![tcp(1883, "0.0.0.0", None)]);
    assert!(c.anonymous_usage_statistics);
    assert_eq!(
        c,
        Config {
            anonymous_usage_statistics: true,
            ..Config::default()
        }
    );
}

/// A config in the style of HiveMQ's Kubernetes image (REFERENCE §3): everything from
/// placeholders, TCP transport, extension discovery, TCP health check, heartbeat 4000/30000.
const K8S_STYLE: &str = r#"<?xml version="1.0"?>
<hivemq xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xsi:noNamespaceSchemaLocation="config.xsd">
    <listeners>
        <tcp-listener>
            <port>${HIVEMQ_MQTT_PORT}</port>
            <bind-address>0.0.0.0</bind-address>
        </tcp-listener>
    </listeners>
    <control-center>
        <listeners>
            <http>
                <port>${HIVEMQ_CONTROL_CENTER_PORT}</port>
                <bind-address>0.0.0.0</bind-address>
            </http>
        </listeners>
        <users>
            <user>
                <name>${HIVEMQ_CONTROL_CENTER_USER}</name>
                <password>${HIVEMQ_CONTROL_CENTER_PASSWORD}</password>
            </user>
        </users>
    </control-center>
    <!--REST-API-CONFIGURATION-->
    <cluster>
        <enabled>true</enabled>
        <transport>
            <tcp>
                <bind-address>${HIVEMQ_BIND_ADDRESS}</bind-address>
                <bind-port>${HIVEMQ_CLUSTER_PORT}</bind-port>
            </tcp>
        </transport>
        <discovery>
            <extension/>
        </discovery>
        <replication>
            <replica-count>${HIVEMQ_CLUSTER_REPLICA_COUNT}</replica-count>
        </replication>
        <failure-detection>
            <tcp-health-check>
                <enabled>true</enabled>
                <bind-address>${HIVEMQ_BIND_ADDRESS}</bind-address>
                <bind-port>9000</bind-port>
                <port-range>50</port-range>
            </tcp-health-check>
            <heartbeat>
                <enabled>true</enabled>
                <interval>4000</interval>
                <timeout>30000</timeout>
            </heartbeat>
        </failure-detection>
    </cluster>
    <overload-protection>
        <enabled>${HIVEMQ_CLUSTER_OVERLOAD_PROTECTION}</enabled>
    </overload-protection>
    <restrictions>
        <max-client-id-length>${HIVEMQ_MAX_CLIENT_ID_LENGTH}</max-client-id-length>
        <max-topic-length>${HIVEMQ_MAX_TOPIC_LENGTH}</max-topic-length>
        <max-connections>-${HIVEMQ_MAX_CONNECTIONS}</max-connections>
        <incoming-bandwidth-throttling>${HIVEMQ_INCOMING_BANDWIDTH_THROTTLING}</incoming-bandwidth-throttling>
        <no-connect-idle-timeout>${HIVEMQ_NO_CONNECT_IDLE_TIMEOUT}</no-connect-idle-timeout>
    </restrictions>
    <mqtt>
        <session-expiry><max-interval>${HIVEMQ_SESSION_EXPIRY_INTERVAL}</max-interval></session-expiry>
        <message-expiry><max-interval>${HIVEMQ_MESSAGE_EXPIRY_MAX_INTERVAL}</max-interval></message-expiry>
        <packets><max-packet-size>${HIVEMQ_MAX_PACKET_SIZE}</max-packet-size></packets>
        <receive-maximum><server-receive-maximum>${HIVEMQ_SERVER_RECEIVE_MAXIMUM}</server-receive-maximum></receive-maximum>
        <keep-alive>
            <max-keep-alive>${HIVEMQ_KEEPALIVE_MAX}</max-keep-alive>
            <allow-unlimited>${HIVEMQ_KEEPALIVE_ALLOW_UNLIMITED}</allow-unlimited>
        </keep-alive>
        <topic-alias>
            <enabled>${HIVEMQ_TOPIC_ALIAS_ENABLED}</enabled>
            <max-per-client>${HIVEMQ_TOPIC_ALIAS_MAX_PER_CLIENT}</max-per-client>
        </topic-alias>
        <subscription-identifier><enabled>${HIVEMQ_SUBSCRIPTION_IDENTIFIER_ENABLED}</enabled></subscription-identifier>
        <wildcard-subscriptions><enabled>${HIVEMQ_WILDCARD_SUBSCRIPTION_ENABLED}</enabled></wildcard-subscriptions>
        <shared-subscriptions><enabled>${HIVEMQ_SHARED_SUBSCRIPTION_ENABLED}</enabled></shared-subscriptions>
        <quality-of-service><max-qos>${HIVEMQ_MAX_QOS}</max-qos></quality-of-service>
        <retained-messages><enabled>${HIVEMQ_RETAINED_MESSAGES_ENABLED}</enabled></retained-messages>
        <queued-messages>
            <max-queue-size>${HIVEMQ_QUEUED_MESSAGE_MAX_QUEUE_SIZE}</max-queue-size>
            <strategy>${HIVEMQ_QUEUED_MESSAGE_STRATEGY}</strategy>
        </queued-messages>
    </mqtt>
    <security>
        <allow-empty-client-id><enabled>${HIVEMQ_ALLOW_EMPTY_CLIENT_ID}</enabled></allow-empty-client-id>
        <payload-format-validation><enabled>${HIVEMQ_PAYLOAD_FORMAT_VALIDATION}</enabled></payload-format-validation>
        <utf8-validation><enabled>${HIVEMQ_TOPIC_FORMAT_VALIDATION}</enabled></utf8-validation>
        <allow-request-problem-information><enabled>${HIVEMQ_ALLOW_REQUEST_PROBLEM_INFORMATION}</enabled></allow-request-problem-information>
        <control-center-audit-log><enabled>${HIVEMQ_CONTROL_CENTER_AUDIT_LOG_ENABLED}</enabled></control-center-audit-log>
    </security>
</hivemq>"#;

const K8S_ENV: &[(&str, &str)] = &[
    ("HIVEMQ_MQTT_PORT", "1883"),
    ("HIVEMQ_CONTROL_CENTER_PORT", "8080"),
    ("HIVEMQ_CONTROL_CENTER_USER", "admin"),
    ("HIVEMQ_CONTROL_CENTER_PASSWORD", "secret-hash"),
    ("HIVEMQ_BIND_ADDRESS", "10.1.2.3"),
    ("HIVEMQ_CLUSTER_PORT", "7000"),
    ("HIVEMQ_CLUSTER_REPLICA_COUNT", "3"),
    ("HIVEMQ_CLUSTER_OVERLOAD_PROTECTION", "true"),
    ("HIVEMQ_MAX_CLIENT_ID_LENGTH", "65535"),
    ("HIVEMQ_MAX_TOPIC_LENGTH", "65535"),
    ("HIVEMQ_MAX_CONNECTIONS", "1"),
    ("HIVEMQ_INCOMING_BANDWIDTH_THROTTLING", "0"),
    ("HIVEMQ_NO_CONNECT_IDLE_TIMEOUT", "10000"),
    ("HIVEMQ_SESSION_EXPIRY_INTERVAL", "4294967295"),
    ("HIVEMQ_MESSAGE_EXPIRY_MAX_INTERVAL", "4294967296"),
    ("HIVEMQ_MAX_PACKET_SIZE", "268435460"),
    ("HIVEMQ_SERVER_RECEIVE_MAXIMUM", "10"),
    ("HIVEMQ_KEEPALIVE_MAX", "65535"),
    ("HIVEMQ_KEEPALIVE_ALLOW_UNLIMITED", "true"),
    ("HIVEMQ_TOPIC_ALIAS_ENABLED", "true"),
    ("HIVEMQ_TOPIC_ALIAS_MAX_PER_CLIENT", "5"),
    ("HIVEMQ_SUBSCRIPTION_IDENTIFIER_ENABLED", "true"),
    ("HIVEMQ_WILDCARD_SUBSCRIPTION_ENABLED", "true"),
    ("HIVEMQ_SHARED_SUBSCRIPTION_ENABLED", "true"),
    ("HIVEMQ_MAX_QOS", "2"),
    ("HIVEMQ_RETAINED_MESSAGES_ENABLED", "true"),
    ("HIVEMQ_QUEUED_MESSAGE_MAX_QUEUE_SIZE", "1000"),
    ("HIVEMQ_QUEUED_MESSAGE_STRATEGY", "discard"),
    ("HIVEMQ_ALLOW_EMPTY_CLIENT_ID", "true"),
    ("HIVEMQ_PAYLOAD_FORMAT_VALIDATION", "false"),
    ("HIVEMQ_TOPIC_FORMAT_VALIDATION", "false"),
    ("HIVEMQ_ALLOW_REQUEST_PROBLEM_INFORMATION", "true"),
    ("HIVEMQ_CONTROL_CENTER_AUDIT_LOG_ENABLED", "true"),
];

#[test]
fn k8s_style_config_parses_with_env() {
    let c = parse_with(K8S_STYLE, K8S_ENV).unwrap();
    let cl = &c.cluster;
    assert!(cl.enabled);
    assert_eq!(
        cl.transport,
        ClusterTransport::Tcp(TcpTransport {
            bind_address: Some("10.1.2.3".to_string()),
            bind_port: 7000,
            external_address: None,
            external_port: None,
            tls: None,
        })
    );
    assert_eq!(
        cl.discovery,
        Discovery::Extension {
            reload_interval_secs: 60
        }
    );
    assert_eq!(cl.replica_count, 3);
    assert_eq!(
        cl.failure_detection,
        FailureDetection {
            heartbeat: Heartbeat {
                enabled: true,
                interval_ms: 4000,
                timeout_ms: 30000
            },
            tcp_health_check: TcpHealthCheck {
                enabled: true,
                bind_address: Some("10.1.2.3".to_string()),
                bind_port: 9000,
                port_range: 50,
                external_address: None,
                external_port: None,
            },
        }
    );
    assert!(c.overload_protection.enabled);
    assert_eq!(c.restrictions, Restrictions::default());
    assert_eq!(
        c.mqtt,
        MqttConfig {
            session_expiry_max_interval: 4_294_967_295,
            ..MqttConfig::default()
        }
    );
    assert_eq!(
        c.security,
        Security {
            utf8_validation: false,
            ..Security::default()
        }
    );
    assert_eq!(
        c.control_center.users,
        vec![ControlCenterUser {
            name: "admin".to_string(),
            password: "secret-hash".to_string()
        }]
    );
    assert_eq!(c.control_center.listeners[0].port, 8080);

    // Missing one variable: named, with its line.
    let env: Vec<_> = K8S_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "HIVEMQ_CLUSTER_REPLICA_COUNT")
        .collect();
    let e = parse_with(K8S_STYLE, &env).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.xml line 37: environment variable \"HIVEMQ_CLUSTER_REPLICA_COUNT\" (used as \
         \"${HIVEMQ_CLUSTER_REPLICA_COUNT}\") is not set."
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster examples from the seed (hivemq-clusters.txt), with its "..." elisions removed.

#[test]
fn seed_cluster_examples_parse() {
    // Minimal: UDP + multicast by default.
    let c = parse("<hivemq><cluster><enabled>true</enabled></cluster></hivemq>");
    assert!(c.cluster.enabled);
    assert_eq!(c.cluster.transport, ClusterTransport::Udp(UdpTransport::default()));
    assert_eq!(c.cluster.discovery, Discovery::Multicast);

    // Static, 3 nodes.
    let c = parse(
        r#"<hivemq xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
    <cluster>
        <enabled>true</enabled>
        <transport>
            <tcp>
                <!-- replace this IP with the IP address of your interface -->
                <bind-address>192.168.1.1</bind-address>
                <bind-port>7800</bind-port>
            </tcp>
        </transport>
        <discovery>
            <static>
                <node><host>192.168.1.1</host><port>7800</port></node>
                <node><host>192.168.1.2</host><port>7800</port></node>
                <node><host>192.168.1.3</host><port>7801</port></node>
            </static>
        </discovery>
    </cluster>
</hivemq>"#,
    );
    let Discovery::Static(nodes) = &c.cluster.discovery else {
        panic!("{:?}", c.cluster.discovery)
    };
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        nodes[2],
        NodeAddress {
            host: "192.168.1.3".to_string(),
            port: 7801
        }
    );

    // UDP multicast.
    let c = parse(
        r#"<hivemq>
    <listeners><tcp-listener><port>1883</port><bind-address>0.0.0.0</bind-address></tcp-listener></listeners>
    <cluster>
        <enabled>true</enabled>
        <transport>
            <udp>
                <bind-address>192.168.1.10</bind-address>
                <bind-port>8000</bind-port>
                <multicast-enabled>true</multicast-enabled>
                <multicast-address>228.8.8.8</multicast-address>
                <multicast-port>45588</multicast-port>
            </udp>
        </transport>
        <discovery><multicast/></discovery>
    </cluster>
</hivemq>"#,
    );
    assert_eq!(
        c.cluster.transport,
        ClusterTransport::Udp(UdpTransport {
            bind_address: Some("192.168.1.10".to_string()),
            ..UdpTransport::default()
        })
    );

    // Broadcast with everything, and empty broadcast with defaults; TCP with NAT settings.
    let c = parse(
        "<hivemq><cluster><enabled>true</enabled><transport><tcp><bind-address>192.168.1.1</bind-address>\
         <bind-port>7800</bind-port></tcp></transport><discovery><broadcast>\
         <broadcast-address>192.168.1.255</broadcast-address><port>8555</port><port-range>5</port-range>\
         </broadcast></discovery></cluster></hivemq>",
    );
    assert_eq!(
        c.cluster.discovery,
        Discovery::Broadcast(BroadcastDiscovery {
            broadcast_address: "192.168.1.255".to_string(),
            port: 8555,
            port_range: 5
        })
    );
    let c = parse(
        "<hivemq><cluster><enabled>true</enabled><transport><tcp><bind-address>192.168.1.2</bind-address>\
         <bind-port>8000</bind-port><external-address>10.10.10.10</external-address>\
         <external-port>8008</external-port></tcp></transport><discovery><broadcast/></discovery>\
         </cluster></hivemq>",
    );
    assert_eq!(c.cluster.discovery, Discovery::Broadcast(BroadcastDiscovery::default()));
    let ClusterTransport::Tcp(t) = &c.cluster.transport else {
        panic!()
    };
    assert_eq!(t.external_address.as_deref(), Some("10.10.10.10"));
    assert_eq!(t.external_port, Some(8008));

    // TLS transport (no discovery written: the model keeps HiveMQ's default).
    let c = parse(
        r#"<hivemq><cluster><enabled>true</enabled><transport><tcp>
               <bind-address>192.168.2.31</bind-address><bind-port>7800</bind-port>
               <tls>
                 <enabled>true</enabled>
                 <server-keystore>
                    <path>/path/to/the/key/server.jks</path>
                    <password>password-keystore</password>
                    <private-key-password>password-private-key</private-key-password>
                 </server-keystore>
                 <server-certificate-truststore>
                    <path>/path/to/the/trust/server.jks</path>
                    <password>password-truststore</password>
                 </server-certificate-truststore>
               </tls>
           </tcp></transport></cluster></hivemq>"#,
    );
    let ClusterTransport::Tcp(t) = &c.cluster.transport else {
        panic!()
    };
    let tls = t.tls.as_ref().unwrap();
    assert_eq!(tls.server_keystore.path, "/path/to/the/key/server.jks");
    assert_eq!(tls.client_authentication_mode, ClientAuthenticationMode::None);

    // Heartbeat and TCP health check examples (UDP on 7800 with multicast).
    let c = parse(
        r#"<hivemq><cluster><enabled>true</enabled>
        <transport><udp><bind-address>192.168.1.1</bind-address><bind-port>7800</bind-port></udp></transport>
        <discovery><multicast /></discovery>
        <failure-detection>
            <heartbeat><enabled>true</enabled><interval>5000</interval><timeout>15000</timeout></heartbeat>
            <tcp-health-check>
                <enabled>true</enabled>
                <bind-address>1.2.3.4</bind-address>
                <bind-port>0</bind-port>
                <external-address>10.10.2.30</external-address>
                <external-port>0</external-port>
                <port-range>50</port-range>
            </tcp-health-check>
        </failure-detection></cluster></hivemq>"#,
    );
    let fd = &c.cluster.failure_detection;
    assert_eq!((fd.heartbeat.interval_ms, fd.heartbeat.timeout_ms), (5000, 15000));
    assert_eq!(fd.tcp_health_check.bind_port, 0);
    assert_eq!(fd.tcp_health_check.external_port, None);

    // Replication; extension discovery with a reload interval.
    let c = parse(
        "<hivemq><cluster><replication><replica-count>1</replica-count></replication>\
         <transport><tcp/></transport><discovery><extension><reload-interval>30</reload-interval>\
         </extension></discovery></cluster></hivemq>",
    );
    assert_eq!(c.cluster.replica_count, 1);
    assert_eq!(
        c.cluster.discovery,
        Discovery::Extension {
            reload_interval_secs: 30
        }
    );

    // HiveMQ's DNS image: UDP without multicast plus extension discovery.
    let c = parse(
        "<hivemq><cluster><transport><udp><bind-port>8000</bind-port>\
         <multicast-enabled>false</multicast-enabled></udp></transport><enabled>true</enabled>\
         <discovery><extension/></discovery></cluster></hivemq>",
    );
    let ClusterTransport::Udp(u) = &c.cluster.transport else {
        panic!()
    };
    assert!(!u.multicast_enabled);
}

#[test]
fn disabled_cluster_tls_is_checked_but_off() {
    let c = parse(
        "<hivemq><cluster><transport><tcp><tls><server-keystore><path>k.jks</path>\
         <password>p</password><private-key-password>q</private-key-password></server-keystore>\
         </tls></tcp></transport></cluster></hivemq>",
    );
    let ClusterTransport::Tcp(t) = &c.cluster.transport else {
        panic!()
    };
    assert_eq!(t.tls, None);
}

// ---------------------------------------------------------------------------------------------
// Errors: one per class, with the exact message.

#[test]
fn error_wrong_type_names_path_and_line() {
    let xml = "<hivemq>\n  <mqtt>\n    <queued-messages>\n      <max-queue-size>abc</max-queue-size>\n    </queued-messages>\n  </mqtt>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 4: <hivemq>/<mqtt>/<queued-messages>/<max-queue-size>: expected an \
         integer, found \"abc\"."
    );
    let xml = "<hivemq>\n<mqtt><retained-messages>\n<enabled>yes</enabled></retained-messages></mqtt></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<mqtt>/<retained-messages>/<enabled>: expected a boolean \
         (true or false), found \"yes\"."
    );
    assert_eq!(
        err("<hivemq><listeners><tcp-listener><port>1.5</port></tcp-listener></listeners></hivemq>"),
        "config.xml line 1: <hivemq>/<listeners>/<tcp-listener>/<port>: expected an integer, \
         found \"1.5\"."
    );
    assert_eq!(
        err("<hivemq><listeners><tcp-listener><port></port></tcp-listener></listeners></hivemq>"),
        "config.xml line 1: <hivemq>/<listeners>/<tcp-listener>/<port>: expected an integer, \
         found \"\"."
    );
}

#[test]
fn error_malformed_xml_has_line() {
    let xml = "<hivemq>\n  <mqtt>\n    <keep-alive>\n  </mqtt>\n</hivemq>";
    let e = err(xml);
    assert!(e.starts_with("config.xml line 4: malformed XML: "), "{e}");
    assert!(e.ends_with('.'), "{e}");

    let e = err("<hivemq>\n<mqtt>\n");
    assert_eq!(e, "config.xml line 2: malformed XML: element <mqtt> is never closed.");
    let e = err("<hivemq>\n<name>a & b</name>\n</hivemq>");
    assert!(e.starts_with("config.xml line 2: malformed XML: "), "{e}");
    let e = err("<hivemq/>\n<hivemq/>");
    assert_eq!(e, "config.xml line 2: malformed XML: content after the root element.");
    assert_eq!(
        err("  \n "),
        "config.xml line 2: malformed XML: the document has no root element."
    );
    let e = err("<!DOCTYPE hivemq [<!ENTITY x \"y\">]>\n<hivemq/>");
    assert_eq!(
        e,
        "config.xml line 1: malformed XML: DOCTYPE declarations are not supported."
    );
}

#[test]
fn error_wrong_root() {
    assert_eq!(
        err("<?xml version=\"1.0\"?>\n<mosquitto/>"),
        "config.xml line 2: the root element must be <hivemq>, found <mosquitto>."
    );
}

#[test]
fn error_unknown_element_lists_allowed() {
    let xml = "<hivemq>\n  <mqtt>\n    <keep-alive>\n      <max-keepalive>5</max-keepalive>\n    </keep-alive>\n  </mqtt>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 4: <hivemq>/<mqtt>/<keep-alive>: unknown element <max-keepalive>; \
         allowed here: <max-keep-alive>, <allow-unlimited>."
    );
    assert_eq!(
        err("<hivemq>\n<bridges/></hivemq>"),
        "config.xml line 2: <hivemq>: unknown element <bridges>; allowed here: <listeners>, \
         <mqtt>, <restrictions>, <security>, <persistence>, <anonymous-usage-statistics>, \
         <cluster>, <rest-api>, <health-api>, <control-center>, <overload-protection>."
    );
    // A value element with children.
    assert_eq!(
        err("<hivemq><listeners><tcp-listener>\n<port><value>1</value></port></tcp-listener></listeners></hivemq>"),
        "config.xml line 2: <hivemq>/<listeners>/<tcp-listener>/<port>: unknown element \
         <value>; this element takes a value, not child elements."
    );
    // Enterprise sections stay strict.
    assert_eq!(
        err("<hivemq><rest-api><auth/></rest-api></hivemq>"),
        "config.xml line 1: <hivemq>/<rest-api>: unknown element <auth>; allowed here: \
         <enabled>, <listeners>."
    );
    assert_eq!(
        err("<hivemq><cluster><discovery><multicast><address>x</address></multicast></discovery></cluster></hivemq>"),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<multicast>: unknown element \
         <address>; this element takes a value, not child elements."
    );
}

#[test]
fn error_duplicate_singleton() {
    let xml = "<hivemq>\n  <mqtt/>\n  <persistence/>\n  <mqtt/>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 4: <hivemq>/<mqtt>: duplicated element; it already appears at line 2 \
         and may appear only once."
    );
    let xml = "<hivemq><listeners><tcp-listener>\n<port>1</port>\n<port>2</port></tcp-listener></listeners></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<listeners>/<tcp-listener>/<port>: duplicated element; it \
         already appears at line 2 and may appear only once."
    );
}

#[test]
fn error_out_of_range_gives_range() {
    let xml = "<hivemq>\n<listeners>\n<tcp-listener><port>70000</port></tcp-listener>\n</listeners>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<listeners>/<tcp-listener>/<port>: value 70000 is out of \
         range; allowed range is 0 to 65535."
    );
    assert_eq!(
        err("<hivemq><mqtt><quality-of-service><max-qos>3</max-qos></quality-of-service></mqtt></hivemq>"),
        "config.xml line 1: <hivemq>/<mqtt>/<quality-of-service>/<max-qos>: value 3 is out of \
         range; allowed range is 0 to 2."
    );
    assert_eq!(
        err("<hivemq><mqtt><session-expiry><max-interval>4294967297</max-interval></session-expiry></mqtt></hivemq>"),
        "config.xml line 1: <hivemq>/<mqtt>/<session-expiry>/<max-interval>: value 4294967297 \
         is out of range; allowed range is 0 to 4294967296."
    );
    assert_eq!(
        err("<hivemq><restrictions><max-connections>-2</max-connections></restrictions></hivemq>"),
        "config.xml line 1: <hivemq>/<restrictions>/<max-connections>: value -2 is out of \
         range; allowed range is -1 to 9223372036854775807."
    );
    assert_eq!(
        err("<hivemq><cluster><replication><replica-count>0</replica-count></replication></cluster></hivemq>"),
        "config.xml line 1: <hivemq>/<cluster>/<replication>/<replica-count>: value 0 is out of \
         range; allowed range is 1 to 2147483647."
    );
    assert_eq!(
        err(
            "<hivemq><mqtt><packets><max-packet-size>99999999999999999999999999999999999999999</max-packet-size></packets></mqtt></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<mqtt>/<packets>/<max-packet-size>: value \
         99999999999999999999999999999999999999999 is out of range; allowed range is 0 to 268435460."
    );
    assert_eq!(
        err("<hivemq><mqtt><queued-messages><max-queue-size>-1</max-queue-size></queued-messages></mqtt></hivemq>"),
        "config.xml line 1: <hivemq>/<mqtt>/<queued-messages>/<max-queue-size>: value -1 is out \
         of range; allowed range is 0 to 9223372036854775807."
    );
}

#[test]
fn error_invalid_enum_lists_allowed() {
    let xml = "<hivemq>\n<mqtt><queued-messages>\n<strategy>drop</strategy></queued-messages></mqtt></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<mqtt>/<queued-messages>/<strategy>: invalid value \
         \"drop\"; allowed values are discard, discard-oldest."
    );
    assert_eq!(
        err("<hivemq><persistence><mode>disk</mode></persistence></hivemq>"),
        "config.xml line 1: <hivemq>/<persistence>/<mode>: invalid value \"disk\"; allowed \
         values are file, in-memory."
    );
    let xml = r#"<hivemq><listeners><tls-tcp-listener><port>8883</port><tls>
<keystore><path>k</path><password>p</password><private-key-password>q</private-key-password></keystore>
<client-authentication-mode>SOMETIMES</client-authentication-mode></tls></tls-tcp-listener></listeners></hivemq>"#;
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<listeners>/<tls-tcp-listener>/<tls>/<client-authentication-mode>: \
         invalid value \"SOMETIMES\"; allowed values are NONE, OPTIONAL, REQUIRED."
    );
}

#[test]
fn error_missing_required_element() {
    let xml = "<hivemq>\n<listeners>\n<tcp-listener>\n<bind-address>0.0.0.0</bind-address>\n</tcp-listener>\n</listeners>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<listeners>/<tcp-listener>: missing required element <port>."
    );
    assert_eq!(
        err("<hivemq><listeners><tls-tcp-listener><port>8883</port></tls-tcp-listener></listeners></hivemq>"),
        "config.xml line 1: <hivemq>/<listeners>/<tls-tcp-listener>: missing required element <tls>."
    );
    assert_eq!(
        err(
            "<hivemq><listeners><tls-websocket-listener><port>8883</port><tls>\n<keystore><path>k</path>\
             <private-key-password>q</private-key-password></keystore></tls></tls-websocket-listener></listeners></hivemq>"
        ),
        "config.xml line 2: <hivemq>/<listeners>/<tls-websocket-listener>/<tls>/<keystore>: \
         missing required element <password>."
    );
    assert_eq!(
        err("<hivemq><cluster><discovery><static><node><host>a</host></node></static></discovery></cluster></hivemq>"),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<static>/<node>: missing required \
         element <port>."
    );
    assert_eq!(
        err(
            "<hivemq><cluster><transport><tcp>\n<tls><enabled>true</enabled></tls></tcp></transport></cluster></hivemq>"
        ),
        "config.xml line 2: <hivemq>/<cluster>/<transport>/<tcp>/<tls>: missing required \
         element <server-keystore>."
    );
    assert_eq!(
        err(
            "<hivemq><health-api><listeners><http><bind-address>x</bind-address></http></listeners></health-api></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<health-api>/<listeners>/<http>: missing required element <port>."
    );
}

#[test]
fn error_text_where_children_expected() {
    let xml = "<hivemq>\n<listeners>\n  --LISTENER-CONFIGURATION--\n</listeners>\n</hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 2: <hivemq>/<listeners>: expected child elements, found text \
         \"--LISTENER-CONFIGURATION--\"."
    );
    assert_eq!(
        err("<hivemq><persistence>file</persistence></hivemq>"),
        "config.xml line 1: <hivemq>/<persistence>: expected child elements, found text \"file\"."
    );
}

#[test]
fn error_empty_value_and_attributes() {
    assert_eq!(
        err(
            "<hivemq><listeners><tcp-listener><port>1</port><bind-address> </bind-address></tcp-listener></listeners></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<listeners>/<tcp-listener>/<bind-address>: the value must \
         not be empty."
    );
    assert_eq!(
        err("<hivemq><mqtt enabled=\"true\"/></hivemq>"),
        "config.xml line 1: <hivemq>/<mqtt>: unexpected attribute \"enabled\"; configuration \
         elements take no attributes."
    );
}

#[test]
fn error_duplicate_listener_address() {
    let xml = "<hivemq><listeners>\n<tcp-listener><port>1883</port></tcp-listener>\n\
               <websocket-listener><port>1883</port><bind-address>0.0.0.0</bind-address></websocket-listener>\n\
               </listeners></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<listeners>/<websocket-listener>: another listener (line 2) \
         already uses bind address 0.0.0.0 and port 1883."
    );
    // Same port on different addresses is fine.
    let c = parse(
        "<hivemq><listeners><tcp-listener><port>1883</port><bind-address>127.0.0.1</bind-address>\
         </tcp-listener><tcp-listener><port>1883</port><bind-address>10.0.0.1</bind-address>\
         </tcp-listener></listeners></hivemq>",
    );
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn error_cluster_validation() {
    // Timeout must exceed the interval; the default is named when it was not written.
    let xml = "<hivemq><cluster><transport><tcp/></transport><failure-detection>\n<heartbeat>\n\
               <interval>10000</interval></heartbeat></failure-detection></cluster></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 3: <hivemq>/<cluster>/<failure-detection>/<heartbeat>/<interval>: the \
         heartbeat timeout (9000 ms, the default for TCP transport) must be greater than the \
         interval (10000 ms)."
    );
    let xml = "<hivemq><cluster><failure-detection><heartbeat><interval>5000</interval>\n\
               <timeout>5000</timeout></heartbeat></failure-detection></cluster></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 2: <hivemq>/<cluster>/<failure-detection>/<heartbeat>/<timeout>: the \
         heartbeat timeout (5000 ms) must be greater than the interval (5000 ms)."
    );
    // Explicit multicast discovery needs UDP with multicast enabled.
    let xml = "<hivemq><cluster><transport><tcp/></transport><discovery>\n<multicast/></discovery></cluster></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 2: <hivemq>/<cluster>/<discovery>/<multicast>: multicast discovery \
         needs the UDP transport, but the transport is TCP; use <static>, <broadcast> or \
         <extension> discovery with TCP."
    );
    let xml = "<hivemq><cluster><transport><udp><multicast-enabled>false</multicast-enabled></udp>\
               </transport><discovery><multicast/></discovery></cluster></hivemq>";
    assert_eq!(
        err(xml),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<multicast>: multicast discovery \
         needs <multicast-enabled>true</multicast-enabled> in the UDP transport."
    );
    // One transport, one discovery.
    assert_eq!(
        err("<hivemq><cluster><transport><tcp/>\n<udp/></transport></cluster></hivemq>"),
        "config.xml line 2: <hivemq>/<cluster>/<transport>/<udp>: only one cluster transport may \
         be configured, but <tcp> is also present."
    );
    assert_eq!(
        err("<hivemq><cluster><discovery><static/>\n<extension/></discovery></cluster></hivemq>"),
        "config.xml line 2: <hivemq>/<cluster>/<discovery>/<extension>: only one discovery \
         mechanism may be configured, but <static> is also present (line 1)."
    );
    assert_eq!(
        err(
            "<hivemq><cluster><transport><udp><multicast-address>10.0.0.1</multicast-address></udp></transport></cluster></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<cluster>/<transport>/<udp>/<multicast-address>: \
         \"10.0.0.1\" is not an IP multicast address (224.0.0.0/4 or ff00::/8)."
    );
    assert_eq!(
        err("<hivemq><cluster><discovery><broadcast><port>65534</port></broadcast></discovery></cluster></hivemq>"),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<broadcast>: port 65534 plus \
         port-range 5 exceeds the largest port 65535."
    );
    assert_eq!(
        err(
            "<hivemq><cluster><discovery><extension><reload-interval>0</reload-interval></extension></discovery></cluster></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<extension>/<reload-interval>: value 0 \
         is out of range; allowed range is 1 to 2147483647."
    );
    assert_eq!(
        err(
            "<hivemq><cluster><discovery><static><node><host>a</host><port>0</port></node></static></discovery></cluster></hivemq>"
        ),
        "config.xml line 1: <hivemq>/<cluster>/<discovery>/<static>/<node>/<port>: value 0 is \
         out of range; allowed range is 1 to 65535."
    );
}

// ---------------------------------------------------------------------------------------------
// Placeholders

#[test]
fn placeholders_env_and_plain_forms() {
    let xml = "<hivemq><listeners>\n<tcp-listener><port>${ENV:PORT}</port>\
               <bind-address>${ADDR}</bind-address><name>${ENV:ENV:NAME}-x</name></tcp-listener>\
               </listeners></hivemq>";
    let c = parse_with(xml, &[("PORT", " 1884 "), ("ADDR", "127.0.0.1"), ("NAME", "n")]).unwrap();
    assert_eq!(c.listeners, vec![tcp(1884, "127.0.0.1", Some("n-x"))]);
}

#[test]
fn placeholder_values_are_literal_and_not_rescanned() {
    // A value containing a placeholder is not expanded again.
    let xml = "<hivemq><listeners><tcp-listener><port>1</port><name>${A}</name></tcp-listener></listeners></hivemq>";
    let c = parse_with(xml, &[("A", "${B}")]).unwrap();
    assert_eq!(c.listeners[0].name(), Some("${B}"));
    // Not XML-escaped either: markup in a value is parsed as markup (as in HiveMQ).
    let xml = "<hivemq><persistence>${P}</persistence></hivemq>";
    let c = parse_with(xml, &[("P", "<mode>in-memory</mode>")]).unwrap();
    assert_eq!(c.persistence, PersistenceMode::InMemory);
    // An unterminated placeholder on its line is left as it is.
    let xml = "<hivemq><listeners><tcp-listener><port>1</port><name>${A</name></tcp-listener></listeners></hivemq>";
    let c = parse_with(xml, &[]).unwrap();
    assert_eq!(c.listeners[0].name(), Some("${A"));
}

#[test]
fn unset_placeholder_is_an_error_with_name_and_line() {
    let xml = "<hivemq>\n<listeners>\n<tcp-listener><port>${ENV:MQTT_PORT}</port></tcp-listener></listeners></hivemq>";
    let e = parse_with(xml, &[]).unwrap_err();
    assert_eq!(e.line(), Some(3));
    assert_eq!(
        e.to_string(),
        "config.xml line 3: environment variable \"MQTT_PORT\" (used as \"${ENV:MQTT_PORT}\") is \
         not set."
    );
    // Placeholders inside comments are substituted too (as in HiveMQ).
    let e = parse_with("<hivemq>\n<!-- ${X} -->\n</hivemq>", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.xml line 2: environment variable \"X\" (used as \"${X}\") is not set."
    );
    let e = parse_with("<hivemq>${}</hivemq>", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.xml line 1: environment variable \"\" (used as \"${}\") is not set."
    );
}

#[test]
fn lines_stay_true_when_values_contain_line_breaks() {
    let xml = "<hivemq>\n<persistence>${P}</persistence>\n<mqtt>\n<bogus/>\n</mqtt>\n</hivemq>";
    let e = parse_with(xml, &[("P", "\n\n<mode>file</mode>\n")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.xml line 4: <hivemq>/<mqtt>: unknown element <bogus>; allowed here: \
         <queued-messages>, <retained-messages>, <wildcard-subscriptions>, <shared-subscriptions>, \
         <subscription-identifier>, <quality-of-service>, <topic-alias>, <message-expiry>, \
         <session-expiry>, <keep-alive>, <packets>, <receive-maximum>."
    );
}

// ---------------------------------------------------------------------------------------------
// Files and JSON

#[test]
fn from_file_reads_and_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.xml");
    std::fs::write(&path, DEFAULT_CONFIG).unwrap();
    assert_eq!(Config::from_file(&path).unwrap(), Config::default());

    std::fs::write(&path, "<hivemq>\n<mqtt><x/></mqtt></hivemq>").unwrap();
    let e = Config::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{} line 2: <hivemq>/<mqtt>: unknown element <x>",
            path.display()
        )),
        "{e}"
    );

    let missing = dir.path().join("nope.xml");
    let e = Config::from_file(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert_eq!(e.line(), None);
    assert!(e.to_string().starts_with(&format!(
        "Could not read the configuration file {}: ",
        missing.display()
    )));
}

#[test]
fn from_file_uses_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.xml");
    // PATH is set in any test environment; an unlikely name is not.
    std::fs::write(
        &path,
        "<hivemq><listeners><tcp-listener><port>1</port><name>${ENV:PATH}</name>\
         </tcp-listener></listeners></hivemq>",
    )
    .unwrap();
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.listeners[0].name(), std::env::var("PATH").ok().as_deref());
    std::fs::write(&path, "<hivemq>${APIARY_TEST_SURELY_UNSET_VARIABLE_7f3a}</hivemq>").unwrap();
    let e = Config::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("\"APIARY_TEST_SURELY_UNSET_VARIABLE_7f3a\""), "{e}");
    // Names the OS cannot hold are simply unset.
    std::fs::write(&path, "<hivemq>${A=B}</hivemq>").unwrap();
    assert!(Config::from_file(&path).is_err());
}

#[test]
fn pretty_json_is_complete_and_redacts_secrets() {
    let c = parse(ALL_OPTIONS);
    let json = c.to_pretty_json();
    assert!(!json.contains("changeme"), "{json}");
    assert!(!json.contains("057ba03d"), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["listeners"][0]["type"], "tcp");
    assert_eq!(v["listeners"][1]["type"], "tls-tcp");
    assert_eq!(v["listeners"][1]["tls"]["keystore"]["password"], "***");
    assert_eq!(v["listeners"][2]["type"], "websocket");
    assert_eq!(v["listeners"][3]["type"], "tls-websocket");
    assert_eq!(v["mqtt"]["queue_strategy"], "discard");
    assert_eq!(v["mqtt"]["session_expiry_max_interval"], 4_294_967_296u64);
    assert_eq!(v["persistence"], "file");
    assert_eq!(v["cluster"]["transport"]["type"], "tcp");
    assert_eq!(v["cluster"]["discovery"]["static"][1]["host"], "192.168.1.11");
    assert_eq!(
        v["cluster"]["transport"]["tls"]["client_authentication_mode"],
        "REQUIRED"
    );
    assert_eq!(v["control_center"]["users"][0]["password"], "***");
    let d = Config::default().to_pretty_json();
    let v: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(v["cluster"]["discovery"], "multicast");
    assert_eq!(v["cluster"]["transport"]["type"], "udp");
}

#[test]
fn every_error_display_is_a_sentence() {
    let cases = [
        "<hivemq",
        "<x/>",
        "<hivemq><x/></hivemq>",
        "<hivemq><mqtt/><mqtt/></hivemq>",
        "<hivemq><listeners><tcp-listener><port>-1</port></tcp-listener></listeners></hivemq>",
        "<hivemq><persistence><mode>x</mode></persistence></hivemq>",
        "<hivemq><listeners><tcp-listener/></listeners></hivemq>",
        "<hivemq>text</hivemq>",
        "<hivemq>${NOPE}</hivemq>",
        "<hivemq><mqtt a=\"b\"/></hivemq>",
    ];
    for xml in cases {
        let e = err(xml);
        assert!(e.starts_with("config.xml line 1: "), "{e}");
        assert!(e.ends_with('.'), "{e}");
    }
}

#[test]
fn empty_transport_and_discovery_keep_defaults_and_helpers_work() {
    let c = parse(
        "<hivemq><cluster><enabled>true</enabled><transport>\n<!--TRANSPORT_TYPE-->\n</transport>\
         <discovery/></cluster></hivemq>",
    );
    assert_eq!(c.cluster.transport, ClusterTransport::default());
    assert_eq!(c.cluster.discovery, Discovery::Multicast);
    assert_eq!(c.cluster.transport.kind(), "udp");
    assert_eq!(c.cluster.transport.bind_address(), None);

    let c = parse(ALL_OPTIONS);
    let l = &c.listeners[1];
    assert_eq!(l.element_name(), "tls-tcp-listener");
    assert_eq!((l.port(), l.bind_address(), l.name()), (8883, "0.0.0.0", Some("mqtts")));
    assert_eq!(
        l.tls().map(|t| t.client_authentication_mode),
        Some(ClientAuthenticationMode::Optional)
    );
    assert!(c.listeners[0].tls().is_none());
}
