//! The sidecar's DNS proxy on untrusted queries: never panics, and whatever it answers is a
//! well-formed DNS response carrying the query's id.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use skein_api::proxy::NameEntry;
use skein_proxy::dns::{Decision, NameTable, answer};

fuzz_target!(|data: &[u8]| {
    let table = NameTable::new(&[
        NameEntry { host: "reviews.default.global".into(), addresses: vec!["240.0.0.3".parse().unwrap()] },
        NameEntry { host: "dual.default.global".into(), addresses: vec!["240.0.0.4".parse().unwrap(), "fd00::4".parse().unwrap()] },
    ]);
    let search = ["default.svc.cluster.local".to_string(), "svc.cluster.local".into(), "cluster.local".into()];
    if let Decision::Reply(reply) = answer(data, &table, &search) {
        let m = Message::from_vec(&reply).expect("the reply parses");
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    }
});
