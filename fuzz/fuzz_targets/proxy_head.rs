//! Fuzz the proxy's strict request-head parser: never a panic, and a head it accepts has one
//! unambiguous framing (no Content-Length alongside Transfer-Encoding, at most one
//! Content-Length).
#![no_main]

use bytes::BytesMut;
use kennel_proxy::head::{Framing, try_parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 4096;
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    if let Ok(Some(head)) = try_parse(&mut buf, max) {
        assert!(buf.len() < before, "a parsed head consumes bytes");
        let cl = head.header_count("content-length");
        let te = head.header_count("transfer-encoding");
        assert!(cl <= 1, "duplicate Content-Length accepted");
        assert!(cl == 0 || te == 0, "Content-Length with Transfer-Encoding accepted");
        match head.framing {
            Framing::Chunked => assert_eq!(te, 1),
            Framing::Length(_) => assert_eq!(cl, 1),
            Framing::None => {}
        }
    }
});
