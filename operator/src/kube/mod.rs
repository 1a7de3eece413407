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

/// Drops `metadata.managedFields` from a watched copy before a reflector stores it. No store
/// reads them (the applier reads another writer from the object an apply returns), and for
/// server-side-applied objects they are about as large as the object: with the tens of
/// thousands of objects federation watches, they were most of the operator's memory.
pub fn strip_managed_fields<K: ::kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}
