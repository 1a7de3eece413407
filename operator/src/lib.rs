//! skein-operator: installs, upgrades and federates Skein's mesh control plane from
//! `MeshControlPlane` objects.
//!
//! Layout: [`controllers`] (one kube-runtime Controller per concern) use [`render`] (pure:
//! spec → objects), [`pki`] (the mesh's certificates) and [`kube`] (shared I/O: the applier,
//! conditions, Events); [`upgrade`] is the release catalog; [`context`] and [`error`] are what
//! every controller shares.
#![forbid(unsafe_code)]

pub mod context;
pub mod controllers;
pub mod error;
pub mod federation;
#[cfg(test)]
pub mod fixtures;
pub mod kube;
pub mod olm;
pub use skein_support::leader;
pub mod pki;
pub mod render;
pub mod telemetry;
pub mod upgrade;
