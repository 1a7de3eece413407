//! AdmissionReviews as the apiserver (or anyone reaching the webhook port) sends them: the
//! injection webhook answers or refuses with a reason, never panics, and every answer it
//! gives carries the request's uid and a patch that is a JSON array of operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_controlplane::{inject::Template, webhook::review};

fuzz_target!(|data: &[u8]| {
    let t = Template { proxy_image: "p".into(), discovery_address: "cp:15012".into(), revision: "default".into() };
    match review(data, &t) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok((resp, injected)) => {
            assert_eq!(resp["kind"], "AdmissionReview");
            assert!(resp["response"]["uid"].is_string());
            assert_eq!(injected, resp["response"]["patch"].is_string());
        }
    }
});
