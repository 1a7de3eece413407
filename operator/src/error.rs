//! The operator's errors, and the one place that decides what each means for a reconcile:
//! a spec the operator cannot act on becomes a status condition and waits for the user; an
//! apiserver or CA failure is transient and retried with back-off.

use std::time::Duration;

use kube::runtime::finalizer;
use skein_api::conditions::Reason;
use skein_support::pki::PkiError;

use crate::kube::apply::ApplyError;

/// A spec the operator cannot act on: reported as `Reconciled=False` with `reason`, and
/// nothing installed is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct SpecError {
    /// Condition reason.
    pub reason: Reason,
    /// What is wrong, naming the field.
    pub message: String,
}

impl SpecError {
    /// When to look again without an event. Only a spec change fixes most refusals, and the
    /// watch brings it; a root CA Secret the user is still to create (or fix) is not watched
    /// (the operator watches only its own objects), so that one is looked at again soon.
    pub fn recheck(&self) -> Option<Duration> {
        match self.reason {
            // Neither is watched: the user's Secret and namespaces are not the operator's.
            Reason::InvalidRootCa | Reason::NamespaceNotFound => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// Reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be acted on (not retried: it becomes a condition).
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// An apiserver call failed.
    #[error(transparent)]
    Kube(#[from] ApplyError),
    /// CA generation or certificate issuance failed.
    #[error("CA: {0}")]
    Pki(#[from] PkiError),
    /// The finalizer machinery failed (wraps the above).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// A watch cache a reconcile reads was stopped (the controller's term is ending).
    #[error("the cache of {0} stopped")]
    CacheStopped(&'static str),
}

impl Error {
    /// The `error` label of `skein_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube(_) => "kube",
            Error::Pki(_) => "pki",
            Error::CacheStopped(_) => "cache",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }
}

/// Back-off of a transient failure: 1 s doubling per consecutive failure, at most 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs(1 << exp).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }

    #[test]
    fn only_a_missing_root_ca_secret_is_looked_at_again_without_an_event() {
        let e = |reason| SpecError { reason, message: String::new() };
        assert_eq!(e(Reason::InvalidVersion).recheck(), None);
        assert!(e(Reason::InvalidRootCa).recheck().is_some());
        let wrapped =
            Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(Error::InvalidSpec(e(Reason::InvalidVersion)))));
        assert_eq!(wrapped.metric_label(), "invalid_spec");
    }
}
