//! skein-proxy: Skein's data plane. This crate holds the request path (`http`), the compiled
//! configuration it reads (`runtime`), the one place configuration changes (`store`),
//! listeners, the inbound handshake and what a connection becomes (`listener`: `http`, `tcp`, `admin`), and Istio-named telemetry (`metrics`).
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin_client;
pub mod authz;
pub mod capture;
pub mod config_file;
pub mod connect;
pub mod discovery;
pub mod dns;
pub mod drain;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod iptables;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod runtime;
pub mod sni;
pub mod splice;
pub mod store;
pub mod upstream;

/// Parses a duration flag (`5s`, `100ms`, `24h`).
pub fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    skein_api::proxy::duration::parse(s)
}
