use super::*;
use crate::upgrade::catalog::Catalog;
use serde_json::Value;
use skein_api::MeshControlPlaneSpec;

fn mcp(spec: &str) -> MeshControlPlane {
    let spec: MeshControlPlaneSpec = serde_yaml::from_str(spec).unwrap();
    let mut m = MeshControlPlane::new("mesh", spec);
    m.metadata.uid = Some("uid-1".into());
    m
}

fn rendered(spec: &str) -> Vec<Desired> {
    let catalog = Catalog::builtin().unwrap();
    let release = catalog.resolve(Some("1.0.2"), skein_api::Channel::STABLE).unwrap().clone();
    render(&mcp(spec), Facts { release: &release, root_cert_pem: "ROOT-PEM", revision: DEFAULT_REVISION, others: &[] })
}

fn find<'a>(objs: &'a [Desired], kind: &str, name: &str) -> &'a Value {
    &objs
        .iter()
        .find(|d| d.resource.kind == kind && d.name == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
        .body
}

fn names(objs: &[Desired]) -> Vec<String> {
    objs.iter().map(Desired::describe).collect()
}

#[test]
fn default_spec_installs_control_plane_ingress_and_webhook_only() {
    let objs = rendered("{}");
    let got = names(&objs);
    for want in [
        "ServiceAccount/skein-controlplane",
        "ClusterRoleBinding/skein-controlplane-mesh",
        "Role/skein-controlplane",
        "RoleBinding/skein-controlplane",
        "ConfigMap/skein-mesh",
        "Deployment/skein-controlplane",
        "Service/skein-controlplane",
        "Deployment/skein-ingressgateway",
        "Service/skein-ingressgateway",
        "MutatingWebhookConfiguration/skein-sidecar-injector-mesh",
    ] {
        assert!(got.contains(&want.to_string()), "missing {want} in {got:?}");
    }
    assert!(!got.iter().any(|n| n.contains("egressgateway") || n.contains("eastwest")), "{got:?}");
    assert!(!got.iter().any(|n| n.starts_with("PodDisruptionBudget")), "no PDB for one replica");
    // ClusterRoles are shipped with the operator (config/rbac), never rendered: the operator
    // may only bind them.
    assert!(!got.iter().any(|n| n.starts_with("ClusterRole/")), "{got:?}");
}

#[test]
fn every_object_is_owned_labelled_and_placed_in_the_spec_namespace() {
    let objs = rendered("namespace: mesh-ns\n");
    for d in &objs {
        let meta = &d.body["metadata"];
        assert_eq!(meta["ownerReferences"][0]["kind"], "MeshControlPlane", "{}", d.describe());
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        assert_eq!(meta["labels"][OWNER_LABEL], "mesh");
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
        if d.namespaced {
            assert_eq!(meta["namespace"], "mesh-ns", "{}", d.describe());
        } else {
            assert!(meta.get("namespace").is_none(), "{}", d.describe());
        }
    }
}

#[test]
fn control_plane_exposes_the_four_ports_and_runs_hardened() {
    let objs = rendered("{}");
    let svc = find(&objs, "Service", CONTROL_PLANE);
    let ports: Vec<i64> =
        svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, [15010, 15012, 15014, 15017]);
    let dep = find(&objs, "Deployment", CONTROL_PLANE);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.skein.dev/skein/skein-controlplane:1.0.2");
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert!(c["args"].as_array().unwrap().contains(&Value::from("--ca-secret=skein-ca")));
}

#[test]
fn replicas_above_one_add_a_pdb() {
    let objs = rendered("components: {controlPlane: {replicas: 3}}\n");
    assert_eq!(find(&objs, "Deployment", CONTROL_PLANE)["spec"]["replicas"], 3);
    assert_eq!(find(&objs, "PodDisruptionBudget", CONTROL_PLANE)["spec"]["minAvailable"], 1);
}

#[test]
fn east_west_gateway_exposes_15443_and_carries_the_network() {
    let objs = rendered(
        "components: {eastWestGateway: {enabled: true, serviceType: NodePort}, ingressGateway: {enabled: false}}\nmultiCluster: {network: net1, clusterName: east, locality: us-east/us-east-1a}\n",
    );
    let svc = find(&objs, "Service", "skein-eastwestgateway");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert!(svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["port"] == 15443 && p["targetPort"] == 15443));
    assert_eq!(svc["metadata"]["labels"]["topology.istio.io/network"], "net1");
    assert_eq!(svc["metadata"]["labels"]["topology.kubernetes.io/region"], "us-east");
    assert_eq!(svc["metadata"]["labels"]["topology.kubernetes.io/zone"], "us-east-1a");
    assert!(svc["metadata"]["labels"].get("topology.istio.io/subzone").is_none());
    let dep = find(&objs, "Deployment", "skein-eastwestgateway");
    let pod = &dep["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio"], "eastwestgateway");
    // skein-proxy's `run` as a router (it has no `gateway` subcommand), with a pod identity.
    let args = &pod["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "run");
    assert_eq!(args[1], "--proxy-type=router");
    assert_eq!(args[2], "--discovery-address=skein-controlplane.istio-system.svc:15012");
    let volumes: Vec<&str> =
        pod["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["istio-token", "istiod-ca-cert", "skein-certs", "tmp"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "registry.skein.dev/skein/skein-proxy:1.0.2");
    let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "ISTIO_META_NETWORK" && e["value"] == "net1"));
    assert!(!names(&objs).iter().any(|n| n.contains("ingressgateway")), "ingress disabled");
}

#[test]
fn ingress_gateway_is_selected_by_istios_label() {
    let objs = rendered("{}");
    let dep = find(&objs, "Deployment", "skein-ingressgateway");
    assert_eq!(dep["spec"]["template"]["metadata"]["labels"]["istio"], "ingressgateway");
    assert_eq!(find(&objs, "Service", "skein-ingressgateway")["spec"]["type"], "LoadBalancer");
}

#[test]
fn webhook_trusts_the_mesh_root_and_matches_istio_opt_in_labels() {
    let objs = rendered("{}");
    let hook = find(&objs, "MutatingWebhookConfiguration", "skein-sidecar-injector-mesh");
    let hooks = hook["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 3);
    // base64("ROOT-PEM")
    assert_eq!(hooks[0]["clientConfig"]["caBundle"], "Uk9PVC1QRU0=");
    assert_eq!(hooks[0]["clientConfig"]["service"]["port"], 15017);
    assert_eq!(hooks[0]["namespaceSelector"]["matchLabels"]["skein-injection"], "enabled");
    assert_eq!(hooks[1]["namespaceSelector"]["matchLabels"]["istio-injection"], "enabled");
    assert_eq!(hooks[2]["namespaceSelector"]["matchExpressions"][0]["key"], "istio.io/rev");
}

/// An external CA injector owns `caBundle`: the operator leaves the field out of what it
/// applies (so it neither owns nor compares it), and nothing else of the webhook changes.
#[test]
fn an_external_ca_bundle_is_left_out_of_the_webhook() {
    let ours = find(&rendered("{}"), "MutatingWebhookConfiguration", "skein-sidecar-injector-mesh").clone();
    let external = rendered("{security: {webhookCABundle: External}}");
    let theirs = find(&external, "MutatingWebhookConfiguration", "skein-sidecar-injector-mesh");
    let mut expected = ours.clone();
    for hook in expected["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"].as_object_mut().unwrap().remove("caBundle");
    }
    assert_eq!(theirs, &expected);
    assert_ne!(theirs, &ours, "caBundle was rendered");
}

#[test]
fn control_plane_rbac_reads_secrets_only_in_its_namespace() {
    let objs = rendered("{}");
    let crb = find(&objs, "ClusterRoleBinding", "skein-controlplane-mesh");
    assert_eq!(crb["roleRef"]["name"], rbac::CONTROL_PLANE_CLUSTER_ROLE);
    let reader = find(&objs, "ClusterRoleBinding", "skein-reader-service-account-mesh");
    assert_eq!(reader["roleRef"]["name"], rbac::REMOTE_READER_CLUSTER_ROLE);
    let rules = rbac::control_plane_cluster_rules();
    let rules = rules.as_array().unwrap();
    assert!(!rules.iter().any(|r| { r["resources"].as_array().unwrap().contains(&Value::from("secrets")) }));
    assert!(!rules.iter().any(|r| r["verbs"].as_array().unwrap().contains(&Value::from("*"))));
    let role = find(&objs, "Role", CONTROL_PLANE);
    assert_eq!(role["rules"][0]["resources"][0], "secrets");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
}

/// Kubernetes refuses a Role that grants more than its author holds: every rule the operator
/// renders for the control plane's Role must be covered by the operator's own mesh-namespace
/// Role, or the install fails with Forbidden on a real cluster.
#[test]
fn the_operator_holds_what_it_grants_in_the_mesh_namespace() {
    let docs = rbac::operator_mesh_namespace("istio-system", "skein-operator");
    let held = docs[1]["rules"].as_array().unwrap().clone();
    let covers = |group: &Value, resource: &Value, verb: &Value| {
        held.iter().any(|h| {
            h["apiGroups"].as_array().unwrap().contains(group)
                && h["resources"].as_array().unwrap().contains(resource)
                && h["verbs"].as_array().unwrap().contains(verb)
                && h.get("resourceNames").is_none()
        })
    };
    for rule in rbac::control_plane_namespace_rules().as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    assert!(covers(g, r, v), "operator's mesh Role lacks {g}/{r} {v}");
                }
            }
        }
    }
    // And the operator's ClusterRole names no Secret and writes no ClusterRole.
    let cluster = &rbac::operator_cluster_role("skein-operator")[0]["rules"];
    for rule in cluster.as_array().unwrap() {
        let resources = rule["resources"].as_array().unwrap();
        assert!(!resources.contains(&Value::from("secrets")), "{rule}");
        if resources.contains(&Value::from("clusterroles")) {
            assert_eq!(rule["verbs"], serde_json::json!(["bind"]), "{rule}");
            assert!(rule["resourceNames"].is_array(), "{rule}");
        }
    }
}

#[test]
fn mesh_config_is_written_in_istio_format() {
    let objs = rendered(
        "meshConfig: {trustDomain: example.org, outboundTrafficPolicy: {mode: REGISTRY_ONLY}, accessLogFile: /dev/stdout, enableTracing: true, tracing: {address: 'zipkin.obs:9411'}}\n",
    );
    let cm = find(&objs, "ConfigMap", MESH_CONFIGMAP);
    let mesh: Value = serde_yaml::from_str(cm["data"]["mesh"].as_str().unwrap()).unwrap();
    assert_eq!(mesh["trustDomain"], "example.org");
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(mesh["accessLogFile"], "/dev/stdout");
    assert_eq!(mesh["defaultConfig"]["tracing"]["zipkin"]["address"], "zipkin.obs:9411");
    assert_eq!(mesh["defaultConfig"]["discoveryAddress"], "skein-controlplane.istio-system.svc:15012");
}

#[test]
fn the_root_namespace_is_istios_by_default_and_follows_the_spec() {
    let root = |spec: &str| {
        let objs = rendered(spec);
        let cm = find(&objs, "ConfigMap", MESH_CONFIGMAP);
        let mesh: Value = serde_yaml::from_str(cm["data"]["mesh"].as_str().unwrap()).unwrap();
        mesh["rootNamespace"].as_str().unwrap().to_string()
    };
    // Istio's YAML puts mesh-wide policies in istio-system: by default that is where they apply.
    assert_eq!(root("{}"), "istio-system");
    assert_eq!(root("namespace: mesh\n"), "mesh");
    assert_eq!(root("namespace: mesh\nmeshConfig: {rootNamespace: policies}\n"), "policies");
}

#[test]
fn user_provided_ca_secret_is_passed_to_the_control_plane() {
    let objs = rendered("security: {rootCA: {type: Secret, secretName: cacerts}}\n");
    let dep = find(&objs, "Deployment", CONTROL_PLANE);
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&Value::from("--ca-secret=cacerts")));
}

#[test]
fn rendering_matches_the_golden_file() {
    // Every object of a production-like spec, as applied. A change here is a change to what
    // every installation gets: review the diff, then `SKEIN_UPDATE_GOLDEN=1 cargo test -p
    // skein-operator rendering_matches_the_golden_file`.
    let spec = "version: 1.0.2\ncomponents:\n  controlPlane: {replicas: 2}\n  egressGateway: {enabled: true}\n  eastWestGateway: {enabled: true}\nmultiCluster: {clusterName: east, network: net1, meshID: mesh1}\n";
    let docs: Vec<String> = rendered(spec).into_iter().map(|d| serde_yaml::to_string(&d.body).unwrap()).collect();
    let text = format!(
        "# Generated by rendering_matches_the_golden_file (operator/src/render/tests.rs).\n---\n{}",
        docs.join("---\n")
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/render/testdata/production.yaml");
    if std::env::var_os("SKEIN_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(golden == text, "rendering differs from {}; diff it, then update as the comment says", path.display());
}

#[test]
fn a_revision_based_upgrade_renders_both_revisions_and_the_tags_follow_the_active_one() {
    let catalog = Catalog::builtin().unwrap();
    let new = catalog.resolve(Some("1.1.0"), skein_api::Channel::FAST).unwrap().clone();
    let old = catalog.resolve(Some("1.0.2"), skein_api::Channel::STABLE).unwrap().clone();
    let others = [Revision { name: "1-0-2".into(), release: old.clone() }];
    let mcp = mcp("revisionTags: [prod]\ncomponents: {controlPlane: {replicas: 2}}\n");
    let facts = Facts { release: &new, root_cert_pem: "ROOT-PEM", revision: "1-1-0", others: &others };
    let objs = render(&mcp, facts);
    let ns = "istio-system";
    for (rev, release) in [("1-1-0", &new), ("1-0-2", &old)] {
        let name = format!("skein-controlplane-{rev}");
        let dep = find(&objs, "Deployment", &name);
        assert_eq!(dep["spec"]["selector"]["matchLabels"]["istio.io/rev"], rev);
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], release.control_plane_image.as_str());
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.contains(&format!("--revision={rev}").as_str()), "{args:?}");
        // Its sidecars dial its own Service, and its certificate names it.
        assert!(args.contains(&format!("--injected-discovery-address={name}.{ns}.svc:15012").as_str()), "{args:?}");
        assert!(args.contains(&format!("--tls-san={name}.{ns}.svc").as_str()), "{args:?}");
        assert_eq!(find(&objs, "Service", &name)["spec"]["selector"]["istio.io/rev"], rev);
        assert_eq!(find(&objs, "PodDisruptionBudget", &name)["spec"]["selector"]["matchLabels"]["istio.io/rev"], rev);
    }
    // The stable Service (gateways, mesh config) follows the active revision.
    assert_eq!(find(&objs, "Service", CONTROL_PLANE)["spec"]["selector"]["istio.io/rev"], "1-1-0");
    assert!(objs.iter().all(|d| !(d.resource.kind == "Deployment" && d.name == CONTROL_PLANE)));
    // Gateways keep their selector (immutable) and run the active release's proxy.
    let gw = find(&objs, "Deployment", "skein-ingressgateway");
    assert_eq!(gw["spec"]["selector"]["matchLabels"]["istio.io/rev"], "default");
    assert_eq!(gw["spec"]["template"]["spec"]["containers"][0]["image"], new.proxy_image.as_str());
    // Injection: the tags and the injection labels go to the active revision, a namespace
    // labelled with the old revision's name to the old one.
    let hooks = find(&objs, "MutatingWebhookConfiguration", "skein-sidecar-injector-mesh")["webhooks"].clone();
    let by_name = |n: &str| hooks.as_array().unwrap().iter().find(|h| h["name"] == n).cloned().unwrap();
    for n in ["namespace.sidecar-injector.skein.dev", "istio-namespace.sidecar-injector.skein.dev"] {
        assert_eq!(by_name(n)["clientConfig"]["service"]["name"], "skein-controlplane-1-1-0");
    }
    let tags = by_name("rev.namespace.sidecar-injector.skein.dev");
    assert_eq!(tags["clientConfig"]["service"]["name"], "skein-controlplane-1-1-0");
    assert_eq!(
        tags["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["default", "prod", "1-1-0"])
    );
    let old_hook = by_name("rev-1-0-2.namespace.sidecar-injector.skein.dev");
    assert_eq!(old_hook["clientConfig"]["service"]["name"], "skein-controlplane-1-0-2");
    assert_eq!(old_hook["namespaceSelector"]["matchExpressions"][0]["values"], serde_json::json!(["1-0-2"]));
    assert_eq!(hooks.as_array().unwrap().len(), 4);
}

#[test]
fn the_webhook_certificate_covers_every_revision_service() {
    let names = webhook::serving_names(&mcp("{}"));
    assert!(names.contains(&"skein-controlplane.istio-system.svc".to_string()));
    assert!(names.contains(&"*.istio-system.svc".to_string()), "{names:?}");
}

#[test]
fn an_in_place_rollout_runs_the_new_control_plane_while_gateways_wait_for_it() {
    let catalog = Catalog::builtin().unwrap();
    let new = catalog.resolve(Some("1.1.0"), skein_api::Channel::FAST).unwrap().clone();
    let old = catalog.resolve(Some("1.0.2"), skein_api::Channel::STABLE).unwrap().clone();
    let others = [Revision { name: DEFAULT_REVISION.into(), release: new.clone() }];
    let facts = Facts { release: &old, root_cert_pem: "ROOT-PEM", revision: DEFAULT_REVISION, others: &others };
    let objs = render(&mcp("{}"), facts);
    let cp = find(&objs, "Deployment", CONTROL_PLANE);
    assert_eq!(cp["spec"]["template"]["spec"]["containers"][0]["image"], new.control_plane_image.as_str());
    let gw = find(&objs, "Deployment", "skein-ingressgateway");
    assert_eq!(gw["spec"]["template"]["spec"]["containers"][0]["image"], old.proxy_image.as_str());
    assert_eq!(objs.iter().filter(|d| d.resource.kind == "Deployment").count(), 2, "one control plane, one gateway");
}

#[test]
fn autoscaling_renders_a_hpa_and_leaves_replicas_to_it() {
    let spec = "components:\n  controlPlane: {autoscaling: {maxReplicas: 5}}\n  ingressGateway: {autoscaling: {minReplicas: 2, maxReplicas: 10, targetCPUUtilizationPercentage: 60}}\n";
    let objs = rendered(spec);
    let hpa = find(&objs, "HorizontalPodAutoscaler", CONTROL_PLANE);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": CONTROL_PLANE})
    );
    assert_eq!((hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()), (Some(1), Some(5)));
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80, "Istio's default");
    let gw = find(&objs, "HorizontalPodAutoscaler", "skein-ingressgateway");
    assert_eq!(gw["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    // The autoscaler owns replicas: the operator does not apply the field at all.
    assert!(find(&objs, "Deployment", CONTROL_PLANE)["spec"].get("replicas").is_none());
    assert!(find(&objs, "Deployment", "skein-ingressgateway")["spec"].get("replicas").is_none());
    // Up to 5 replicas: a PDB keeps one available.
    find(&objs, "PodDisruptionBudget", CONTROL_PLANE);
    // Without autoscaling: replicas from the spec, no HPA.
    let objs = rendered("components: {controlPlane: {replicas: 2}}\n");
    assert_eq!(find(&objs, "Deployment", CONTROL_PLANE)["spec"]["replicas"], 2);
    assert_eq!(find(&objs, "Deployment", "skein-ingressgateway")["spec"]["replicas"], 1);
    assert!(!names(&objs).iter().any(|n| n.starts_with("HorizontalPodAutoscaler")));
}
