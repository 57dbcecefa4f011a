//! Codec micro-benchmarks: decode and encode of an MQTT 5 QoS 1 PUBLISH with 16 B, 1 KiB and
//! 64 KiB payloads. `cargo bench --bench codec` (add `-- --quick` for a short run).

use std::hint::black_box;

use apiary::mqtt::{self, Packet, Properties, ProtocolVersion, Publish, QoS};
use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

fn publish(payload: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-7/floor-3/room-12/temperature".into(),
        packet_id: 4242,
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5; payload]),
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for (size, name) in SIZES {
        let packet = publish(size);
        let mut encoded = BytesMut::new();
        mqtt::encode(&packet, ProtocolVersion::V5, &mut encoded).unwrap();
        group.throughput(Throughput::Bytes(encoded.len() as u64));

        group.bench_with_input(BenchmarkId::new("encode", name), &packet, |b, packet| {
            let mut buf = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                buf.clear();
                mqtt::encode(black_box(packet), ProtocolVersion::V5, &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, encoded| {
            b.iter_batched(
                || encoded.clone(),
                |mut buf| mqtt::decode(&mut buf, ProtocolVersion::V5, u32::MAX).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
