//! Fuzz the CONNECT tunnel's ClientHello inspection (SNI and ECH detection) on arbitrary
//! bytes: never a panic, and a hello whose extensions include ECH is never classified as a
//! plain TLS hello without the ECH flag.
#![no_main]

use kennel_proxy::sni::{ECH_EXTENSIONS, Peek, classify, hello_extension_types};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peek = classify(data);
    if let Some(types) = hello_extension_types(data) {
        let has_ech = types.iter().any(|t| ECH_EXTENSIONS.contains(t));
        if let Some(Peek::Tls { ech, .. }) = peek {
            assert_eq!(ech, has_ech, "ECH flag disagrees with the extension list");
        }
    }
});
