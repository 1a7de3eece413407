//! Shared helpers of the proxy's integration tests.
#![allow(dead_code)]

pub mod ca;
pub mod process;

/// A loopback port that was free a moment ago (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
