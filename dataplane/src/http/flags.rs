//! Envoy's response flags: the short codes in access logs and in the `response_flags` label of
//! Istio's metrics that say why the proxy answered as it did.

use std::fmt;

/// Why the proxy answered (or refused) as it did; `-` when the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// `-`: nothing to report.
    None,
    /// `NR`: no route (or, for TCP, no cluster) for the request.
    NoRoute,
    /// `RBAC`: refused by an authorization policy.
    Rbac,
    /// `UT`: the upstream request timed out.
    UpstreamTimeout,
    /// `FI`: aborted by fault injection.
    FaultInjected,
    /// `UH`: no healthy upstream.
    NoHealthyUpstream,
    /// `UO`: upstream overflow (circuit breaking).
    UpstreamOverflow,
    /// `UF`: the upstream connection failed.
    UpstreamConnectFailure,
    /// `UR`: the upstream reset the connection.
    UpstreamReset,
    /// `SI`: the stream idle timeout ended the request.
    StreamIdleTimeout,
}

impl ResponseFlag {
    /// The code as Envoy writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::Rbac => "RBAC",
            ResponseFlag::UpstreamTimeout => "UT",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::UpstreamConnectFailure => "UF",
            ResponseFlag::UpstreamReset => "UR",
            ResponseFlag::StreamIdleTimeout => "SI",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
