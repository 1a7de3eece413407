//! What every controller shares: the client, the release catalog, metrics, the Event
//! recorder and per-object failure counts (for back-off).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::Client;

use crate::{kube::events::Events, telemetry::Metrics, upgrade::catalog::Catalog};

/// Shared state of the controllers.
pub struct Context {
    /// Client for the cluster the operator manages.
    pub client: Client,
    /// Release catalog compiled into this build.
    pub catalog: Catalog,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Kubernetes Events about the objects the operator manages.
    pub events: Events,
    /// Consecutive failed reconciles per object, reset by a successful one.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, catalog: Catalog, metrics: Metrics) -> Arc<Self> {
        let events = Events::new(client.clone());
        Arc::new(Self { client, catalog, metrics, events, failures: Mutex::default() })
    }

    /// Counts a failed reconcile of `key`; returns how many failed in a row.
    pub fn failed(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
