//! Fuzz the CONNECT tunnel's first-flight inspection on arbitrary bytes: the ClientHello
//! inspection (SNI and ECH detection) and the plain-HTTP detection of `tunnel_http`. Never a
//! panic; a hello whose extensions include ECH is never classified as a plain TLS hello without
//! the ECH flag; bytes taken for an HTTP request line are never TLS; a complete request head
//! the parser accepts is always recognised as HTTP, and checking it against a tunnel target
//! never panics.
#![no_main]

use bytes::BytesMut;
use kennel_policy::Target;
use kennel_proxy::sni::{ECH_EXTENSIONS, Peek, classify, hello_extension_types};
use kennel_proxy::tunnel_http::{check_request, looks_like_http};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peek = classify(data);
    if let Some(types) = hello_extension_types(data) {
        let has_ech = types.iter().any(|t| ECH_EXTENSIONS.contains(t));
        if let Some(Peek::Tls { ech, .. }) = peek {
            assert_eq!(ech, has_ech, "ECH flag disagrees with the extension list");
        }
    }
    let http = looks_like_http(data);
    if http == Some(true) {
        assert_eq!(peek, Some(Peek::NotTls), "an HTTP request line taken for TLS");
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = kennel_proxy::head::try_parse(&mut buf, 64 * 1024) {
        assert_eq!(http, Some(true), "a parsed request head not recognised as HTTP");
        if let Ok(t) = Target::parse_authority("www.front.test:8080") {
            let _ = check_request(&head, &t);
        }
    }
});
