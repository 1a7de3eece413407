//! ClientHello parsing on untrusted bytes: never panics, and a name it returns is printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_proxy::sni::{Peek, cluster_for_sni, peek};

fuzz_target!(|data: &[u8]| {
    if let Peek::ClientHello(Some(name)) = peek(data) {
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
        let _ = cluster_for_sni(&name);
    }
});
