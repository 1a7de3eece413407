//! The `.global` objects a cluster needs for what its peers export: per host one ServiceEntry
//! (virtual IP, one endpoint per exporting peer: its east-west gateway on 15443); one
//! DestinationRule for `*.<suffix>` (`ISTIO_MUTUAL`, outlier detection) and, for a host whose
//! peers define subsets, one of its own with the subsets mirrored.
//!
//! Subsets: the client's sidecar puts the subset into the SNI (`outbound_.9080_.v2_.reviews.
//! default.global`) and the exporting cluster's gateway resolves it with that cluster's own
//! DestinationRule. Here a mirrored subset only has to pick the peers that define it, so each
//! endpoint carries `subsets.mesh.skein.dev/<subset>: "true"` for the subsets of its cluster and
//! the mirrored subset selects on that label.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use serde_json::{Value, json};

use super::{
    CLUSTER_LABEL, EAST_WEST_PORT, GENERATED_LABEL, NETWORK_LABEL, SOURCE_CLUSTERS_ANNOTATION, SUBSET_LABEL_PREFIX,
    export::{ExportedService, Port},
};

/// What the operator knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Cluster name.
    pub cluster: String,
    /// Network of its gateway, when labelled.
    pub network: Option<String>,
    /// Locality of its gateway (`region/zone/subzone`), when labelled.
    pub locality: Option<String>,
    /// Addresses (IPs or DNS names) of its east-west gateway.
    pub gateways: Vec<String>,
    /// Those of `gateways` whose health lease ran out: their endpoints are withdrawn (the
    /// peer's hosts stay, with the other gateways' endpoints or none).
    pub withdrawn: BTreeSet<String>,
    /// Services it exports.
    pub services: Vec<Arc<ExportedService>>,
}

/// One endpoint of a `.global` host: a peer's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Peer cluster.
    pub cluster: String,
    /// Its network.
    pub network: Option<String>,
    /// Its locality: clients fail over between peers nearest first.
    pub locality: Option<String>,
    /// Gateway address.
    pub address: String,
    /// Subsets that peer defines for the service.
    pub subsets: Vec<String>,
}

/// A `.global` host and everything its objects hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalHost {
    /// `<name>.<namespace>.<suffix>`.
    pub host: String,
    /// Ports: the union over the exporting peers (the first peer by name wins a conflict).
    pub ports: Vec<Port>,
    /// Endpoints, by cluster name then address.
    pub endpoints: Vec<Endpoint>,
    /// Union of the peers' subsets.
    pub subsets: BTreeSet<String>,
    /// The exporting clusters (also those whose gateways are withdrawn).
    pub sources: BTreeSet<String>,
}

impl GlobalHost {
    /// Names of the exporting clusters.
    pub fn clusters(&self) -> BTreeSet<&str> {
        self.sources.iter().map(String::as_str).collect()
    }

    /// Whether the host needs a DestinationRule of its own (its peers define subsets); every
    /// other host is covered by [`suffix_destination_rule`].
    pub fn has_own_rule(&self) -> bool {
        !self.subsets.is_empty()
    }
}

/// The `.global` hosts of `peers`. A peer without any gateway address adds nothing (it cannot
/// be reached at all); a peer whose gateways are all withdrawn keeps its hosts, without its
/// endpoints, so the name and its virtual IP stay and a local twin still serves it.
pub fn plan<P: std::borrow::Borrow<Peer>>(peers: &[P], suffix: &str) -> BTreeMap<String, GlobalHost> {
    let mut peers: Vec<&Peer> = peers.iter().map(std::borrow::Borrow::borrow).collect();
    peers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let mut hosts: BTreeMap<String, GlobalHost> = BTreeMap::new();
    for peer in peers {
        let mut gateways = peer.gateways.clone();
        gateways.sort();
        gateways.dedup();
        if gateways.is_empty() {
            continue;
        }
        gateways.retain(|g| !peer.withdrawn.contains(g));
        for svc in &peer.services {
            let host = format!("{}.{}.{suffix}", svc.name, svc.namespace);
            let entry = hosts.entry(host.clone()).or_insert_with(|| GlobalHost {
                host,
                ports: Vec::new(),
                endpoints: Vec::new(),
                subsets: BTreeSet::new(),
                sources: BTreeSet::new(),
            });
            entry.sources.insert(peer.cluster.clone());
            for port in &svc.ports {
                if !entry.ports.iter().any(|p| p.number == port.number || p.name == port.name) {
                    entry.ports.push(port.clone());
                }
            }
            entry.ports.sort();
            let subsets: Vec<String> = svc.subsets.iter().filter(|s| is_label_name(s)).cloned().collect();
            entry.subsets.extend(subsets.iter().cloned());
            entry.endpoints.extend(gateways.iter().map(|address| Endpoint {
                cluster: peer.cluster.clone(),
                network: peer.network.clone(),
                locality: peer.locality.clone(),
                address: address.clone(),
                subsets: subsets.clone(),
            }));
        }
    }
    hosts
}

/// Whether `s` can be the name part of a label key (what a mirrored subset needs).
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Where and for whom the objects are written.
#[derive(Debug, Clone)]
pub struct Target {
    /// Namespace of the generated objects (the mesh's root namespace: visible mesh-wide).
    pub namespace: String,
    /// The local MeshControlPlane's name (label value).
    pub mesh: String,
    /// Its ownerReference (the objects go when the mesh does).
    pub owner: Value,
}

/// Metadata of a generated object `name`: labelled as generated for the mesh, owned by it.
fn owned_metadata(name: &str, target: &Target) -> Value {
    json!({
        "name": name,
        "namespace": target.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": crate::render::MANAGED_BY,
            "app.kubernetes.io/part-of": "skein",
            GENERATED_LABEL: target.mesh,
        },
        "ownerReferences": [target.owner],
    })
}

/// Metadata of `host`'s objects, with their provenance (the exporting clusters).
fn metadata(host: &GlobalHost, target: &Target) -> Value {
    let clusters: Vec<&str> = host.clusters().into_iter().collect();
    let mut m = owned_metadata(&host.host, target);
    m["annotations"] = json!({SOURCE_CLUSTERS_ANNOTATION: clusters.join(",")});
    m
}

/// The ServiceEntry of `host` with virtual IP `vip`.
pub fn service_entry(host: &GlobalHost, vip: Ipv4Addr, target: &Target) -> Value {
    let all_ips = host.endpoints.iter().all(|e| e.address.parse::<std::net::IpAddr>().is_ok());
    let endpoints: Vec<Value> = host
        .endpoints
        .iter()
        .map(|e| {
            let mut labels = BTreeMap::from([(CLUSTER_LABEL.to_string(), e.cluster.clone())]);
            if let Some(n) = &e.network {
                labels.insert(NETWORK_LABEL.to_string(), n.clone());
            }
            for s in &e.subsets {
                labels.insert(format!("{SUBSET_LABEL_PREFIX}{s}"), "true".to_string());
            }
            let ports: BTreeMap<&str, u16> = host.ports.iter().map(|p| (p.name.as_str(), EAST_WEST_PORT)).collect();
            let mut ep = json!({"address": e.address, "ports": ports, "labels": labels});
            if let Some(n) = &e.network {
                ep["network"] = json!(n);
            }
            if let Some(l) = &e.locality {
                ep["locality"] = json!(l);
            }
            ep
        })
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": metadata(host, target),
        "spec": {
            "hosts": [host.host],
            "addresses": [vip.to_string()],
            "location": "MESH_INTERNAL",
            "resolution": if all_ips { "STATIC" } else { "DNS" },
            "ports": host.ports.iter().map(|p| json!({"number": p.number, "name": p.name, "protocol": p.protocol})).collect::<Vec<_>>(),
            "endpoints": endpoints,
        },
    })
}

/// What every generated DestinationRule applies to the peers' gateways. Outlier detection is
/// what moves traffic off a failing endpoint that is still listed (a local pod that stopped
/// answering, a peer gateway dropping connections): without it, failover to the next priority
/// never happens (admiral#134, #205). Gateway errors only (an application's own 500s say
/// nothing about reachability), every endpoint may go.
fn traffic_policy() -> Value {
    json!({
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {
            "consecutiveGatewayErrors": 5,
            "interval": "5s",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": 100,
        },
    })
}

/// The DestinationRule of `host` when it needs one of its own: the peers' subsets mirrored
/// (with the suffix rule's traffic policy, since the most specific rule is used alone). A host
/// without subsets has none: [`suffix_destination_rule`] covers it, so a cold start writes one
/// object per imported Service, not two.
pub fn destination_rule(host: &GlobalHost, target: &Target) -> Option<Value> {
    if !host.has_own_rule() {
        return None;
    }
    let subsets: Vec<Value> = host
        .subsets
        .iter()
        .map(|s| json!({"name": s, "labels": {format!("{SUBSET_LABEL_PREFIX}{s}"): "true"}}))
        .collect();
    Some(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(host, target),
        "spec": {"host": host.host, "trafficPolicy": traffic_policy(), "subsets": subsets},
    }))
}

/// Name of the DestinationRule for every `.<suffix>` host (no dots: never a host's name).
pub fn suffix_destination_rule_name(suffix: &str) -> String {
    format!("skein-federation-{}", suffix.replace('.', "-"))
}

/// The DestinationRule for `*.<suffix>`: mesh mTLS and outlier detection for every imported
/// host without a rule of its own (what Istio's replicated-control-planes install wrote by hand
/// as `istio-multicluster-destinationrule` for `*.global`).
pub fn suffix_destination_rule(suffix: &str, target: &Target) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": owned_metadata(&suffix_destination_rule_name(suffix), target),
        "spec": {"host": format!("*.{suffix}"), "trafficPolicy": traffic_policy()},
    })
}

/// Name of the Gateway that opens the east-west gateway's 15443 to what this cluster exports
/// (the first of them, when the hosts are split over several).
pub const EAST_WEST_GATEWAY: &str = "skein-eastwestgateway";

/// Exported hosts per east-west Gateway object, on average, by default: 4096 hosts make about 250 KB, far
/// from the apiserver's 1.5 MiB limit on one object even in a shard the hash filled twice as
/// much as the others.
pub const EAST_WEST_SHARD_HOSTS: usize = 4096;

/// Name of east-west Gateway shard `i`: the first keeps the unsharded name.
pub fn east_west_gateway_name(i: usize) -> String {
    if i == 0 { EAST_WEST_GATEWAY.to_string() } else { format!("{EAST_WEST_GATEWAY}-{i}") }
}

/// Whether `name` is one of the east-west Gateway's shards.
pub fn is_east_west_gateway_name(name: &str) -> bool {
    name == EAST_WEST_GATEWAY
        || name
            .strip_prefix(EAST_WEST_GATEWAY)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i > 0))
}

/// The Gateways making the east-west gateway serve AUTO_PASSTHROUGH on 15443 for `exports`
/// (this cluster's exported Services) and nothing else, by name; none when nothing is
/// exported (a Gateway without hosts is invalid, and there is nothing to serve). The control
/// plane merges the servers of every Gateway on one port, as Istio does, so the hosts can be
/// split over several objects (about `per_shard` hosts each): by a hash of the host over a power-of-two number of shards, so
/// that a host stays in its shard as others come and go, and doubling the shards moves each
/// host either nowhere or to one new shard.
pub fn east_west_gateways(exports: &[Arc<ExportedService>], target: &Target, per_shard: usize) -> Vec<(String, Value)> {
    let shards = exports.len().div_ceil(per_shard.max(1)).max(1).next_power_of_two();
    let mut hosts: Vec<Vec<String>> = vec![Vec::new(); shards];
    for s in exports {
        let host = format!("{}.{}.svc.cluster.local", s.name, s.namespace);
        let shard = (super::credentials::fingerprint(host.as_bytes()) % shards as u64) as usize;
        hosts[shard].push(format!("{}/{host}", s.namespace));
    }
    hosts
        .into_iter()
        .enumerate()
        .filter(|(_, hosts)| !hosts.is_empty())
        .map(|(i, hosts)| {
            let name = east_west_gateway_name(i);
            let body = json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "Gateway",
                "metadata": owned_metadata(&name, target),
                "spec": {
                    "selector": {"istio": "eastwestgateway"},
                    "servers": [{
                        "port": {"number": EAST_WEST_PORT, "name": "tls-east-west", "protocol": "TLS"},
                        "tls": {"mode": "AUTO_PASSTHROUGH"},
                        "hosts": hosts,
                    }],
                },
            });
            (name, body)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_east_west_gateway_serves_exactly_the_exported_services() {
        assert!(east_west_gateways(&[], &target(), EAST_WEST_SHARD_HOSTS).is_empty());
        let gws = east_west_gateways(&[svc("reviews", &["v2"]), svc("ratings", &[])], &target(), EAST_WEST_SHARD_HOSTS);
        assert_eq!(gws.len(), 1);
        let (name, gw) = &gws[0];
        assert_eq!(name, EAST_WEST_GATEWAY);
        assert_eq!(gw["metadata"]["name"], EAST_WEST_GATEWAY);
        assert_eq!(gw["spec"]["selector"], json!({"istio": "eastwestgateway"}));
        let server = &gw["spec"]["servers"][0];
        assert_eq!(server["port"], json!({"number": 15443, "name": "tls-east-west", "protocol": "TLS"}));
        assert_eq!(server["tls"]["mode"], "AUTO_PASSTHROUGH");
        assert_eq!(
            server["hosts"],
            json!(["default/reviews.default.svc.cluster.local", "default/ratings.default.svc.cluster.local"])
        );
    }

    #[test]
    fn many_exported_hosts_are_split_over_stable_gateway_shards() {
        let hosts = |gws: &[(String, Value)]| -> BTreeMap<String, String> {
            gws.iter()
                .flat_map(|(name, gw)| {
                    assert_eq!(gw["metadata"]["name"], json!(name));
                    gw["spec"]["servers"][0]["hosts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| (h.as_str().unwrap().to_string(), name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let n = 3 * EAST_WEST_SHARD_HOSTS;
        let mut exports: Vec<Arc<ExportedService>> = (0..n).map(|i| svc(&format!("s{i}"), &[])).collect();
        let gws = east_west_gateways(&exports, &target(), EAST_WEST_SHARD_HOSTS);
        // 3 × 4096 hosts: four shards, each far below the object size limit, every host once.
        let names: Vec<&str> = gws.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [EAST_WEST_GATEWAY, "skein-eastwestgateway-1", "skein-eastwestgateway-2", "skein-eastwestgateway-3"]
        );
        for (name, gw) in &gws {
            let bytes = serde_json::to_vec(gw).unwrap().len();
            assert!(bytes < 512 * 1024, "{name}: {bytes} bytes");
        }
        let before = hosts(&gws);
        assert_eq!(before.len(), n);
        // One more host: no other host changes shard.
        exports.push(svc("extra", &[]));
        let after = hosts(&east_west_gateways(&exports, &target(), EAST_WEST_SHARD_HOSTS));
        assert_eq!(after.len(), n + 1);
        assert!(before.iter().all(|(h, shard)| after.get(h) == Some(shard)));
        // Doubling the shards: a host stays or moves to its shard + 4, never elsewhere.
        exports.extend((n..2 * n).map(|i| svc(&format!("s{i}"), &[])));
        let doubled = hosts(&east_west_gateways(&exports, &target(), EAST_WEST_SHARD_HOSTS));
        for (h, shard) in &before {
            let i = |name: &str| name.strip_prefix("skein-eastwestgateway-").map_or(0, |i| i.parse::<usize>().unwrap());
            let (was, now) = (i(shard), i(&doubled[h]));
            assert!(now == was || now == was + 4, "{h}: shard {was} -> {now}");
        }
        assert!(is_east_west_gateway_name(EAST_WEST_GATEWAY) && is_east_west_gateway_name("skein-eastwestgateway-7"));
        assert!(
            !is_east_west_gateway_name("skein-eastwestgateway-0")
                && !is_east_west_gateway_name("skein-eastwestgateway-x")
        );
    }

    use super::*;

    fn svc(name: &str, subsets: &[&str]) -> Arc<ExportedService> {
        Arc::new(ExportedService {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![Port { number: 9080, name: "http".into(), protocol: "HTTP".into() }],
            subsets: subsets.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn peer(cluster: &str, gw: &[&str], services: Vec<Arc<ExportedService>>) -> Peer {
        Peer {
            cluster: cluster.into(),
            network: Some(format!("net-{cluster}")),
            locality: None,
            gateways: gw.iter().map(|s| s.to_string()).collect(),
            services,
            withdrawn: BTreeSet::new(),
        }
    }

    #[test]
    fn a_withdrawn_gateway_loses_its_endpoints_but_not_the_host() {
        let mut c2 = peer("cluster2", &["198.19.2.1", "198.19.2.2"], vec![svc("reviews", &["v2"])]);
        c2.withdrawn = ["198.19.2.1".to_string()].into();
        let c3 = peer("cluster3", &["198.19.3.1"], vec![svc("reviews", &["v3"])]);
        let addresses = |p: &BTreeMap<String, GlobalHost>| -> Vec<String> {
            p["reviews.default.global"].endpoints.iter().map(|e| e.address.clone()).collect()
        };
        assert_eq!(addresses(&plan(&[c2.clone(), c3.clone()], "global")), ["198.19.2.2", "198.19.3.1"]);
        // Every gateway of every exporting peer withdrawn: the host stays (name, VIP, subsets,
        // sources), with no endpoint, written as a STATIC entry without endpoints.
        c2.withdrawn.insert("198.19.2.2".into());
        let mut c3 = c3;
        c3.withdrawn = ["198.19.3.1".to_string()].into();
        let p = plan(&[c2, c3], "global");
        let reviews = &p["reviews.default.global"];
        assert!(reviews.endpoints.is_empty());
        assert_eq!(reviews.clusters().into_iter().collect::<Vec<_>>(), ["cluster2", "cluster3"]);
        let se = service_entry(reviews, Ipv4Addr::new(240, 1, 2, 3), &target());
        assert_eq!((se["spec"]["resolution"].clone(), se["spec"]["endpoints"].clone()), (json!("STATIC"), json!([])));
    }

    fn target() -> Target {
        Target { namespace: "istio-system".into(), mesh: "default".into(), owner: json!({"kind": "MeshControlPlane"}) }
    }

    #[test]
    fn one_host_per_service_with_one_endpoint_per_exporting_peer() {
        let peers = [
            peer("cluster3", &["198.19.3.1"], vec![svc("reviews", &["v3"])]),
            peer("cluster2", &["198.19.2.1"], vec![svc("reviews", &["v2", "v3"]), svc("ratings", &[])]),
            peer("cluster4", &[], vec![svc("details", &[])]),
        ];
        let plan = plan(&peers, "global");
        assert_eq!(plan.keys().collect::<Vec<_>>(), ["ratings.default.global", "reviews.default.global"]);
        let reviews = &plan["reviews.default.global"];
        assert_eq!(reviews.clusters().into_iter().collect::<Vec<_>>(), ["cluster2", "cluster3"]);
        assert_eq!(reviews.subsets.iter().collect::<Vec<_>>(), ["v2", "v3"]);
        let se = service_entry(reviews, Ipv4Addr::new(240, 1, 2, 3), &target());
        assert_eq!(se["metadata"]["name"], "reviews.default.global");
        assert_eq!(se["metadata"]["annotations"][SOURCE_CLUSTERS_ANNOTATION], "cluster2,cluster3");
        assert_eq!(se["spec"]["addresses"], json!(["240.1.2.3"]));
        assert_eq!(se["spec"]["location"], "MESH_INTERNAL");
        assert_eq!(se["spec"]["resolution"], "STATIC");
        assert_eq!(se["spec"]["ports"], json!([{"number": 9080, "name": "http", "protocol": "HTTP"}]));
        let ep = &se["spec"]["endpoints"][0];
        assert_eq!(ep["address"], "198.19.2.1");
        assert_eq!(ep["ports"], json!({"http": 15443}));
        assert_eq!(ep["network"], "net-cluster2");
        assert_eq!(ep["labels"][CLUSTER_LABEL], "cluster2");
        assert_eq!(ep["labels"]["subsets.mesh.skein.dev/v2"], "true");
        assert!(se["spec"]["endpoints"][1]["labels"].get("subsets.mesh.skein.dev/v2").is_none(), "cluster3 has no v2");
        let dr = destination_rule(reviews, &target()).expect("reviews has subsets");
        assert_eq!(dr["metadata"]["name"], "reviews.default.global");
        assert_eq!(dr["spec"]["host"], "reviews.default.global");
        assert_eq!(dr["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");
        let od = &dr["spec"]["trafficPolicy"]["outlierDetection"];
        assert_eq!((od["consecutiveGatewayErrors"].clone(), od["maxEjectionPercent"].clone()), (json!(5), json!(100)));
        assert_eq!(
            dr["spec"]["subsets"],
            json!([
                {"name": "v2", "labels": {"subsets.mesh.skein.dev/v2": "true"}},
                {"name": "v3", "labels": {"subsets.mesh.skein.dev/v3": "true"}},
            ])
        );
        // No subsets: no rule of its own; the suffix rule gives it the same traffic policy.
        assert!(destination_rule(&plan["ratings.default.global"], &target()).is_none());
        let all = suffix_destination_rule("global", &target());
        assert_eq!(all["metadata"]["name"], "skein-federation-global");
        assert_eq!(all["metadata"]["labels"][GENERATED_LABEL], "default");
        assert_eq!(all["spec"]["host"], "*.global");
        assert_eq!(all["spec"]["trafficPolicy"], dr["spec"]["trafficPolicy"]);
    }

    #[test]
    fn each_endpoint_carries_its_peers_locality_for_the_clients_failover_order() {
        let mut near = peer("near", &["10.0.0.1"], vec![svc("s", &[])]);
        near.locality = Some("us-east/us-east-1b".into());
        let far = peer("far", &["10.0.0.2"], vec![svc("s", &[])]);
        let plan = plan(&[near, far], "global");
        let se = service_entry(&plan["s.default.global"], Ipv4Addr::new(240, 0, 0, 1), &target());
        assert_eq!(se["spec"]["endpoints"][0]["address"], "10.0.0.2");
        assert!(se["spec"]["endpoints"][0].get("locality").is_none(), "unlabelled peer: no locality");
        assert_eq!(se["spec"]["endpoints"][1]["locality"], "us-east/us-east-1b");
        // The generated rule has outlier detection: the control plane orders by locality.
        let dr = suffix_destination_rule("global", &target());
        assert!(dr["spec"]["trafficPolicy"]["outlierDetection"].is_object());
    }

    #[test]
    fn a_gateway_known_by_name_resolves_by_dns_and_the_suffix_is_configurable() {
        let plan = plan(&[peer("c2", &["gw.example.com"], vec![svc("a", &[])])], "mesh");
        let se = service_entry(&plan["a.default.mesh"], Ipv4Addr::new(240, 0, 0, 1), &target());
        assert_eq!(se["spec"]["resolution"], "DNS");
        let dr = suffix_destination_rule("mesh.example", &target());
        assert_eq!(
            (dr["metadata"]["name"].clone(), dr["spec"]["host"].clone()),
            (json!("skein-federation-mesh-example"), json!("*.mesh.example"))
        );
    }

    #[test]
    fn ports_are_the_union_and_the_first_cluster_wins_a_conflict() {
        let mut a = svc("s", &[]);
        Arc::make_mut(&mut a).ports.push(Port { number: 9443, name: "tls".into(), protocol: "TLS".into() });
        let mut b = svc("s", &[]);
        Arc::make_mut(&mut b).ports[0].protocol = "TCP".into();
        let plan = plan(&[peer("b", &["10.0.0.2"], vec![b]), peer("a", &["10.0.0.1"], vec![a])], "global");
        let ports: Vec<(u16, &str)> =
            plan["s.default.global"].ports.iter().map(|p| (p.number, p.protocol.as_str())).collect();
        assert_eq!(ports, [(9080, "HTTP"), (9443, "TLS")]);
    }

    #[test]
    fn subsets_that_cannot_be_label_names_are_not_mirrored() {
        let plan = plan(&[peer("c", &["10.0.0.1"], vec![svc("s", &["v1", "-bad", &"x".repeat(64)])])], "global");
        assert_eq!(plan["s.default.global"].subsets.iter().collect::<Vec<_>>(), ["v1"]);
    }
}
