//! Shared helpers of the proxy's integration tests.
#![allow(dead_code)]

pub mod ca;
