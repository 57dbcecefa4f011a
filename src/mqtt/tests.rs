//! Cross-module codec tests: round trips, byte-exact vectors from the spec,
//! incremental decoding, error classification and a no-panic mutation loop.

use bytes::{Bytes, BytesMut};

use super::*;
use ProtocolVersion::{V5, V31, V311};

const NO_LIMIT: u32 = u32::MAX;

fn s(v: &str) -> String {
    v.to_owned()
}

fn user_props() -> Vec<(String, String)> {
    vec![(s("k1"), s("v1")), (s("k2"), s("v2")), (s("k1"), s("again"))]
}

/// Builds a packet from its first byte and body, computing the remaining length.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn to_bytes(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable");
    buf.to_vec()
}

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, version, NO_LIMIT);
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "packet left {} bytes", buf.len());
    }
    result
}

fn decode_err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    match decode_all(bytes, version) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Encodes, checks `encoded_len`, decodes, and compares.
fn round_trip(packet: Packet, version: ProtocolVersion) {
    let bytes = to_bytes(&packet, version);
    assert_eq!(encoded_len(&packet, version), bytes.len(), "{packet:?}");
    let decoded = decode_all(&bytes, version)
        .unwrap_or_else(|e| panic!("{e} decoding {packet:?}"))
        .expect("complete packet");
    assert_eq!(decoded, packet);
}

// ---------------------------------------------------------------- fixtures

fn connect_props() -> Properties {
    Properties {
        session_expiry_interval: Some(3600),
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"client-first")),
        request_problem_information: Some(0),
        request_response_information: Some(1),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(10),
        user_properties: user_props(),
        maximum_packet_size: Some(65_536),
        ..Default::default()
    }
}

fn will_props() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some(s("text/plain")),
        response_topic: Some(s("reply/here")),
        correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
        will_delay_interval: Some(30),
        user_properties: user_props(),
        ..Default::default()
    }
}

fn connack_props() -> Properties {
    Properties {
        session_expiry_interval: Some(0),
        assigned_client_identifier: Some(s("auto-1234")),
        server_keep_alive: Some(30),
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"server-final")),
        response_information: Some(s("resp/")),
        server_reference: Some(s("other.example:1883")),
        reason_string: Some(s("welcome")),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(5),
        maximum_qos: Some(1),
        retain_available: Some(0),
        user_properties: user_props(),
        maximum_packet_size: Some(1_048_576),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(1),
        shared_subscription_available: Some(0),
        ..Default::default()
    }
}

fn publish_props() -> Properties {
    Properties {
        payload_format_indicator: Some(0),
        message_expiry_interval: Some(60),
        content_type: Some(s("application/json")),
        response_topic: Some(s("resp/topic")),
        correlation_data: Some(Bytes::from_static(b"corr")),
        subscription_identifiers: vec![1, 268_435_455, 7],
        topic_alias: Some(3),
        user_properties: user_props(),
        ..Default::default()
    }
}

fn reason_props() -> Properties {
    Properties {
        reason_string: Some(s("because")),
        user_properties: user_props(),
        ..Default::default()
    }
}

fn subscribe_props() -> Properties {
    Properties {
        subscription_identifiers: vec![16_384],
        user_properties: user_props(),
        ..Default::default()
    }
}

fn unsubscribe_props() -> Properties {
    Properties {
        user_properties: user_props(),
        ..Default::default()
    }
}

fn disconnect_props() -> Properties {
    Properties {
        session_expiry_interval: Some(10),
        server_reference: Some(s("other:1883")),
        reason_string: Some(s("bye")),
        user_properties: user_props(),
        ..Default::default()
    }
}

fn auth_props() -> Properties {
    Properties {
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"\x00\x01binary")),
        reason_string: Some(s("continue")),
        user_properties: user_props(),
        ..Default::default()
    }
}

/// Every property set at once, for checking that encode filters per packet type.
fn all_props() -> Properties {
    let mut p = connack_props();
    p.payload_format_indicator = Some(1);
    p.message_expiry_interval = Some(1);
    p.content_type = Some(s("c"));
    p.response_topic = Some(s("r"));
    p.correlation_data = Some(Bytes::from_static(b"x"));
    p.subscription_identifiers = vec![1, 2];
    p.request_problem_information = Some(1);
    p.will_delay_interval = Some(1);
    p.request_response_information = Some(1);
    p.topic_alias = Some(1);
    p
}

fn connect(protocol: ProtocolVersion) -> Connect {
    let v5 = protocol == V5;
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s("client-ü"),
        will: Some(Will {
            topic: s("last/will"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: if v5 { will_props() } else { Properties::default() },
        }),
        username: Some(s("alice")),
        password: Some(Bytes::from_static(b"\xffsecret")),
        properties: if v5 { connect_props() } else { Properties::default() },
    }
}

/// One of every packet type, with every field that `version` carries populated.
fn all_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version == V5;
    let props = |p: fn() -> Properties| if v5 { p() } else { Properties::default() };
    let reason = |code: u8| if v5 { code } else { 0 };
    let response = |id: u16, code: u8| PubResponse {
        packet_id: id,
        reason: reason(code),
        properties: props(reason_props),
    };
    vec![
        Packet::Connect(connect(version)),
        Packet::ConnAck(ConnAck {
            // MQTT 3.1 has no session present flag.
            session_present: version != V31,
            code: if v5 {
                reason::NOT_AUTHORIZED
            } else {
                v3_connack::NOT_AUTHORIZED
            },
            properties: props(connack_props),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("sport/tennis/player1"),
            packet_id: 65_535,
            properties: props(publish_props),
            payload: Bytes::from_static(b"\x00payload\xff"),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a"),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::new(),
        }),
        Packet::PubAck(response(1, reason::NO_MATCHING_SUBSCRIBERS)),
        Packet::PubRec(response(2, reason::QUOTA_EXCEEDED)),
        Packet::PubRel(response(3, reason::PACKET_IDENTIFIER_NOT_FOUND)),
        Packet::PubComp(response(4, reason::PACKET_IDENTIFIER_NOT_FOUND)),
        Packet::PubAck(PubResponse {
            packet_id: 5,
            reason: 0,
            properties: Properties::default(),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: props(subscribe_props),
            filters: vec![
                (
                    s("sport/#"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                ),
                (
                    s("$share/g/a/+"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                ),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            properties: props(reason_props),
            reason_codes: vec![0, 1, 2, 0x80],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            properties: props(unsubscribe_props),
            filters: vec![s("sport/#"), s("a/+")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            properties: props(reason_props),
            reason_codes: if v5 { vec![0x00, 0x11] } else { Vec::new() },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: reason(reason::DISCONNECT_WITH_WILL),
            properties: props(disconnect_props),
        }),
    ]
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_every_packet_v311() {
    for packet in all_packets(V311) {
        round_trip(packet, V311);
    }
}

#[test]
fn round_trip_every_packet_v5() {
    for packet in all_packets(V5) {
        round_trip(packet, V5);
    }
    round_trip(
        Packet::Auth(Auth {
            reason: reason::CONTINUE_AUTHENTICATION,
            properties: auth_props(),
        }),
        V5,
    );
}

#[test]
fn round_trip_v31_connect_uses_mqisdp() {
    let packet = Packet::Connect(connect(V31));
    let bytes = to_bytes(&packet, V311);
    assert_eq!(&bytes[2..10], b"\x00\x06MQIsdp");
    assert_eq!(bytes[10], 3);
    round_trip(packet, V31);
    for packet in all_packets(V31) {
        round_trip(packet, V31);
    }
}

#[test]
fn connect_decodes_its_own_version() {
    // A CONNECT is decoded by its protocol level, whatever the connection default.
    let packet = Packet::Connect(connect(V5));
    let bytes = to_bytes(&packet, V311);
    assert_eq!(decode_all(&bytes, V311), Ok(Some(packet)));
}

#[test]
fn round_trip_short_forms_v5() {
    let minimal = [
        Packet::PubRel(PubResponse {
            packet_id: 9,
            reason: 0,
            properties: Properties::default(),
        }),
        Packet::PubRec(PubResponse {
            packet_id: 9,
            reason: reason::UNSPECIFIED_ERROR,
            properties: Properties::default(),
        }),
        Packet::PubComp(PubResponse {
            packet_id: 9,
            reason: 0,
            properties: reason_props(),
        }),
        Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        }),
        Packet::Disconnect(Disconnect {
            reason: reason::SESSION_TAKEN_OVER,
            properties: Properties::default(),
        }),
        Packet::Disconnect(Disconnect {
            reason: 0,
            properties: disconnect_props(),
        }),
        Packet::Auth(Auth {
            reason: 0,
            properties: Properties::default(),
        }),
        Packet::Auth(Auth {
            reason: reason::REAUTHENTICATE,
            properties: Properties::default(),
        }),
    ];
    for packet in minimal {
        round_trip(packet, V5);
    }
}

#[test]
fn v5_publish_with_empty_topic_and_alias() {
    round_trip(
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: String::new(),
            packet_id: 1,
            properties: Properties {
                topic_alias: Some(1),
                ..Default::default()
            },
            payload: Bytes::from_static(b"x"),
        }),
        V5,
    );
}

#[test]
fn encode_skips_properties_not_allowed_on_the_packet() {
    let publish = |properties| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t"),
            packet_id: 0,
            properties,
            payload: Bytes::new(),
        })
    };
    // Only the PUBLISH properties of table 2-4 survive.
    let all = all_props();
    let expected = Properties {
        payload_format_indicator: all.payload_format_indicator,
        message_expiry_interval: all.message_expiry_interval,
        content_type: all.content_type.clone(),
        response_topic: all.response_topic.clone(),
        correlation_data: all.correlation_data.clone(),
        subscription_identifiers: all.subscription_identifiers.clone(),
        topic_alias: all.topic_alias,
        user_properties: all.user_properties.clone(),
        ..Default::default()
    };
    let bytes = to_bytes(&publish(all_props()), V5);
    assert_eq!(decode_all(&bytes, V5), Ok(Some(publish(expected))));

    // SUBSCRIBE carries at most one subscription identifier.
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: all_props(),
        filters: vec![(s("a"), SubscriptionOptions::default())],
    });
    let Ok(Some(Packet::Subscribe(decoded))) = decode_all(&to_bytes(&subscribe, V5), V5) else {
        panic!("SUBSCRIBE did not round trip");
    };
    assert_eq!(decoded.properties.subscription_identifiers, vec![1]);
    assert_eq!(decoded.properties.user_properties, all_props().user_properties);
    assert_eq!(decoded.properties.reason_string, None);
}

#[test]
fn v3_encoding_drops_v5_only_fields() {
    let disconnect = Packet::Disconnect(Disconnect {
        reason: reason::SERVER_SHUTTING_DOWN,
        properties: disconnect_props(),
    });
    assert_eq!(to_bytes(&disconnect, V311), [0xE0, 0x00]);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 7,
        properties: reason_props(),
        reason_codes: vec![0x11],
    });
    assert_eq!(to_bytes(&unsuback, V311), [0xB0, 0x02, 0x00, 0x07]);
    let auth = Packet::Auth(Auth {
        reason: 0,
        properties: Properties::default(),
    });
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&auth, V311, &mut buf),
        Err(EncodeError::UnsupportedInVersion("AUTH"))
    );
    assert!(buf.is_empty());
    assert_eq!(encoded_len(&auth, V311), usize::MAX);
}

#[test]
fn encode_rejects_unrepresentable_fields() {
    let publish = |topic: String| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::new(),
        })
    };
    let mut buf = BytesMut::new();
    let long = publish("a".repeat(70_000));
    assert_eq!(
        encode(&long, V311, &mut buf),
        Err(EncodeError::StringTooLong("topic name"))
    );
    assert_eq!(
        encode(&publish(s("a\0b")), V311, &mut buf),
        Err(EncodeError::NullCharacter("topic name"))
    );
    assert!(buf.is_empty(), "nothing written on error");
}

#[test]
fn encoded_len_counts_multi_byte_remaining_length() {
    for size in [0, 120, 121, 122, 16_380, 16_390, 2_097_200] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t"),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from(vec![7u8; size]),
        });
        round_trip(packet, V311);
    }
}

// ---------------------------------------------------------------- byte-exact vectors

#[test]
fn vector_connect_v311_like_mosquitto_sub() {
    // mosquitto_sub -i test -k 60: clean session, no will/credentials.
    let bytes = [
        0x10, 0x10, // CONNECT, remaining length 16
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4
        0x02, // clean session
        0x00, 0x3C, // keep alive 60
        0x00, 0x04, b't', b'e', b's', b't', // client id
    ];
    let packet = Packet::Connect(Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 60,
        client_id: s("test"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    });
    assert_eq!(decode_all(&bytes, V311), Ok(Some(packet.clone())));
    assert_eq!(to_bytes(&packet, V311), bytes);
}

#[test]
fn vector_publish_qos1() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: 10,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi"),
    });
    let v3 = [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'];
    assert_eq!(to_bytes(&packet, V311), v3);
    assert_eq!(decode_all(&v3, V311), Ok(Some(packet.clone())));
    // v5 adds a zero property length after the packet identifier.
    let v5 = [0x32, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'h', b'i'];
    assert_eq!(to_bytes(&packet, V5), v5);
    assert_eq!(decode_all(&v5, V5), Ok(Some(packet)));
}

#[test]
fn vector_subscribe_v5_with_options() {
    let bytes = [
        0x82, 0x0B, // SUBSCRIBE, flags 0b0010, remaining length 11
        0x00, 0x01, // packet id 1
        0x02, 0x0B, 0x05, // properties: subscription identifier 5
        0x00, 0x03, b'a', b'/', b'#', // filter
        0x2D, // QoS 1 | no local | retain as published | retain handling 2
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties {
            subscription_identifiers: vec![5],
            ..Default::default()
        },
        filters: vec![(
            s("a/#"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
    });
    assert_eq!(decode_all(&bytes, V5), Ok(Some(packet.clone())));
    assert_eq!(to_bytes(&packet, V5), bytes);
}

#[test]
fn vector_puback_short_forms() {
    let ok = Packet::PubAck(PubResponse {
        packet_id: 7,
        reason: 0,
        properties: Properties::default(),
    });
    assert_eq!(to_bytes(&ok, V5), [0x40, 0x02, 0x00, 0x07]);
    assert_eq!(decode_all(&[0x40, 0x02, 0x00, 0x07], V5), Ok(Some(ok.clone())));
    // Reason with an explicit zero property length is also accepted.
    assert_eq!(decode_all(&[0x40, 0x04, 0x00, 0x07, 0x00, 0x00], V5), Ok(Some(ok)));
    let no_match = Packet::PubAck(PubResponse {
        packet_id: 7,
        reason: reason::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::default(),
    });
    assert_eq!(to_bytes(&no_match, V5), [0x40, 0x03, 0x00, 0x07, 0x10]);
    assert_eq!(decode_all(&[0x40, 0x03, 0x00, 0x07, 0x10], V5), Ok(Some(no_match)));
}

#[test]
fn vector_small_packets() {
    assert_eq!(to_bytes(&Packet::PingReq, V311), [0xC0, 0x00]);
    assert_eq!(to_bytes(&Packet::PingResp, V5), [0xD0, 0x00]);
    let connack = |session_present, code| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: Properties::default(),
        })
    };
    assert_eq!(to_bytes(&connack(true, 0), V311), [0x20, 0x02, 0x01, 0x00]);
    assert_eq!(to_bytes(&connack(true, 0), V31), [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(to_bytes(&connack(false, 0x87), V5), [0x20, 0x03, 0x00, 0x87, 0x00]);
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![0, 1, reason::NOT_AUTHORIZED],
    });
    assert_eq!(to_bytes(&suback, V311), [0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80]);
    let disconnect = |reason| {
        Packet::Disconnect(Disconnect {
            reason,
            properties: Properties::default(),
        })
    };
    assert_eq!(to_bytes(&disconnect(0), V5), [0xE0, 0x00]);
    assert_eq!(to_bytes(&disconnect(0x8E), V5), [0xE0, 0x01, 0x8E]);
    assert_eq!(
        to_bytes(
            &Packet::PubRel(PubResponse {
                packet_id: 0x1234,
                reason: 0,
                properties: Properties::default(),
            }),
            V311
        ),
        [0x62, 0x02, 0x12, 0x34]
    );
}

#[test]
fn v5_connect_password_without_username_is_allowed() {
    let mut c = connect(V5);
    c.username = None;
    round_trip(Packet::Connect(c), V5);
}

// ---------------------------------------------------------------- incremental decoding

#[test]
fn byte_at_a_time_then_complete() {
    let packet = all_packets(V5).swap_remove(2);
    let bytes = to_bytes(&packet, V5);
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        let result = decode(&mut buf, V5, NO_LIMIT);
        if i + 1 < bytes.len() {
            assert_eq!(result, Ok(None), "after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1, "buffer untouched");
        } else {
            assert_eq!(result, Ok(Some(packet.clone())));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn two_packets_in_one_buffer_decode_in_order() {
    let first = Packet::PingReq;
    let second = all_packets(V311).swap_remove(0);
    let mut buf = BytesMut::new();
    encode(&first, V311, &mut buf).unwrap();
    encode(&second, V311, &mut buf).unwrap();
    buf.extend_from_slice(&[0x30]); // start of a third packet
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(Some(first)));
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(Some(second)));
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(None));
    assert_eq!(&buf[..], [0x30]);
    let mut empty = BytesMut::new();
    assert_eq!(decode(&mut empty, V5, NO_LIMIT), Ok(None));
}

#[test]
fn large_payload_is_a_zero_copy_slice() {
    let Packet::Publish(mut publish) = all_packets(V311).swap_remove(2) else {
        panic!("not a PUBLISH");
    };
    publish.payload = Bytes::from(vec![7u8; crate::mqtt::packet::COPY_MAX]);
    let bytes = to_bytes(&Packet::Publish(publish), V311);
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V311, NO_LIMIT) else {
        panic!("not a PUBLISH");
    };
    let offset = p.payload.as_ptr() as usize - base;
    assert_eq!(offset, bytes.len() - p.payload.len());
}

#[test]
fn small_packet_is_copied_and_the_buffer_is_reused() {
    let bytes = to_bytes(&all_packets(V311).swap_remove(2), V311);
    assert!(bytes.len() <= crate::mqtt::packet::COPY_MAX);
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&bytes);
    let base = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V311, NO_LIMIT) else {
        panic!("not a PUBLISH");
    };
    let payload = p.payload.as_ptr() as usize;
    assert!(!(base..base + 4096).contains(&payload), "the payload is a copy");
    // The read buffer is not shared with the payload: the next read gets the same room back.
    buf.reserve(4096);
    assert_eq!(buf.as_ptr() as usize, base);
}

#[test]
fn packet_too_large_detected_from_fixed_header_alone() {
    // PUBLISH claiming 2,097,152 bytes of body; only the fixed header has arrived.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
    let err = decode(&mut buf, V5, 1024).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 2_097_152 + 5,
            max: 1024
        }
    );
    assert_eq!(err.reason_code(), reason::PACKET_TOO_LARGE);

    // The limit covers the fixed header too: a 10-byte packet fails a 9-byte limit.
    let bytes = frame(0x30, &[0x00, 0x01, b't', 1, 2, 3, 4, 5]);
    assert_eq!(bytes.len(), 10);
    let mut buf = BytesMut::from(&bytes[..2]);
    assert!(matches!(
        decode(&mut buf, V311, 9),
        Err(DecodeError::PacketTooLarge { size: 10, max: 9 })
    ));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(decode(&mut buf, V311, 10), Ok(Some(_))));
}

// ---------------------------------------------------------------- error cases

/// CONNECT body after the protocol name and level.
fn connect_bytes(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0x00, 0x3C]);
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

#[test]
fn fixed_header_errors() {
    use DecodeError::*;
    // A 5th remaining length byte [MQTT-1.5.5-1].
    assert_eq!(
        decode_err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5),
        MalformedRemainingLength
    );
    assert_eq!(decode_err(&[0x00, 0x00], V5), InvalidPacketType(0));
    assert_eq!(decode_err(&[0xF0, 0x00], V311), InvalidPacketType(15));
    // QoS 3 [MQTT-3.3.1-4].
    assert_eq!(decode_err(&[0x36, 0x00], V311), InvalidQoS);
    // DUP on QoS 0 is malformed in v5 [MQTT-3.3.1-2], tolerated in v3.1.1.
    assert_eq!(decode_err(&[0x38, 0x00], V5).reason_code(), reason::MALFORMED_PACKET);
    assert!(matches!(decode_all(&frame(0x38, &[0, 1, b't']), V311), Ok(Some(_))));
    // Required flags 0b0010 [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1].
    assert_eq!(decode_err(&[0x60, 0x02, 0x00, 0x01], V311), InvalidFlags(6));
    assert_eq!(decode_err(&[0x80, 0x00], V311), InvalidFlags(8));
    assert_eq!(decode_err(&[0xA0, 0x00], V5), InvalidFlags(10));
    // Reserved flags must be 0 [MQTT-2.1.3-1].
    assert_eq!(decode_err(&[0x41, 0x02, 0x00, 0x01], V5), InvalidFlags(4));
    assert_eq!(decode_err(&[0xC2, 0x00], V5), InvalidFlags(12));
    assert_eq!(decode_err(&[0x11, 0x00], V5), InvalidFlags(1));
    // PINGREQ/PINGRESP and v3 DISCONNECT have no body.
    assert_eq!(decode_err(&[0xC0, 0x01, 0x00], V5), TrailingData("PINGREQ"));
    assert_eq!(decode_err(&[0xD0, 0x01, 0x00], V311), TrailingData("PINGRESP"));
    assert_eq!(decode_err(&[0xE0, 0x01, 0x00], V311), TrailingData("DISCONNECT"));
    for e in [
        MalformedRemainingLength,
        InvalidPacketType(0),
        InvalidFlags(6),
        InvalidQoS,
    ] {
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    }
}

#[test]
fn string_errors() {
    // Invalid UTF-8 [MQTT-1.5.4-1] and U+0000 [MQTT-1.5.4-2] in a topic name.
    let err = decode_err(&frame(0x30, &[0x00, 0x02, 0xC3, 0x28]), V311);
    assert_eq!(err, DecodeError::InvalidUtf8("topic name"));
    assert_eq!(err.reason_code(), reason::MALFORMED_PACKET);
    let err = decode_err(&frame(0x30, &[0x00, 0x02, b'a', 0x00]), V5);
    assert_eq!(err, DecodeError::NullCharacter);
    // A surrogate encoded in UTF-8 is invalid too.
    let err = decode_err(&frame(0x30, &[0x00, 0x03, 0xED, 0xA0, 0x80]), V5);
    assert_eq!(err, DecodeError::InvalidUtf8("topic name"));
    // Length prefix longer than the packet.
    let err = decode_err(&frame(0x30, &[0x00, 0x09, b'a']), V5);
    assert_eq!(err, DecodeError::MissingData("topic name"));
}

#[test]
fn connect_errors() {
    use DecodeError::*;
    let client_id = [0x00, 0x01, b'c'];
    // [MQTT-3.1.2-1]
    let err = decode_err(&connect_bytes("MQTX", 4, 0x02, &client_id), V311);
    assert_eq!(err, InvalidProtocolName(s("MQTX")));
    assert_eq!(err.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    // [MQTT-3.1.2-2]
    for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4)] {
        let err = decode_err(&connect_bytes(name, level, 0x02, &client_id), V311);
        assert_eq!(err, UnsupportedProtocolVersion(level));
        assert_eq!(err.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    }
    // Reserved flag [MQTT-3.1.2-3].
    assert_eq!(
        decode_err(&connect_bytes("MQTT", 4, 0x03, &client_id), V311),
        ReservedBitSet
    );
    // Will QoS / retain without will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    for flags in [0x08, 0x20] {
        let err = decode_err(&connect_bytes("MQTT", 5, flags, &[0, 0, 0x00, 0x01, b'c']), V5);
        assert_eq!(err.reason_code(), reason::MALFORMED_PACKET);
    }
    // Will QoS 3 [MQTT-3.1.2-12].
    let will = [0x00, 0x01, b'c', 0x00, 0x01, b't', 0x00, 0x00];
    assert_eq!(decode_err(&connect_bytes("MQTT", 4, 0x1C, &will), V311), InvalidQoS);
    assert!(matches!(
        decode_all(&connect_bytes("MQTT", 4, 0x14, &will), V311),
        Ok(Some(_))
    ));
    // Password without user name: protocol error in 3.1.1 [MQTT-3.1.2-22], fine in v5.
    let password = [0x00, 0x01, b'c', 0x00, 0x01, b'p'];
    let err = decode_err(&connect_bytes("MQTT", 4, 0x40, &password), V311);
    assert!(matches!(err, ProtocolError(_)));
    let mut v5 = vec![0x00]; // property length
    v5.extend_from_slice(&password);
    assert!(matches!(
        decode_all(&connect_bytes("MQTT", 5, 0x40, &v5), V311),
        Ok(Some(_))
    ));
    // Missing client identifier and trailing bytes.
    assert_eq!(
        decode_err(&connect_bytes("MQTT", 4, 0x02, &[]), V311),
        MissingData("client identifier")
    );
    assert_eq!(
        decode_err(&connect_bytes("MQTT", 4, 0x02, &[0x00, 0x01, b'c', 0xFF]), V311),
        TrailingData("CONNECT")
    );
}

#[test]
fn property_errors() {
    use DecodeError::*;
    let puback = |props: &[u8]| {
        let mut body = vec![0x00, 0x01, 0x00, props.len() as u8];
        body.extend_from_slice(props);
        frame(0x40, &body)
    };
    // Topic alias is a PUBLISH property: protocol error elsewhere (table 2-4).
    let err = decode_err(&puback(&[0x23, 0x00, 0x01]), V5);
    assert_eq!(
        err,
        PropertyNotAllowed {
            id: 0x23,
            packet: "PUBACK/PUBREC/PUBREL/PUBCOMP"
        }
    );
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    // Unknown identifier.
    assert_eq!(decode_err(&puback(&[0x05, 0x00]), V5), InvalidPropertyId(0x05));
    assert_eq!(decode_err(&puback(&[0x80, 0x00]), V5), InvalidPropertyId(0x80));
    // Duplicate single-valued property.
    let err = decode_err(&puback(&[0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00]), V5);
    assert_eq!(err, DuplicateProperty(0x1F));
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    // Repeated user properties are fine.
    let ok = puback(&[0x26, 0, 1, b'a', 0, 1, b'b', 0x26, 0, 1, b'a', 0, 0]);
    assert!(matches!(decode_all(&ok, V5), Ok(Some(_))));
    // Property length beyond the packet, and a value cut short by the property length.
    let mut short = puback(&[0x1F, 0x00, 0x05]);
    assert_eq!(decode_err(&short, V5), MissingData("reason string"));
    short[5] = 0x10; // property length 16 > what remains
    assert_eq!(decode_err(&short, V5), MissingData("properties"));

    let publish = |props: &[u8]| {
        let mut body = vec![0x00, 0x01, b't', props.len() as u8];
        body.extend_from_slice(props);
        frame(0x30, &body)
    };
    assert_eq!(
        decode_err(&publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]), V5),
        DuplicateProperty(0x02)
    );
    // Value ranges.
    assert_eq!(
        decode_err(&publish(&[0x23, 0x00, 0x00]), V5),
        InvalidPropertyValue(0x23)
    );
    assert_eq!(decode_err(&publish(&[0x0B, 0x00]), V5), InvalidPropertyValue(0x0B));
    assert_eq!(decode_err(&publish(&[0x01, 0x02]), V5), InvalidPropertyValue(0x01));
    assert_eq!(
        decode_err(&publish(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF]), V5),
        MalformedVarInt("subscription identifier")
    );
    // Several subscription identifiers may be delivered in one PUBLISH [MQTT-3.3.4-4].
    let Ok(Some(Packet::Publish(p))) = decode_all(&publish(&[0x0B, 0x01, 0x0B, 0x80, 0x01]), V5) else {
        panic!("PUBLISH with two subscription identifiers");
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 128]);

    // CONNECT value ranges: Receive Maximum 0, Maximum Packet Size 0.
    let connect_with = |props: &[u8]| {
        let mut rest = vec![props.len() as u8];
        rest.extend_from_slice(props);
        rest.extend_from_slice(&[0x00, 0x01, b'c']);
        connect_bytes("MQTT", 5, 0x02, &rest)
    };
    assert_eq!(decode_err(&connect_with(&[0x21, 0, 0]), V5), InvalidPropertyValue(0x21));
    assert_eq!(
        decode_err(&connect_with(&[0x27, 0, 0, 0, 0]), V5),
        InvalidPropertyValue(0x27)
    );
    assert_eq!(decode_err(&connect_with(&[0x17, 2]), V5), InvalidPropertyValue(0x17));
    assert_eq!(
        decode_err(&connect_with(&[0x01, 0]), V5),
        PropertyNotAllowed {
            id: 0x01,
            packet: "CONNECT"
        }
    );
    // Will properties have their own allow-list.
    let will_with = |props: &[u8]| {
        let mut rest = vec![0x00, 0x00, 0x01, b'c', props.len() as u8];
        rest.extend_from_slice(props);
        rest.extend_from_slice(&[0x00, 0x01, b't', 0x00, 0x00]);
        connect_bytes("MQTT", 5, 0x06, &rest)
    };
    assert!(matches!(decode_all(&will_with(&[0x18, 0, 0, 0, 5]), V5), Ok(Some(_))));
    assert_eq!(
        decode_err(&will_with(&[0x11, 0, 0, 0, 5]), V5),
        PropertyNotAllowed {
            id: 0x11,
            packet: "will properties"
        }
    );
}

#[test]
fn publish_errors() {
    use DecodeError::*;
    // Wildcards in a topic name [MQTT-3.3.2-2].
    for topic in [&b"a/+"[..], b"#", b"a/#"] {
        let mut body = vec![0x00, topic.len() as u8];
        body.extend_from_slice(topic);
        let err = decode_err(&frame(0x30, &body), V311);
        assert_eq!(err, InvalidTopicName);
        assert_eq!(err.reason_code(), reason::TOPIC_NAME_INVALID);
    }
    // Empty topic: v3 never, v5 only with a topic alias [MQTT-3.3.2-1].
    assert_eq!(decode_err(&frame(0x30, &[0x00, 0x00]), V311), InvalidTopicName);
    let err = decode_err(&frame(0x30, &[0x00, 0x00, 0x00]), V5);
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    assert!(matches!(
        decode_all(&frame(0x30, &[0x00, 0x00, 0x03, 0x23, 0x00, 0x01]), V5),
        Ok(Some(_))
    ));
    // Packet identifier 0 for QoS > 0 [MQTT-2.2.1-3].
    let err = decode_err(&frame(0x32, &[0x00, 0x01, b't', 0x00, 0x00]), V311);
    assert_eq!(err, ZeroPacketId);
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    assert_eq!(
        decode_err(&frame(0x34, &[0x00, 0x01, b't', 0x00]), V311),
        MissingData("packet identifier")
    );
    // v5 PUBLISH needs a property length.
    assert_eq!(
        decode_err(&frame(0x30, &[0x00, 0x01, b't']), V5),
        MissingData("property length")
    );
}

#[test]
fn subscribe_errors() {
    use DecodeError::*;
    let sub = |version_v5: bool, options: u8| {
        let mut body = vec![0x00, 0x01];
        if version_v5 {
            body.push(0x00);
        }
        body.extend_from_slice(&[0x00, 0x01, b'a', options]);
        frame(0x82, &body)
    };
    // No filters [MQTT-3.8.3-3].
    let err = decode_err(&frame(0x82, &[0x00, 0x01]), V311);
    assert_eq!(err, EmptySubscribe);
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    assert_eq!(decode_err(&frame(0x82, &[0x00, 0x01, 0x00]), V5), EmptySubscribe);
    // v3.1.1: upper 6 bits reserved, QoS 3 malformed [MQTT-3-8.3-4].
    assert_eq!(decode_err(&sub(false, 0x04), V311), ReservedBitSet);
    assert_eq!(decode_err(&sub(false, 0x03), V311), InvalidQoS);
    // v5: reserved bits 6-7 [MQTT-3.8.3-5]; QoS 3 and retain handling 3.
    assert_eq!(decode_err(&sub(true, 0x40), V5), ReservedBitSet);
    assert_eq!(decode_err(&sub(true, 0x80), V5), ReservedBitSet);
    assert!(decode_err(&sub(true, 0x03), V5).reason_code() >= 0x81);
    assert!(decode_err(&sub(true, 0x30), V5).reason_code() >= 0x81);
    assert!(matches!(decode_all(&sub(true, 0x2E), V5), Ok(Some(_))));
    // Filter without options byte.
    assert_eq!(
        decode_err(&frame(0x82, &[0x00, 0x01, 0x00, 0x01, b'a']), V311),
        MissingData("subscription options")
    );
    // Zero packet id.
    assert_eq!(
        decode_err(&frame(0x82, &[0x00, 0x00, 0x00, 0x01, b'a', 0x00]), V311),
        ZeroPacketId
    );
    // At most one subscription identifier in SUBSCRIBE.
    let body = [0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00];
    assert_eq!(decode_err(&frame(0x82, &body), V5), DuplicateProperty(0x0B));
    // No Local on a shared subscription [MQTT-3.8.3-4].
    let mut shared = vec![0x00, 0x01, 0x00, 0x00, 10];
    shared.extend_from_slice(b"$share/g/a");
    shared.push(0x04);
    assert_eq!(
        decode_err(&frame(0x82, &shared), V5).reason_code(),
        reason::PROTOCOL_ERROR
    );
}

#[test]
fn unsubscribe_and_ack_errors() {
    use DecodeError::*;
    let err = decode_err(&frame(0xA2, &[0x00, 0x01]), V311);
    assert_eq!(err, EmptyUnsubscribe);
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    assert_eq!(decode_err(&frame(0xA2, &[0x00, 0x01, 0x00]), V5), EmptyUnsubscribe);
    // v3.1.1 acks have exactly a packet identifier.
    assert_eq!(
        decode_err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311),
        TrailingData("UNSUBACK")
    );
    assert_eq!(
        decode_err(&[0x40, 0x03, 0x00, 0x01, 0x00], V311),
        TrailingData("PUBACK")
    );
    assert_eq!(decode_err(&[0x40, 0x01, 0x00], V5), MissingData("packet identifier"));
    assert_eq!(decode_err(&[0x50, 0x02, 0x00, 0x00], V5), ZeroPacketId);
    // CONNACK reserved flag bits [MQTT-3.2.2-1].
    assert_eq!(decode_err(&[0x20, 0x02, 0x02, 0x00], V311), ReservedBitSet);
    assert_eq!(
        decode_err(&[0x20, 0x01, 0x00], V311),
        MissingData("connect reason code")
    );
    // v5 DISCONNECT with reason only (remaining length 1).
    assert_eq!(
        decode_all(&[0xE0, 0x01, 0x8B], V5),
        Ok(Some(Packet::Disconnect(Disconnect {
            reason: reason::SERVER_SHUTTING_DOWN,
            properties: Properties::default(),
        })))
    );
    assert_eq!(
        decode_all(&[0xF0, 0x00], V5),
        Ok(Some(Packet::Auth(Auth {
            reason: 0,
            properties: Properties::default(),
        })))
    );
}

#[test]
fn v5_connack_code_mapping() {
    assert_eq!(v5_connack_to_v3(reason::SUCCESS), v3_connack::ACCEPTED);
    assert_eq!(
        v5_connack_to_v3(reason::UNSUPPORTED_PROTOCOL_VERSION),
        v3_connack::UNACCEPTABLE_PROTOCOL_VERSION
    );
    assert_eq!(
        v5_connack_to_v3(reason::CLIENT_IDENTIFIER_NOT_VALID),
        v3_connack::IDENTIFIER_REJECTED
    );
    assert_eq!(
        v5_connack_to_v3(reason::BAD_USER_NAME_OR_PASSWORD),
        v3_connack::BAD_USERNAME_OR_PASSWORD
    );
    assert_eq!(v5_connack_to_v3(reason::NOT_AUTHORIZED), v3_connack::NOT_AUTHORIZED);
    assert_eq!(v5_connack_to_v3(reason::SERVER_BUSY), v3_connack::SERVER_UNAVAILABLE);
}

// ---------------------------------------------------------------- robustness

/// xorshift64*: deterministic, dependency-free randomness for the mutation loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Decodes everything in `bytes`; any packet that decodes must re-encode to a
/// fixed point with an exact `encoded_len`.
fn decode_without_panic(bytes: &[u8], version: ProtocolVersion) {
    let mut buf = BytesMut::from(bytes);
    for _ in 0..bytes.len() + 1 {
        match decode(&mut buf, version, 1 << 20) {
            Ok(Some(packet)) => {
                let out_version = match &packet {
                    Packet::Connect(c) => c.protocol,
                    _ => version,
                };
                let encoded = to_bytes(&packet, out_version);
                assert_eq!(encoded.len(), encoded_len(&packet, out_version));
                let again = decode_all(&encoded, out_version)
                    .unwrap_or_else(|e| panic!("{e}: re-decoding {packet:?}"))
                    .expect("complete");
                assert_eq!(to_bytes(&again, out_version), encoded);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for version in [V31, V311, V5] {
        for packet in all_packets(version) {
            corpus.push(to_bytes(&packet, version));
        }
    }
    for version in [V31, V311, V5] {
        for seed in &corpus {
            // Every truncation.
            for len in 0..seed.len() {
                decode_without_panic(&seed[..len], version);
            }
            // Random mutations: flip, replace, insert, delete bytes.
            for _ in 0..200 {
                let mut bytes = seed.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(bytes.len());
                    let byte = rng.next() as u8;
                    match rng.below(4) {
                        0 if i < bytes.len() => bytes[i] ^= 1 << (byte % 8),
                        1 if i < bytes.len() => bytes[i] = byte,
                        2 => bytes.insert(i, byte),
                        _ if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ => {}
                    }
                }
                decode_without_panic(&bytes, version);
            }
        }
        // Pure noise, with a valid-looking first byte half of the time.
        for _ in 0..5000 {
            let len = rng.below(64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let (Some(first), true) = (bytes.first_mut(), rng.below(2) == 0) {
                *first &= 0xF0;
                if len > 1 {
                    bytes[1] = (len - 2) as u8;
                }
            }
            decode_without_panic(&bytes, version);
        }
    }
}

/// Regressions found by the `decode` fuzzer (fuzz/regressions/decode-*.bin): inputs that
/// decoded to something encode could not write back.
#[test]
fn fuzz_regressions_round_trip_quirks_are_refused() {
    use bytes::BytesMut;
    // v3.1.1 SUBACK with return code 0x81.
    let mut b = BytesMut::from(&[0x90, 0x03, 0x00, 0x01, 0x81][..]);
    assert!(super::decode(&mut b, super::ProtocolVersion::V311, u32::MAX).is_err());
    // v3.1.1 PUBLISH QoS 0 with DUP set: tolerated, with DUP cleared.
    let mut b = BytesMut::from(&[0x38, 0x03, 0x00, 0x01, b'a'][..]);
    match super::decode(&mut b, super::ProtocolVersion::V311, u32::MAX) {
        Ok(Some(super::Packet::Publish(p))) => assert!(!p.dup),
        other => panic!("{other:?}"),
    }
}
