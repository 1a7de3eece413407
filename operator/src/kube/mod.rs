//! Kubernetes I/O the controllers share: the server-side-apply applier and pruning
//! ([`apply`]), status conditions and component readiness ([`conditions`]), and Events
//! ([`events`]).

pub mod apply;
pub mod conditions;
pub mod events;
