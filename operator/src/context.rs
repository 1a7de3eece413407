//! What every controller shares: the client, the release catalog, metrics, the Event
//! recorder and per-object failure counts (for back-off).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Client, runtime::reflector::Store};

use crate::{
    kube::{drift::DriftGuard, events::Events},
    telemetry::Metrics,
    upgrade::catalog::Catalog,
};

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
    /// Where installations may live.
    pub scope: Scope,
    /// Repair history of the objects the operator owns (no fights with other writers).
    pub drift: Arc<DriftGuard>,
    /// Consecutive failed reconciles per object, reset by a successful one.
    failures: Mutex<HashMap<String, u32>>,
    /// The injected pods as the running term of the mesh controller watches them (`None`:
    /// not watched, as in unit tests: they are listed).
    injected_pods: Mutex<Option<Store<Pod>>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, catalog: Catalog, metrics: Metrics, scope: Scope) -> Arc<Self> {
        let events = Events::new(client.clone());
        Arc::new(Self {
            client,
            catalog,
            metrics,
            events,
            scope,
            drift: Arc::default(),
            failures: Mutex::default(),
            injected_pods: Mutex::default(),
        })
    }

    /// The cache of injected pods of this term of the mesh controller (a new term brings a
    /// new watch, and the last one's cache goes with its writer).
    pub fn set_injected_pods(&self, store: Store<Pod>) {
        *self.injected_pods.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// The cache of injected pods, when one is watched.
    pub fn injected_pods(&self) -> Option<Store<Pod>> {
        self.injected_pods.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// The namespaces installations (`spec.namespace`) may live in. The shipped install grants the
/// operator a Role in each mesh namespace and nothing namespaced cluster-wide (no Secret
/// outside them), so it watches and writes only there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any namespace (an operator run with cluster-wide rights, e.g. as an administrator).
    Cluster,
    /// Only these (`--mesh-namespaces`).
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// From `--mesh-namespaces` (comma-separated; empty: any namespace).
    pub fn parse(list: &str) -> Self {
        let set: BTreeSet<String> =
            list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect();
        if set.is_empty() { Scope::Cluster } else { Scope::Namespaces(set) }
    }

    /// Whether an installation may live in `namespace`.
    pub fn permits(&self, namespace: &str) -> bool {
        match self {
            Scope::Cluster => true,
            Scope::Namespaces(set) => set.contains(namespace),
        }
    }

    /// The namespaces to watch one by one; `None`: watch the whole cluster.
    pub fn namespaces(&self) -> Option<&BTreeSet<String>> {
        match self {
            Scope::Cluster => None,
            Scope::Namespaces(set) => Some(set),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn mesh_namespaces_flag() {
        assert_eq!(Scope::parse(""), Scope::Cluster);
        assert_eq!(Scope::parse(" , "), Scope::Cluster);
        let s = Scope::parse("istio-system, mesh-b");
        assert!(s.permits("istio-system") && s.permits("mesh-b") && !s.permits("kube-system"));
        assert_eq!(s.namespaces().unwrap().len(), 2);
        assert!(Scope::Cluster.permits("anything") && Scope::Cluster.namespaces().is_none());
    }
}
