//! Fuzz both heads of the origin side of forwarding: the response-head parser on arbitrary bytes
//! (never a panic; an accepted head has a status of 100–999, consumes what it parsed, and a body
//! framing consistent with its headers), and the request head kennel writes for a request the
//! strict parser accepted, which must parse strictly again with the same method and framing (no
//! framing an origin could read differently is ever sent on).
#![no_main]

use bytes::BytesMut;
use kennel_proxy::head::{Framing, MAX_HEADERS, try_parse};
use kennel_proxy::origin::{parse_response, request_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for head_request in [false, true] {
        let mut buf = BytesMut::from(data);
        let before = buf.len();
        if let Ok(Some(resp)) = parse_response(&mut buf, head_request) {
            assert!(buf.len() < before, "a parsed head consumes bytes");
            assert!((100..=999).contains(&resp.status));
            let _ = resp.reason();
            let n = resp.headers().count();
            assert!(n <= 128);
            if head_request || matches!(resp.status, 100..=199 | 204 | 304) {
                assert_eq!(resp.body, Some(Framing::None), "a body where none can be");
            }
            if resp.transfer_encoded {
                assert!(!resp.has_length, "a length trusted next to Transfer-Encoding");
            }
            if resp.body.is_none() {
                assert!(!resp.keep_alive, "a close-delimited body on a kept connection");
            }
        }
    }
    let mut buf = BytesMut::from(data);
    // kennel adds up to three lines (Host, Proxy-Authorization, the framing): a head at the
    // parser's own line limit may come out above it, which says nothing about its framing.
    if let Ok(Some(head)) = try_parse(&mut buf, 64 * 1024)
        && head.headers().len() + 3 <= MAX_HEADERS
    {
        let out = request_head(&head, "/p", "origin.test", &[("Proxy-Authorization", b"Basic eA==")]);
        let mut again = BytesMut::from(&out[..]);
        let sent = try_parse(&mut again, 1 << 20)
            .expect("the head kennel sends parses strictly")
            .expect("the head kennel sends is complete");
        assert!(again.is_empty(), "one head, nothing after it");
        assert_eq!(sent.method(), head.method());
        assert_eq!(sent.framing, head.framing, "framing changed on the way");
        assert_eq!(sent.header_count("host"), 1);
    }
});
