//! Kubernetes I/O the controllers share: the server-side-apply applier and pruning
//! ([`apply`]), status conditions and component readiness ([`conditions`]), Events
//! ([`events`]), clients for peer clusters ([`remote`]) and throttled drift repair ([`drift`]).

pub mod apply;
pub mod conditions;
pub mod drift;
pub mod events;
pub mod remote;

/// The operator's name on every request: the `User-Agent` header, from which the apiserver
/// also takes the field manager of writes that name none (finalizers, Lease renewals), so
/// `managedFields` and audit logs show `skein-operator` rather than `unknown`.
pub fn identify(config: &mut ::kube::Config) {
    const AGENT: &str = concat!("skein-operator/", env!("CARGO_PKG_VERSION"));
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(AGENT)));
}
