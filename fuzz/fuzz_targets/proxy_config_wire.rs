//! Protobuf-encoded proxy configs as the control plane pushes them — whole configs and deltas:
//! decoding, conversion to the domain model and compiling never panic; bad input is an error
//! with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skein_api::proxy::{ConfigDelta, ProxyConfig, wire::pb};

fuzz_target!(|data: &[u8]| {
    // The same bytes as a delta, applied to an empty config.
    if let Ok(delta) = pb::ConfigDelta::decode(data) {
        match ConfigDelta::try_from(delta) {
            Err(e) => assert!(!e.path.is_empty() || !e.reason.is_empty()),
            Ok(d) => {
                let _ = d.apply_to(&ProxyConfig::default()).validate();
            }
        }
    }
    let Ok(msg) = pb::ProxyConfig::decode(data) else { return };
    match ProxyConfig::try_from(msg) {
        Err(e) => assert!(!e.path.is_empty() || !e.reason.is_empty()),
        Ok(cfg) => {
            // Identity and gateway certificates are read from disk; keep the fuzzer off it.
            if cfg.identity.is_none() && cfg.listeners.iter().all(|l| l.server_tls.is_none()) {
                let _ = skein_proxy::runtime::Runtime::compile(cfg);
            }
        }
    }
});
