//! Proxy configuration documents: parsing and compiling never panic; a config either compiles
//! or is rejected with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = serde_yaml::from_str::<skein_api::proxy::ProxyConfig>(text) {
        // Identity and gateway certificate files are read from disk; keep the fuzzer off it.
        if cfg.identity.is_none() && cfg.listeners.iter().all(|l| l.server_tls.is_none()) {
            if let Err(e) = skein_proxy::runtime::Runtime::compile(cfg) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
