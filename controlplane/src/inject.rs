//! Sidecar injection: what the mutating webhook adds to a pod, as a JSON Patch. Pure, so the
//! shape of the injected pod is unit-tested; `webhook` serves it.
//!
//! The pod gets Istio's layout: an init container running `skein-proxy init-iptables` (the
//! only part with NET_ADMIN), the `skein-proxy` sidecar as uid 1337 with a read-only root, the
//! projected ServiceAccount token for the CA (audience `istio-ca`), the mesh root from the
//! `istio-ca-root-cert` ConfigMap, an in-memory directory for its certificate, and the
//! `security.istio.io/tlsMode: istio` label that turns on auto mTLS towards it.

use serde_json::{Value, json};
use skein_api::names::{CERT_DIR, ROOT_CERT_DIR, ROOT_CERT_FILE, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_FILE};

/// Annotation (or label) opting a pod out: `sidecar.istio.io/inject: "false"`.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Annotation recording an injection (Istio's name).
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Name of the injected sidecar container.
pub const SIDECAR: &str = "skein-proxy";
/// Name of the injected init container.
pub const INIT: &str = "skein-init";
/// Per-pod proxy settings (Istio's ProxyConfig, YAML); its `proxyMetadata` map becomes the
/// sidecar's environment, as Istio's injector does (e.g. `SECRET_TTL` for the certificate
/// lifetime the proxy asks for).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Port of the sidecar's DNS proxy (Istio's), on loopback; the pod's port 53 goes there.
pub const DNS_PROXY_PORT: u16 = 15053;
/// The `proxyMetadata` key that turns DNS capture off with `"false"` (Istio's name; Skein
/// captures DNS by default so `.global` and other ServiceEntry hosts resolve in the pod).
pub const DNS_CAPTURE_KEY: &str = "ISTIO_META_DNS_CAPTURE";
/// ConfigMap with the mesh root, published in every namespace.
pub use skein_api::names::ROOT_CERT_CONFIGMAP;

/// What the injected containers look like for this control plane.
#[derive(Debug, Clone)]
pub struct Template {
    /// Image of `skein-proxy`.
    pub proxy_image: String,
    /// Control plane address the sidecar dials (`skein-controlplane.<ns>.svc:15012`).
    pub discovery_address: String,
    /// Revision of this control plane (`istio.io/rev` label on injected pods).
    pub revision: String,
}

/// JSON Patch operations injecting the sidecar into `pod`, or `None` when the pod must be
/// left alone (opted out, already injected, host network).
pub fn patch(pod: &Value, t: &Template) -> Result<Option<Vec<Value>>, String> {
    let meta = &pod["metadata"];
    let spec = pod.get("spec").filter(|s| s.is_object()).ok_or("pod has no spec")?;
    let opted_out = |m: &Value| m.get(INJECT_ANNOTATION).and_then(Value::as_str).is_some_and(|v| v == "false");
    if opted_out(&meta["annotations"]) || opted_out(&meta["labels"]) {
        return Ok(None);
    }
    if spec["hostNetwork"].as_bool() == Some(true) {
        return Ok(None);
    }
    let containers = spec["containers"].as_array().ok_or("spec.containers: missing")?;
    if containers.iter().any(|c| matches!(c["name"].as_str(), Some(SIDECAR | "istio-proxy"))) {
        return Ok(None);
    }
    let metadata_env = proxy_metadata(&meta["annotations"])?;
    let dns = !metadata_env
        .iter()
        .any(|e| e["name"] == DNS_CAPTURE_KEY && e["value"].as_str().is_some_and(|v| v.eq_ignore_ascii_case("false")));
    let mut ops = Vec::new();
    let init = init_container(t, dns);
    match spec.get("initContainers").and_then(Value::as_array) {
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init})),
        None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]})),
    }
    let mut sidecar = sidecar(t, dns);
    if let Some(env) = sidecar["env"].as_array_mut() {
        env.extend(metadata_env);
    }
    ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar}));
    let volumes = volumes();
    match spec.get("volumes").and_then(Value::as_array) {
        Some(_) => ops.extend(volumes.into_iter().map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v}))),
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
    }
    let labels = [("security.istio.io/tlsMode", "istio"), ("istio.io/rev", t.revision.as_str())];
    add_map_entries(&mut ops, meta, "labels", &labels);
    let status = json!({"initContainers": [INIT], "containers": [SIDECAR], "volumes": ["istio-token", "istiod-ca-cert", "skein-certs"]})
        .to_string();
    add_map_entries(&mut ops, meta, "annotations", &[(STATUS_ANNOTATION, status.as_str())]);
    Ok(Some(ops))
}

/// The `proxyMetadata` of the pod's `proxy.istio.io/config` annotation, as env entries.
fn proxy_metadata(annotations: &Value) -> Result<Vec<Value>, String> {
    let Some(text) = annotations.get(PROXY_CONFIG_ANNOTATION).and_then(Value::as_str) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| format!("annotation {PROXY_CONFIG_ANNOTATION}: {reason}");
    let config: Value = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Some(metadata) = config.get("proxyMetadata") else { return Ok(Vec::new()) };
    let metadata = metadata.as_object().ok_or_else(|| bad("proxyMetadata: must be a map".into()))?;
    metadata
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok(json!({"name": k, "value": v})),
            None => Err(bad(format!("proxyMetadata.{k}: must be a string"))),
        })
        .collect()
}

/// JSON Pointer escaping (`/` → `~1`, `~` → `~0`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn add_map_entries(ops: &mut Vec<Value>, meta: &Value, field: &str, entries: &[(&str, &str)]) {
    if meta.get(field).is_some_and(Value::is_object) {
        for (k, v) in entries {
            ops.push(json!({"op": "add", "path": format!("/metadata/{field}/{}", escape(k)), "value": v}));
        }
    } else {
        let map: serde_json::Map<String, Value> = entries.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        ops.push(json!({"op": "add", "path": format!("/metadata/{field}"), "value": map}));
    }
}

fn init_container(t: &Template, dns: bool) -> Value {
    let mut args = vec!["init-iptables".to_string()];
    if dns {
        args.extend(["--redirect-dns-port".into(), DNS_PROXY_PORT.to_string()]);
    }
    json!({
        "name": INIT,
        "image": t.proxy_image,
        "args": args,
        // iptables needs NET_ADMIN/NET_RAW and root, for this one short step only.
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"cpu": "100m", "memory": "50Mi"}},
    })
}

fn sidecar(t: &Template, dns: bool) -> Value {
    let env: Vec<Value> = [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    .iter()
    .map(|(name, path)| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}))
    .collect();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--discovery-address".into(),
        t.discovery_address.clone(),
        "--discovery-root-cert".into(),
        format!("{ROOT_CERT_DIR}/{ROOT_CERT_FILE}"),
        "--token-file".into(),
        format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        "--cert-dir".into(),
        CERT_DIR.into(),
        // Istio's default `terminationDrainDuration`.
        "--termination-drain-duration".into(),
        "5s".into(),
    ];
    if dns {
        args.extend(["--dns-addr".into(), format!("127.0.0.1:{DNS_PROXY_PORT}")]);
    }
    json!({
        "name": SIDECAR,
        "image": t.proxy_image,
        "args": args,
        "env": env,
        "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2, "failureThreshold": 30},
        "securityContext": {
            "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": true},
            {"name": "skein-certs", "mountPath": CERT_DIR},
        ],
    })
}

fn volumes() -> Vec<Value> {
    vec![
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": TOKEN_FILE}}]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}}),
        json!({"name": "skein-certs", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            proxy_image: "registry.skein.dev/skein-proxy:0.1.0".into(),
            discovery_address: "skein-controlplane.istio-system.svc:15012".into(),
            revision: "default".into(),
        }
    }

    /// Applies add operations the way the apiserver does (enough for these tests).
    fn apply(mut doc: Value, ops: &[Value]) -> Value {
        for op in ops {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let parts: Vec<String> =
                path.trim_start_matches('/').split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
            let (last, parents) = parts.split_last().unwrap();
            let mut cur = &mut doc;
            for p in parents {
                cur = &mut cur[p.as_str()];
            }
            match (cur, last.as_str()) {
                (Value::Array(a), "-") => a.push(op["value"].clone()),
                (Value::Array(a), i) => a.insert(i.parse().unwrap(), op["value"].clone()),
                (Value::Object(o), k) => {
                    o.insert(k.to_string(), op["value"].clone());
                }
                (other, _) => panic!("cannot add at {path} into {other}"),
            }
        }
        doc
    }

    #[test]
    fn a_pod_gets_the_init_step_the_sidecar_its_identity_volumes_and_the_mtls_label() {
        let pod = json!({"metadata": {"name": "reviews-v1", "labels": {"app": "reviews"}},
            "spec": {"serviceAccountName": "bookinfo-reviews", "containers": [{"name": "reviews", "image": "reviews:1"}]}});
        let ops = patch(&pod, &template()).unwrap().unwrap();
        let out = apply(pod, &ops);
        let spec = &out["spec"];
        assert_eq!(spec["initContainers"][0]["name"], INIT);
        assert_eq!(spec["initContainers"][0]["args"], json!(["init-iptables", "--redirect-dns-port", "15053"]));
        assert_eq!(
            spec["initContainers"][0]["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        let names: Vec<&str> =
            spec["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["reviews", SIDECAR]);
        let sidecar = &spec["containers"][1];
        assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
        assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
        let args = sidecar["args"].to_string();
        assert!(args.contains("skein-controlplane.istio-system.svc:15012"), "{args}");
        let vols: Vec<&str> = spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(vols, vec!["istio-token", "istiod-ca-cert", "skein-certs"]);
        assert_eq!(spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "istio-ca");
        assert_eq!(out["metadata"]["labels"]["security.istio.io/tlsMode"], "istio");
        assert_eq!(out["metadata"]["labels"]["app"], "reviews");
        assert!(out["metadata"]["annotations"][STATUS_ANNOTATION].as_str().unwrap().contains(SIDECAR));
    }

    #[test]
    fn existing_init_containers_and_volumes_are_kept_and_ours_runs_first() {
        let pod = json!({"metadata": {"name": "p", "annotations": {"a": "b"}},
            "spec": {"initContainers": [{"name": "migrate"}], "volumes": [{"name": "data"}], "containers": [{"name": "app"}]}});
        let out = apply(pod.clone(), &patch(&pod, &template()).unwrap().unwrap());
        let inits: Vec<&str> =
            out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(inits, vec![INIT, "migrate"]);
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 4);
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
    }

    #[test]
    fn opted_out_already_injected_and_host_network_pods_are_left_alone() {
        let t = template();
        let skip = [
            json!({"metadata": {"annotations": {INJECT_ANNOTATION: "false"}}, "spec": {"containers": [{"name": "a"}]}}),
            json!({"metadata": {"labels": {INJECT_ANNOTATION: "false"}}, "spec": {"containers": [{"name": "a"}]}}),
            json!({"metadata": {}, "spec": {"containers": [{"name": "a"}, {"name": "istio-proxy"}]}}),
            json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": [{"name": "a"}]}}),
        ];
        for pod in skip {
            assert_eq!(patch(&pod, &t).unwrap(), None, "{pod}");
        }
        assert!(patch(&json!({"metadata": {}}), &t).unwrap_err().contains("spec"));
    }

    #[test]
    fn dns_is_captured_to_the_sidecars_dns_proxy_unless_the_pod_turns_it_off() {
        let pod = |annotations: Value| json!({"metadata": {"name": "a", "annotations": annotations}, "spec": {"containers": [{"name": "a"}]}});
        let injected = |p: Value| apply(p.clone(), &patch(&p, &template()).unwrap().unwrap());
        let out = injected(pod(json!({})));
        assert_eq!(out["spec"]["initContainers"][0]["args"], json!(["init-iptables", "--redirect-dns-port", "15053"]));
        let args = out["spec"]["containers"][1]["args"].as_array().unwrap().clone();
        assert!(args.windows(2).any(|w| w == [json!("--dns-addr"), json!("127.0.0.1:15053")]), "{args:?}");
        // Istio's switch, with Istio's key: both halves go together (capture without a DNS
        // server would leave the pod without DNS).
        let off = json!({PROXY_CONFIG_ANNOTATION: "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}"});
        let out = injected(pod(off));
        assert_eq!(out["spec"]["initContainers"][0]["args"], json!(["init-iptables"]));
        assert!(!out["spec"]["containers"][1]["args"].to_string().contains("--dns-addr"));
        let on = json!({PROXY_CONFIG_ANNOTATION: "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}"});
        assert!(injected(pod(on))["spec"]["containers"][1]["args"].to_string().contains("--dns-addr"));
    }

    #[test]
    fn proxy_metadata_of_the_proxy_config_annotation_becomes_the_sidecars_environment() {
        let pod = |config: &str| {
            json!({"metadata": {"name": "reviews-v2", "annotations": {PROXY_CONFIG_ANNOTATION: config}},
                "spec": {"containers": [{"name": "reviews", "image": "reviews:2"}]}})
        };
        let p = pod("proxyMetadata:\n  SECRET_TTL: 20s\n");
        let out = apply(p.clone(), &patch(&p, &template()).unwrap().unwrap());
        let env = out["spec"]["containers"][1]["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "SECRET_TTL", "value": "20s"})), "{env:?}");
        assert!(env.iter().any(|e| e["name"] == "POD_NAME"), "the downward-API entries stay");
        // A value that is not a string, or YAML that does not parse, is refused by name.
        let err = patch(&pod("proxyMetadata: {SECRET_TTL: [20s]}"), &template()).unwrap_err();
        assert_eq!(err, "annotation proxy.istio.io/config: proxyMetadata.SECRET_TTL: must be a string");
        assert!(
            patch(&pod("proxyMetadata: ["), &template()).unwrap_err().starts_with("annotation proxy.istio.io/config: ")
        );
    }
}
