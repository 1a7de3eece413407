//! Skein as users run it, on a local cluster with a real node (containerd, kubelet, kube-proxy,
//! CoreDNS; `hack/cluster.sh` with `SKEIN_NODE=real`): the operator is installed with
//! `kubectl apply -k config/local` and runs from its image; the control plane and the ingress
//! gateway it installs run as pods; Bookinfo in a namespace labeled `istio-injection=enabled`
//! gets its sidecars and init step from the webhook, and Istio's own Bookinfo routing YAML
//! decides what answers requests sent to the gateway's LoadBalancer address. Last, a
//! control-plane image that crashes turns `Ready` False, naming the pod and the kubelet's reason.
//! Clusters on separate networks reach only each other's LoadBalancer addresses.
//!
//! Needs the images of `hack/images.sh` (`make test-e2e` builds them first).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use serde_json::Value;
use skein_e2e::{
    Cluster, Node,
    real::{diagnostics, install_mesh, install_operator, kubectl_ok, wait_ready},
    repo_root,
};

const SAMPLES: &str = "config/samples/bookinfo";

fn sample(name: &str) -> String {
    repo_root().join(SAMPLES).join(name).to_string_lossy().into_owned()
}

/// One HTTP/1.1 GET to `addr` (bounded by timeouts): (status, JSON body).
fn get(addr: SocketAddr, path: &str, user: Option<&str>) -> Result<(u16, Value), String> {
    get_within(addr, path, user, Duration::from_secs(10))
}

fn get_within(addr: SocketAddr, path: &str, user: Option<&str>, read: Duration) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(read)).map_err(|e| e.to_string())?;
    let user = user.map(|u| format!("end-user: {u}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: bookinfo.example\r\n{user}Connection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))))
}

#[tokio::test(flavor = "multi_thread")]
async fn skein_from_its_images_routes_bookinfo_between_real_pods_and_reports_a_crashing_control_plane() {
    let cluster = Cluster::start_with("real", Node::Real).await.expect("cluster with a real node starts");

    // The operator, as users install it (the local overlay only swaps in the local images), and
    // a small MeshControlPlane with the east-west gateway, tagged with the local build's images.
    install_operator(&cluster);
    install_mesh(&cluster, "{tag: dev, components: {eastWestGateway: {enabled: true}}}").await;
    // Ready came from real pods running the images the operator rendered.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "istio-system");
    let cp = pods.list(&ListParams::default().labels("app=skein-controlplane")).await.unwrap();
    let cp_pod = cp.items.first().expect("a control-plane pod");
    let st = cp_pod.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let c = &st.container_statuses.as_ref().unwrap()[0];
    assert!(c.ready, "{c:?}");
    assert_eq!(c.image, "skein.local/skein/skein-controlplane:dev");
    assert!(st.pod_ip.as_deref().is_some_and(|ip| ip.starts_with("198.18.")), "{st:?}");

    // Bookinfo in an injected namespace, and Istio's routing for it.
    kubectl_ok(&cluster, &["create", "namespace", "bookinfo"]);
    kubectl_ok(&cluster, &["label", "namespace", "bookinfo", "istio-injection=enabled"]);
    kubectl_ok(&cluster, &["apply", "-n", "bookinfo", "-f", &sample("bookinfo.yaml")]);
    for f in ["bookinfo-gateway.yaml", "destination-rule-all.yaml", "virtual-service-all-v1.yaml"] {
        kubectl_ok(&cluster, &["apply", "-n", "bookinfo", "-f", &sample(f)]);
    }
    kubectl_ok(&cluster, &["apply", "-n", "bookinfo", "-f", &sample("virtual-service-reviews-test-v2.yaml")]);
    let out = cluster.kubectl(
        &["wait", "--for=condition=Available", "deployment", "--all", "-n", "bookinfo", "--timeout=180s"],
        None,
    );
    assert!(out.status.success(), "Bookinfo did not become available\n{}", diagnostics(&cluster, "istio-system"));
    // Every pod was injected through the real apiserver, and its init step ran and succeeded.
    let bookinfo: Api<Pod> = Api::namespaced(cluster.client.clone(), "bookinfo");
    for pod in bookinfo.list(&ListParams::default()).await.unwrap() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().unwrap();
        let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert!(containers.contains(&"skein-proxy"), "{name} has no sidecar: {containers:?}");
        let init = &pod.status.as_ref().unwrap().init_container_statuses.as_ref().expect("init statuses")[0];
        let done = init.state.as_ref().and_then(|s| s.terminated.as_ref()).expect("init step finished");
        assert_eq!((init.name.as_str(), done.exit_code), ("skein-init", 0), "{name}");
    }

    // Through the gateway's LoadBalancer address, as a client outside the cluster.
    let lb = kubectl_ok(
        &cluster,
        &[
            "get",
            "service",
            "skein-ingressgateway",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ],
    );
    let lb: SocketAddr = format!("{}:80", lb.trim()).parse().expect("a LoadBalancer address");
    // The first answer: config has reached the gateway and every sidecar.
    let start = Instant::now();
    loop {
        match get(lb, "/productpage", None) {
            Ok((200, body))
                if body["calls"]["reviews"]["status"] == 200 && body["calls"]["details"]["status"] == 200 =>
            {
                break;
            }
            other => assert!(
                start.elapsed() < Duration::from_secs(60),
                "no Bookinfo answer through {lb}: {other:?}\n{}",
                diagnostics(&cluster, "istio-system")
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..10 {
        let (status, body) = get(lb, "/productpage", None).unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
        let reviews = &body["calls"]["reviews"]["body"];
        assert_eq!(reviews["version"], "v1", "request {i}: others get reviews v1: {body}");
        assert_eq!(reviews["calls"], serde_json::json!({}), "reviews v1 calls no ratings: {body}");
        // Each hop is mutual TLS between the identities Istio would give them.
        assert_eq!(
            body["xfcc"],
            "By=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage;URI=spiffe://cluster.local/ns/istio-system/sa/skein-ingressgateway"
        );
        assert_eq!(
            body["calls"]["details"]["body"]["xfcc"],
            "By=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details;URI=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
        );

        let (status, body) = get(lb, "/productpage", Some("jason")).unwrap();
        assert_eq!(status, 200, "jason {i}: {body}");
        let reviews = &body["calls"]["reviews"]["body"];
        assert_eq!(reviews["version"], "v2", "jason {i} gets reviews v2: {body}");
        assert_eq!(reviews["calls"]["ratings"]["status"], 200, "reviews v2 calls ratings: {body}");
        assert_eq!(reviews["calls"]["ratings"]["body"]["version"], "v1");
    }
    // A path the gateway's VirtualService does not route.
    let (status, _) = get(lb, "/not-bookinfo", None).unwrap();
    assert_eq!(status, 404);

    // The east-west gateway behind its own LoadBalancer address: once Istio's cross-network
    // Gateway (samples/multicluster/expose-services.yaml) is applied, it listens on 15443.
    let ew = kubectl_ok(
        &cluster,
        &[
            "get",
            "service",
            "skein-eastwestgateway",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ],
    );
    let ew: SocketAddr = format!("{}:15443", ew.trim()).parse().expect("an east-west LoadBalancer address");
    assert_ne!(ew.ip(), lb.ip());
    cluster.apply(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: cross-network-gateway, namespace: istio-system}\nspec:\n  selector:\n    istio: eastwestgateway\n  servers:\n    - port:\n        number: 15443\n        name: tls\n        protocol: TLS\n      tls:\n        mode: AUTO_PASSTHROUGH\n      hosts:\n        - \"*.local\"\n",
    );
    let start = Instant::now();
    while let Err(e) = TcpStream::connect_timeout(&ew, Duration::from_secs(2)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {ew}: {e}\n{}",
            diagnostics(&cluster, "istio-system")
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A control-plane image that exits at start (the test app's image under the control plane's
    // name: it refuses the control plane's arguments). Ready turns False with the pod's reason.
    cluster.node_ctr(&[
        "images",
        "tag",
        "skein.local/skein/bookinfo-app:dev",
        "skein.local/skein/skein-controlplane:crash",
    ]);
    cluster.node_ctr(&["images", "tag", "skein.local/skein/skein-proxy:dev", "skein.local/skein/skein-proxy:crash"]);
    kubectl_ok(&cluster, &["patch", "mcp", "default", "--type=merge", "-p", r#"{"spec":{"tag":"crash"}}"#]);
    let (_, message) = wait_ready(&cluster, "Ready=False naming the crashing pod", |s, m| {
        s == "False" && m.contains("controlPlane (pod skein-controlplane-") && m.contains("exit code")
    })
    .await;
    assert!(message.contains("container discovery"), "{message}");
}

/// A pod running the test app (`args` after the image's entrypoint), and its address once Ready.
fn app_pod(cluster: &Cluster, name: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\nspec:\n  containers:\n  - name: app\n    image: skein.local/skein/bookinfo-app:dev\n    args: [{}]\n    securityContext: {{runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n",
        args.join(", ")
    ));
    let out = cluster.kubectl(&["wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=90s"], None);
    assert!(out.status.success(), "pod {name} not ready\n{}", diagnostics(cluster, "default"));
    kubectl_ok(cluster, &["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
}

/// `name`'s Service of type LoadBalancer: (ClusterIP, LoadBalancer address) once assigned.
fn load_balancer(cluster: &Cluster, name: &str) -> (String, String) {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 9080}}]\n"
    ));
    let start = Instant::now();
    loop {
        let jsonpath = "jsonpath={.spec.clusterIP} {.status.loadBalancer.ingress[0].ip}";
        let out = kubectl_ok(cluster, &["get", "service", name, "-o", jsonpath]);
        if let Some((ip, lb)) = out.trim().split_once(' ') {
            return (ip.to_string(), lb.to_string());
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{name} got no LoadBalancer address: {out:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_on_separate_networks_reach_only_each_others_load_balancers() {
    // a and c share network "east"; b is alone on "west".
    let a = Cluster::start_real_on_network("neta", "east").await.expect("cluster a");
    let b = Cluster::start_real_on_network("netb", "west").await.expect("cluster b");
    let c = Cluster::start_real_on_network("netc", "east").await.expect("cluster c");
    let b_pod = app_pod(&b, "server", &["details", "v1", "0.0.0.0:9080"]);
    let (b_cluster_ip, b_lb) = load_balancer(&b, "server");
    let c_pod = app_pod(&c, "server", &["details", "v3", "0.0.0.0:9080"]);
    assert!(b_pod.starts_with("198.18.") && c_pod.starts_with("198.18.") && b_pod != c_pod, "{b_pod} {c_pod}");
    let targets = [
        format!("b-pod={b_pod}:9080"),
        format!("b-service={b_cluster_ip}:80"),
        format!("b-lb={b_lb}:80"),
        format!("c-pod={c_pod}:9080"),
    ];
    let mut args = vec!["productpage", "v1", "0.0.0.0:9080"];
    args.extend(targets.iter().map(String::as_str));
    let client = app_pod(&a, "client", &args);

    // The client pod calls each target in turn (5 s timeout each) and reports what answered.
    let (status, body) =
        get_within(format!("{client}:9080").parse().unwrap(), "/", None, Duration::from_secs(30)).unwrap();
    assert_eq!(status, 200, "{body}");
    let calls = &body["calls"];
    assert_eq!(calls["b-lb"]["status"], 200, "another network's LoadBalancer is reachable: {body}");
    assert_eq!(calls["b-lb"]["body"]["version"], "v1");
    assert_eq!(calls["c-pod"]["status"], 200, "the same network's pods are reachable: {body}");
    assert_eq!(calls["c-pod"]["body"]["version"], "v3");
    for hidden in ["b-pod", "b-service"] {
        assert_eq!(calls[hidden]["status"], 0, "{hidden} must not be reachable from another network: {body}");
    }
}
