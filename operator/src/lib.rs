//! skein-operator: installs, upgrades and federates Skein's mesh control plane from
//! `MeshControlPlane` objects.
#![forbid(unsafe_code)]

pub mod apply;
pub mod catalog;
pub use skein_api::leader;
pub mod reconcile;
pub mod render;
pub mod status;
pub mod telemetry;
