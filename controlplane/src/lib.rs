//! `skein-controlplane`: reads the Istio API and the Kubernetes service registry from the
//! apiserver, computes each proxy's configuration, pushes it over gRPC, signs workload
//! certificates and injects sidecars.
#![forbid(unsafe_code)]

pub mod accept;
pub mod analyze;
pub mod ca;
pub mod ingress;
pub mod inject;
pub mod locality;
pub mod mesh;
pub mod metrics;
pub mod registry;
pub mod render;
pub mod rootcert;
pub mod snapshot;
pub mod translate;
pub mod validate;
pub mod watch;
pub mod webhook;
pub mod xds;
