//! Kubernetes I/O the controllers share: the server-side-apply applier and pruning
//! ([`apply`]), status conditions and component readiness ([`conditions`]), Events
//! ([`events`]) and clients for peer clusters ([`remote`]).

pub mod apply;
pub mod conditions;
pub mod events;
pub mod remote;
