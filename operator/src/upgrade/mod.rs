//! Upgrades, pure: the release catalog and how a spec's version or channel resolves in it.
//! (Revisions, channels that move and upgrade plans come with the upgrade work.)

pub mod catalog;
