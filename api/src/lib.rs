//! Skein's Kubernetes API types.
//!
//! `MeshControlPlane` (group `mesh.skein.dev`) is what users apply; the operator installs,
//! upgrades and federates the mesh from it. The types here are the wire format the apiserver
//! stores: every validation the apiserver can enforce (defaults, enums, ranges, CEL) is part of
//! the generated schema, so a bad object is refused at `kubectl apply` with the field named.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod istio;
pub mod mesh;
pub mod names;

pub use mesh::*;

/// The API group of Skein's own resources.
pub const GROUP: &str = "mesh.skein.dev";
pub mod proxy;
