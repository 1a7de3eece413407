//! Which Istio resources are in force. Every resource is validated on its own and against the
//! others (conflicting hosts, subsets that do not exist); one that fails is rejected with the
//! reasons, and its last accepted version — if it ever had one — stays in force, so a bad
//! edit never changes traffic. Pure: the watch layer feeds it and writes the verdicts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use kube::{Resource, ResourceExt};
use skein_api::istio::{
    networking::{DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService},
    security::{AuthorizationPolicy, PeerAuthentication},
};

use crate::{
    registry::resolve_host,
    snapshot::{IstioResources, age_key, binds_to_mesh, wildcard_covers},
    validate::{self, Errors},
};

/// The outcome for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Kind (`VirtualService`, ...).
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Generation judged.
    pub generation: Option<i64>,
    /// Why it was rejected; empty when accepted.
    pub errors: Errors,
    /// Generation of the earlier version still in force, when rejected.
    pub last_good: Option<i64>,
    /// The condition reason when rejected: `Invalid`, or `Unsupported` for a kind Skein
    /// cannot apply at all.
    pub reason: &'static str,
    /// What Istio's validation warns about without rejecting (a deprecated field).
    pub warnings: Vec<String>,
}

impl Verdict {
    /// Whether the resource was accepted.
    pub fn accepted(&self) -> bool {
        self.errors.is_empty()
    }

    /// Human-readable summary for status and Events.
    pub fn message(&self) -> String {
        if self.accepted() {
            let mut m = String::from("accepted");
            for w in &self.warnings {
                m.push_str(&format!("; warning: {w}"));
            }
            return m;
        }
        let mut m = self.errors.join("; ");
        match self.last_good {
            Some(g) => m.push_str(&format!("; the last accepted version (generation {g}) stays in force")),
            None => m.push_str("; not applied"),
        }
        m
    }
}

/// Why an EnvoyFilter is never applied.
pub const ENVOY_FILTER_UNSUPPORTED: &str = "EnvoyFilter patches Envoy's own configuration and skein-proxy is not Envoy: \
     nothing in it is applied. Use the Istio API resources Skein supports instead (VirtualService, DestinationRule, \
     AuthorizationPolicy, ...): header edits with a VirtualService's `headers` (request and response set, add, \
     remove); local rate limiting has no Skein equivalent yet";

/// Every EnvoyFilter is refused with reason `Unsupported`: serving its CRD keeps repositories
/// that hold one applying, and the status says it does nothing rather than nothing saying so.
pub fn envoy_filters(filters: &[Arc<EnvoyFilter>]) -> Vec<Verdict> {
    filters
        .iter()
        .map(|f| Verdict {
            kind: "EnvoyFilter",
            namespace: f.namespace().unwrap_or_default(),
            name: f.name_any(),
            generation: f.meta().generation,
            errors: vec![ENVOY_FILTER_UNSUPPORTED.to_string()],
            last_good: None,
            reason: "Unsupported",
            warnings: Vec::new(),
        })
        .collect()
}

/// The last accepted version of every resource, by kind, namespace and name.
#[derive(Default)]
pub struct LastGood {
    vs: HashMap<Key, Arc<VirtualService>>,
    dr: HashMap<Key, Arc<DestinationRule>>,
    se: HashMap<Key, Arc<ServiceEntry>>,
    gw: HashMap<Key, Arc<Gateway>>,
    pa: HashMap<Key, Arc<PeerAuthentication>>,
    ap: HashMap<Key, Arc<AuthorizationPolicy>>,
    sc: HashMap<Key, Arc<Sidecar>>,
}

type Key = (String, String);

/// The current objects of every Istio kind, as the apiserver has them (the same shape as what
/// is accepted from them).
pub type Current = IstioResources;

fn key<K: Resource>(o: &K) -> Key {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

/// Judges each object of one kind with `check`; rejected ones fall back to their last good
/// version (same uid: a deleted and re-created object starts afresh).
fn judge<K: Resource + 'static>(
    kind: &'static str,
    current: &[Arc<K>],
    last: &mut HashMap<Key, Arc<K>>,
    mut check: impl FnMut(&K) -> Errors,
    verdicts: &mut Vec<Verdict>,
) -> Vec<Arc<K>> {
    let mut in_force = Vec::with_capacity(current.len());
    let mut seen = BTreeSet::new();
    for obj in current {
        let k = key(obj.as_ref());
        seen.insert(k.clone());
        let errors = check(obj);
        let mut last_good = None;
        if errors.is_empty() {
            last.insert(k.clone(), obj.clone());
            in_force.push(obj.clone());
        } else if let Some(prev) = last.get(&k).filter(|p| p.meta().uid == obj.meta().uid) {
            last_good = prev.meta().generation;
            in_force.push(prev.clone());
        }
        verdicts.push(Verdict {
            kind,
            namespace: k.0,
            name: k.1,
            generation: obj.meta().generation,
            errors,
            last_good,
            reason: "Invalid",
            warnings: Vec::new(),
        });
    }
    last.retain(|k, _| seen.contains(k));
    in_force
}

impl LastGood {
    /// Decides what is in force. Verdicts come back for every current object.
    pub fn accept(&mut self, cur: &Current, cluster_domain: &str) -> (IstioResources, Vec<Verdict>) {
        let mut v = Vec::new();
        let destination_rules = judge(
            "DestinationRule",
            &cur.destination_rules,
            &mut self.dr,
            |o| validate::destination_rule(&o.spec),
            &mut v,
        );
        let subsets = subsets_by_host(&destination_rules, cluster_domain);
        let owners = host_owners(&cur.virtual_services, cluster_domain);
        let virtual_services = judge(
            "VirtualService",
            &cur.virtual_services,
            &mut self.vs,
            |o| {
                let mut errs = validate::virtual_service(&o.spec);
                errs.extend(cross_check_virtual_service(o, &subsets, &owners, cluster_domain));
                errs
            },
            &mut v,
        );
        let service_entries =
            judge("ServiceEntry", &cur.service_entries, &mut self.se, |o| validate::service_entry(&o.spec), &mut v);
        let gateways = judge("Gateway", &cur.gateways, &mut self.gw, |o| validate::gateway(&o.spec), &mut v);
        let peer_authentications = judge(
            "PeerAuthentication",
            &cur.peer_authentications,
            &mut self.pa,
            |o| validate::peer_authentication(&o.spec),
            &mut v,
        );
        let authorization_policies = judge(
            "AuthorizationPolicy",
            &cur.authorization_policies,
            &mut self.ap,
            |o| validate::authorization_policy(&o.spec),
            &mut v,
        );
        let default_sidecars = default_sidecars(&cur.sidecars);
        let sidecars = judge(
            "Sidecar",
            &cur.sidecars,
            &mut self.sc,
            |o| {
                let mut errs = validate::sidecar(&o.spec);
                let ns = o.namespace().unwrap_or_default();
                if let Some(first) = default_sidecars.get(&ns).filter(|first| **first != o.name_any())
                    && !has_selector(o)
                {
                    errs.push(format!(
                        "spec.workloadSelector: Sidecar {ns}/{first} is the namespace's Sidecar without a workloadSelector already (one per namespace, as in Istio)"
                    ));
                }
                errs
            },
            &mut v,
        );
        for dr in &cur.destination_rules {
            let warnings = validate::destination_rule_warnings(&dr.spec);
            let (ns, name) = (dr.namespace().unwrap_or_default(), dr.name_any());
            if let Some(verdict) =
                v.iter_mut().find(|x| x.kind == "DestinationRule" && x.namespace == ns && x.name == name)
            {
                verdict.warnings = warnings;
            }
        }
        let istio = IstioResources {
            virtual_services,
            destination_rules,
            service_entries,
            gateways,
            peer_authentications,
            authorization_policies,
            sidecars,
        };
        (istio, v)
    }
}

fn has_selector(sc: &Sidecar) -> bool {
    sc.spec.workload_selector.as_ref().is_some_and(|s| !s.labels.is_empty())
}

/// The oldest Sidecar without a workload selector of each namespace: the one in force there.
fn default_sidecars(all: &[Arc<Sidecar>]) -> HashMap<String, String> {
    let mut sorted: Vec<&Arc<Sidecar>> = all.iter().filter(|s| !has_selector(s)).collect();
    sorted.sort_by_key(|s| age_key(s.as_ref()));
    let mut out = HashMap::new();
    for s in sorted {
        out.entry(s.namespace().unwrap_or_default()).or_insert_with(|| s.name_any());
    }
    out
}

/// Subset names defined for each host by the accepted DestinationRules, per namespace.
fn subsets_by_host(drs: &[Arc<DestinationRule>], domain: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for dr in drs {
        let host = resolve_host(&dr.spec.host, &dr.namespace().unwrap_or_default(), domain);
        out.entry(host).or_default().extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
    }
    out
}

/// For each (namespace, host) bound to sidecars, the oldest VirtualService claiming it.
fn host_owners(vss: &[Arc<VirtualService>], domain: &str) -> BTreeMap<(String, String), (String, String)> {
    let mut sorted: Vec<&Arc<VirtualService>> = vss.iter().filter(|v| binds_to_mesh(v)).collect();
    sorted.sort_by_key(|v| age_key(v.as_ref()));
    let mut owners = BTreeMap::new();
    for vs in sorted {
        let ns = vs.namespace().unwrap_or_default();
        for h in &vs.spec.hosts {
            owners.entry((ns.clone(), resolve_host(h, &ns, domain))).or_insert_with(|| (ns.clone(), vs.name_any()));
        }
    }
    owners
}

/// Errors only visible with the other resources: a host already routed by an older
/// VirtualService of the same namespace (Istio would silently use one of them), and
/// destinations naming a subset no DestinationRule defines.
fn cross_check_virtual_service(
    vs: &VirtualService,
    subsets: &HashMap<String, BTreeSet<String>>,
    owners: &BTreeMap<(String, String), (String, String)>,
    domain: &str,
) -> Errors {
    let mut errs = Errors::new();
    let ns = vs.namespace().unwrap_or_default();
    if binds_to_mesh(vs) {
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let host = resolve_host(h, &ns, domain);
            if let Some((_, owner)) = owners.get(&(ns.clone(), host.clone()))
                && *owner != vs.name_any()
            {
                errs.push(format!("spec.hosts[{i}]: host {host} is already routed by VirtualService {ns}/{owner}"));
            }
        }
    }
    for (i, rule) in vs.spec.http.iter().enumerate() {
        let dests = rule
            .route
            .iter()
            .enumerate()
            .map(|(j, d)| (format!("spec.http[{i}].route[{j}].destination"), &d.destination))
            .chain(rule.mirror.iter().map(|m| (format!("spec.http[{i}].mirror"), m)));
        for (path, d) in dests {
            let Some(subset) = &d.subset else { continue };
            let host = resolve_host(&d.host, &ns, domain);
            // The host's own DestinationRule, or one whose wildcard host covers it.
            let defines = |h: &str| subsets.get(h).is_some_and(|s| s.contains(subset));
            let covered = subsets.keys().any(|k| wildcard_covers(k, &host) && defines(k));
            if !defines(&host) && !covered {
                errs.push(format!("{path}.subset: no DestinationRule for {host} defines subset {subset:?}"));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests;
