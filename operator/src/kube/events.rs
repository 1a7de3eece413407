//! Kubernetes Events about what the operator does and refuses, so `kubectl describe` and
//! `kubectl events` show it next to the object. Only changes are recorded: a converged
//! installation records nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::debug;

/// Records Events as `skein-operator`.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// A recorder using `client`.
    pub fn new(client: Client) -> Self {
        let reporter =
            Reporter { controller: crate::render::FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client, reporter) }
    }

    /// A Normal event: something was done.
    pub async fn normal(&self, about: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(about, EventType::Normal, reason, action, note).await;
    }

    /// A Warning event: something was refused or failed.
    pub async fn warning(&self, about: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(about, EventType::Warning, reason, action, note).await;
    }

    async fn publish(&self, about: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        // An Event is information, not state: failing to record one never fails a reconcile.
        if let Err(e) = self.recorder.publish(&ev, about).await {
            debug!(error = %e, reason, "event not recorded");
        }
    }
}
