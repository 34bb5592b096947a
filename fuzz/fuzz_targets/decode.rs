//! Fuzzes the MQTT decoder: arbitrary bytes, as the first packet (CONNECT
//! context) and as packets of an established 3.1.1 or 5.0 connection. The
//! decoder must never panic, must never claim more bytes than it was given,
//! and whatever it accepts must re-encode to something that decodes to the
//! same packet. The connection's PUBACK fast path (`plain_puback`) must
//! agree with the decoder on every input it takes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::codec::{decode, encode, plain_puback, Packet, Version};

const MAX: usize = 64 * 1024;

fn check(data: &[u8], version: Option<Version>) {
    let mut rest = data;
    if let (Some(pkid), Some(v)) = (plain_puback(rest), version) {
        match decode(rest, Some(v), MAX) {
            Ok(Some((Packet::PubAck(a), 4))) => assert_eq!(a.pkid, pkid),
            other => panic!("plain_puback took {:?}, decode says {other:?}", &rest[..4]),
        }
    }
    while let Ok(Some((packet, used))) = decode(rest, version, MAX) {
        assert!(used > 0 && used <= rest.len());
        let v = match (&packet, version) {
            (Packet::Connect(c), _) => c.version,
            (_, Some(v)) => v,
            (_, None) => unreachable!("only CONNECT decodes before the version is known"),
        };
        let mut out = Vec::new();
        encode(&packet, v, &mut out);
        let again = decode(&out, version, usize::MAX).expect("re-encoded packet decodes");
        let (again, n) = again.expect("re-encoded packet is complete");
        assert_eq!(n, out.len());
        // 3.1.1 CONNACK codes are mapped on encode; everything else is identical.
        if !matches!(packet, Packet::ConnAck(_)) {
            assert_eq!(again, packet);
        }
        rest = &rest[used..];
        if version.is_none() {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, None);
    check(data, Some(Version::V311));
    check(data, Some(Version::V5));
});
