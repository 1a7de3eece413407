//! Upgrades, pure: the release catalog and how a spec's version or channel resolves in it
//! ([`catalog`]), which revisions run and where the tags point ([`plan`]), which workloads move
//! next ([`migrate`]) and which targets the version skew guard refuses ([`skew`]).

pub mod catalog;
pub mod migrate;
pub mod plan;
pub mod skew;
