//! Applying desired objects: server-side apply under one field manager, and only when the live
//! object differs, so a converged installation causes no writes at all.

use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::ApiResource,
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::drift::{self, DriftGuard, Verdict};
use crate::render::{Desired, FIELD_MANAGER};

/// A failed apiserver call, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action} {what}: {source}")]
pub struct ApplyError {
    /// Verb (`apply`, `get`, `delete`, `list`).
    pub action: &'static str,
    /// `Kind/name`.
    pub what: String,
    /// The apiserver's answer.
    #[source]
    pub source: kube::Error,
}

impl ApplyError {
    /// Wraps a failed call `action` on `what` (`Kind/name`), for `map_err`.
    pub fn during(action: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApplyError {
        let what = what.into();
        move |source| ApplyError { action, what, source }
    }
}

/// Changes a desired body from the live object before it is compared and applied.
type Adjust<'a> = dyn Fn(&mut Value, &Value) + Sync + 'a;

/// Writes desired objects into the cluster.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    /// Throttles repeated repairs of objects another writer keeps changing.
    guard: Option<Arc<DriftGuard>>,
}

/// What `ensure` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The live object already matched; nothing was sent.
    Unchanged,
    /// The object was created or patched.
    Applied,
    /// The object was repaired, but another writer keeps changing it: further repairs wait
    /// `next` (announce it once).
    AppliedBackingOff {
        /// Delay before the next repair.
        next: Duration,
        /// The other writer's field manager, when known.
        writer: Option<String>,
    },
    /// Another writer changed it again within the back-off: left as is for `retry_in`.
    Held {
        /// Time until a repair is allowed.
        retry_in: Duration,
    },
}

impl Outcome {
    /// Whether a write was sent.
    pub fn wrote(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::AppliedBackingOff { .. })
    }
}

impl Applier {
    /// An applier using `client`.
    pub fn new(client: Client) -> Self {
        Self { client, guard: None }
    }

    /// An applier whose repairs of drifted objects go through `guard` (see [`DriftGuard`]).
    pub fn guarded(client: Client, guard: Arc<DriftGuard>) -> Self {
        Self { client, guard: Some(guard) }
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Makes `desired` hold in the cluster, writing only when the live object differs.
    pub async fn ensure(&self, desired: &Desired, namespace: &str) -> Result<Outcome, ApplyError> {
        self.ensure_adjusted(desired, namespace, None).await
    }

    /// [`Applier::ensure`], with `adjust(desired body, live object)` run on the object just
    /// read, before comparing and applying: for what depends on the live state (a CRD's stored
    /// versions), so a change between two reads cannot make the apply invalid.
    pub async fn ensure_with(
        &self,
        desired: &Desired,
        namespace: &str,
        adjust: impl Fn(&mut Value, &Value) + Sync,
    ) -> Result<Outcome, ApplyError> {
        self.ensure_adjusted(desired, namespace, Some(&adjust)).await
    }

    async fn ensure_adjusted(
        &self,
        desired: &Desired,
        namespace: &str,
        adjust: Option<&Adjust<'_>>,
    ) -> Result<Outcome, ApplyError> {
        let api = self.api(&desired.resource, desired.namespaced.then_some(namespace));
        let err = |action, source| ApplyError { action, what: desired.describe(), source };
        let live = api.get_opt(&desired.name).await.map_err(|e| err("get", e))?;
        let live = live.map(|l| serde_json::to_value(&l).unwrap_or(Value::Null));
        // A copy only when something adjusts it: most objects are compared as rendered.
        let desired: std::borrow::Cow<'_, Desired> = match (adjust, &live) {
            (Some(adjust), Some(live)) => {
                let mut owned = desired.clone();
                adjust(&mut owned.body, live);
                std::borrow::Cow::Owned(owned)
            }
            _ => std::borrow::Cow::Borrowed(desired),
        };
        let desired = desired.as_ref();
        let key = format!("{namespace}/{}", desired.describe());
        // Fingerprints feed the drift guard only.
        let fingerprint = if self.guard.is_some() { drift::fingerprint(&desired.body) } else { 0 };
        let mut outcome = Outcome::Applied;
        if let Some(live) = live {
            if is_subset(&desired.body, &live) {
                if let Some(g) = &self.guard {
                    g.applied(&key, fingerprint);
                }
                return Ok(Outcome::Unchanged);
            }
            if let Some(g) = &self.guard {
                match g.judge(&key, fingerprint, Instant::now()) {
                    Verdict::Apply => {}
                    Verdict::Hold { retry_in } => return Ok(Outcome::Held { retry_in }),
                    Verdict::ApplyAndBackOff { next } => {
                        outcome = Outcome::AppliedBackingOff { next, writer: drift::other_writer(&live, FIELD_MANAGER) }
                    }
                }
            }
            // A binding's roleRef is immutable: one pointing at another role (an older
            // operator bound per-installation ClusterRoles) is replaced, not patched.
            let role_ref = &desired.body["roleRef"];
            if !role_ref.is_null() && live["roleRef"] != *role_ref {
                match api.delete(&desired.name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(err("delete", e)),
                }
            }
        }
        // Strict validation: a field the apiserver does not know is a rendering bug, not
        // something to drop silently.
        let params = PatchParams::apply(FIELD_MANAGER).force().validation_strict();
        api.patch(&desired.name, &params, &Patch::Apply(&desired.body)).await.map_err(|e| err("apply", e))?;
        if let (Some(g), Outcome::Applied) = (&self.guard, &outcome) {
            g.applied(&key, fingerprint);
        }
        Ok(outcome)
    }

    /// Applies `desired` without reading it first: for callers that already compared it with
    /// a watched copy (one round trip per object instead of two).
    pub async fn apply(&self, desired: &Desired, namespace: &str) -> Result<Outcome, ApplyError> {
        let api = self.api(&desired.resource, desired.namespaced.then_some(namespace));
        let params = PatchParams::apply(FIELD_MANAGER).force().validation_strict();
        api.patch(&desired.name, &params, &Patch::Apply(&desired.body)).await.map_err(|e| ApplyError {
            action: "apply",
            what: desired.describe(),
            source: e,
        })?;
        Ok(Outcome::Applied)
    }

    /// Deletes objects of `resource` labelled `selector` whose names are not in `keep`.
    /// Returns the names deleted.
    pub async fn prune(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
        keep: &[&str],
    ) -> Result<Vec<String>, ApplyError> {
        let api = self.api(resource, Some(namespace));
        let err = |action, what: String, source| ApplyError { action, what, source };
        let list = api
            .list_metadata(&ListParams::default().labels(selector))
            .await
            .map_err(|e| err("list", resource.kind.clone(), e))?;
        let mut deleted = Vec::new();
        for obj in list.items {
            let Some(name) = obj.metadata.name else {
                continue;
            };
            if keep.contains(&name.as_str()) {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(name),
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(err("delete", format!("{}/{name}", resource.kind), e)),
            }
        }
        Ok(deleted)
    }
}

/// Whether every field of `desired` is present with the same value in `live`.
///
/// The apiserver adds defaults and status to what was applied, so equality is too strict; a
/// field the operator sets but the live object lacks or holds differently means drift.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            d.iter().all(|(k, dv)| l.get(k).is_some_and(|lv| is_subset(dv, lv)) || (is_empty(dv) && l.get(k).is_none()))
        }
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv)),
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

/// Empty maps and lists are dropped by the apiserver, so their absence is not drift.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_object_with_defaults_added_is_not_drift() {
        let desired = json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}});
        let live = json!({"spec": {"replicas": 1, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}, "status": {}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn changed_missing_or_extra_list_items_are_drift() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}})));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2}})));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2, "ports": [{"port": 80}, {"port": 81}]}})));
    }

    #[test]
    fn empty_collections_the_apiserver_drops_are_not_drift() {
        assert!(is_subset(&json!({"a": {}, "b": [], "c": 1}), &json!({"c": 1})));
        assert!(is_subset(&json!({"n": 1}), &json!({"n": 1.0})));
    }
}
