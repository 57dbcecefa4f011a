//! MQTT codec fuzzer.
//!
//! Input: one selector byte, then a byte stream.
//! * selector bits 0-1: protocol version (0 = 3.1, 1 = 3.1.1, 2 and 3 = 5.0);
//! * selector bits 2-6: chunk size - 1 for the incremental pass (1..=32 bytes);
//! * selector bit 7: a small Maximum Packet Size (64) instead of `u32::MAX`.
//!
//! Checks:
//! 1. decoding the whole stream packet by packet (until `Ok(None)` or the first error) gives the
//!    same results as feeding the same bytes a chunk at a time, and `Ok(None)` leaves the buffer
//!    untouched;
//! 2. every decoded packet re-encodes (`encode` succeeds, `encoded_len` equals the bytes written),
//!    the encoding decodes back to the same packet, consuming it exactly, and re-encoding that packet
//!    gives the same bytes;
//! 3. encoding the packet for the other protocol versions never panics, appends nothing when it
//!    fails, and `encoded_len` agrees with it (`usize::MAX` on failure).
//!
//! Two lossy cases are documented behaviour of `encode` and are modelled by [`expected`]
//! (see fuzz/README.md); set `APIARY_FUZZ_STRICT=1` to compare without them.
#![no_main]


use apiary::mqtt::{self, DecodeError, Packet, ProtocolVersion};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const VERSIONS: [ProtocolVersion; 3] = [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5];


type Outcome = Vec<Result<Packet, DecodeError>>;

/// One `decode` call; checks the `Ok(None)` contract (buffer untouched).
fn decode_one(buf: &mut BytesMut, version: ProtocolVersion, max: u32) -> Result<Option<Packet>, DecodeError> {
    // Same start and length: nothing was split off or appended (a full copy to compare contents
    // would make chunked decoding quadratic; decode only reads the bytes it leaves).
    let before = (buf.as_ptr(), buf.len(), buf.capacity());
    let result = mqtt::decode(buf, version, max);
    if let Ok(None) = result {
        assert_eq!(
            before,
            (buf.as_ptr(), buf.len(), buf.capacity()),
            "decode returned Ok(None) but changed the buffer"
        );
    }
    result
}

/// Decodes the whole stream at once; stops at `Ok(None)` or after the first error.
fn decode_all(stream: &[u8], version: ProtocolVersion, max: u32) -> Outcome {
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    loop {
        match decode_one(&mut buf, version, max) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// Same, but the bytes arrive `chunk` at a time, as from a socket.
fn decode_chunked(stream: &[u8], version: ProtocolVersion, max: u32, chunk: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_one(&mut buf, version, max) {
                Ok(Some(p)) => out.push(Ok(p)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

/// What a decode of `encode(p)` must give back: `p` itself, except for what `encode`
/// documents that it changes.
/// What a decoded packet must encode back to: itself (the codec refuses or normalises on
/// decode whatever it could not write back; see fuzz/regressions).
fn expected(p: &Packet, _version: ProtocolVersion) -> Packet {
    p.clone()
}

fn round_trip(p: &Packet, version: ProtocolVersion) {
    let mut wire = BytesMut::new();
    if let Err(e) = mqtt::encode(p, version, &mut wire) {
        panic!("decoded packet does not re-encode: {e:?}\npacket: {p:?}");
    }
    assert_eq!(
        mqtt::encoded_len(p, version),
        wire.len(),
        "encoded_len differs from the encoded length for {p:?}"
    );

    let bytes = wire.clone();
    let mut buf = wire;
    let again = match mqtt::decode(&mut buf, version, u32::MAX) {
        Ok(Some(again)) => again,
        other => panic!(
            "re-encoded packet does not decode: {other:?}\npacket: {p:?}\nbytes: {:02x?}",
            &bytes[..]
        ),
    };
    assert!(buf.is_empty(), "decode left {} of the re-encoded bytes", buf.len());
    assert_eq!(
        again,
        expected(p, version),
        "round trip changed the packet\nbytes: {:02x?}",
        &bytes[..]
    );

    // The encoding of a decoded packet is a fixed point.
    let mut wire2 = BytesMut::new();
    mqtt::encode(&again, version, &mut wire2).expect("second encode");
    assert_eq!(&bytes[..], &wire2[..], "re-encoding is not stable for {again:?}");

    // Other versions: never panic, nothing appended on error, encoded_len agrees.
    for other in VERSIONS {
        if other == version {
            continue;
        }
        let mut out = BytesMut::from(&b"prefix"[..]);
        let len = mqtt::encoded_len(p, other);
        match mqtt::encode(p, other, &mut out) {
            Ok(()) => assert_eq!(len, out.len() - 6, "encoded_len({other:?}) differs for {p:?}"),
            Err(_) => {
                assert_eq!(&out[..], b"prefix", "encode appended bytes before failing");
                assert_eq!(len, usize::MAX, "encoded_len({other:?}) of an unencodable packet");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let version = VERSIONS[usize::from(selector & 0x03).min(2)];
    let chunk = usize::from((selector >> 2) & 0x1F) + 1;
    let max = if selector & 0x80 != 0 { 64 } else { u32::MAX };

    let all = decode_all(stream, version, max);
    let chunked = decode_chunked(stream, version, max, chunk);
    assert_eq!(all, chunked, "decoding in chunks of {chunk} differs from decoding at once");

    for packet in all.iter().filter_map(|r| r.as_ref().ok()) {
        round_trip(packet, version);
    }
});
