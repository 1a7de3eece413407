//! Upgrades, pure: the release catalog and how a spec's version or channel resolves in it
//! ([`catalog`]), which revisions run and where the tags point ([`plan`]), which workloads move
//! next ([`migrate`]), which targets the version skew guard refuses ([`skew`]) and when an
//! automatic upgrade may start ([`window`]).

pub mod catalog;
pub mod migrate;
pub mod plan;
pub mod skew;
pub mod window;
