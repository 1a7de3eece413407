//! Applying desired objects: server-side apply under one field manager, and only when the live
//! object differs, so a converged installation causes no writes at all.

use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::ApiResource,
};
use serde_json::Value;

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

/// Writes desired objects into the cluster.
#[derive(Clone)]
pub struct Applier {
    client: Client,
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The live object already matched; nothing was sent.
    Unchanged,
    /// The object was created or patched.
    Applied,
}

impl Applier {
    /// An applier using `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Makes `desired` hold in the cluster, writing only when the live object differs.
    pub async fn ensure(&self, desired: &Desired, namespace: &str) -> Result<Outcome, ApplyError> {
        let api = self.api(&desired.resource, desired.namespaced.then_some(namespace));
        let err = |action, source| ApplyError { action, what: desired.describe(), source };
        let live = api.get_opt(&desired.name).await.map_err(|e| err("get", e))?;
        if let Some(live) = live {
            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
            if is_subset(&desired.body, &live) {
                return Ok(Outcome::Unchanged);
            }
        }
        // Strict validation: a field the apiserver does not know is a rendering bug, not
        // something to drop silently.
        let params = PatchParams::apply(FIELD_MANAGER).force().validation_strict();
        api.patch(&desired.name, &params, &Patch::Apply(&desired.body)).await.map_err(|e| err("apply", e))?;
        Ok(Outcome::Applied)
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
