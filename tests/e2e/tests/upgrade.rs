//! Upgrades on a cluster with a real node, traffic flowing throughout: a `RevisionBased`
//! MeshControlPlane on 1.0.2 with Bookinfo injected is moved to 1.1.0 (the new revision starts
//! beside the old one, the tags move once it is Ready, the workloads are restarted onto it in
//! batches, the gateway follows, the old revision is removed after its grace period); then to
//! a bad release whose control plane never becomes Ready (Stalled, the tags never move, no pod
//! is restarted); then to the same release with a working control plane but sidecars that
//! never start (the first batch fails its gate: the tags, the gateway and the migrated
//! workloads go back automatically); then to the same release with proxies that refuse its
//! configs (NACK: the migration fails at once, not at its deadline, and goes back the same
//! way); then to a version the running proxies are too new for (refused with
//! `SkewViolation`, nothing changed). Zero failed requests throughout. And in place: a mesh
//! following `stable` is upgraded by an operator upgrade that brings a newer catalog (Helm),
//! then refuses the release that catalog marks end-of-life.
//!
//! Releases are the local build's images tagged with the catalog's versions in the node's
//! containerd; the bad release's control plane is the test app's image (it refuses the control
//! plane's arguments and exits). Needs the images of `hack/images.sh` (`make test-e2e`).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use skein_api::{MeshControlPlane, MeshControlPlaneStatus};
use skein_e2e::{
    Cluster, Node,
    real::{diagnostics, gitops_status, install_operator_with_helm, kubectl_ok, upgrade_operator_catalog, wait_ready},
    repo_root,
};

const NS: &str = "istio-system";
const REGISTRY: &str = skein_e2e::real::LOCAL_REGISTRY;

fn sample(name: &str) -> String {
    repo_root().join("config/samples/bookinfo").join(name).to_string_lossy().into_owned()
}

/// Tags the local build's images as release `version` in the node's containerd: the control
/// plane from `control_plane` and the proxy from `proxy` (image names under the registry;
/// `skein-controlplane` and `skein-proxy` for a good release).
fn release(cluster: &Cluster, version: &str, control_plane: &str, proxy: &str) {
    for (from, to) in [(control_plane, "skein-controlplane"), (proxy, "skein-proxy")] {
        cluster.node_ctr(&[
            "images",
            "tag",
            "--force",
            &format!("{REGISTRY}/{from}:dev"),
            &format!("{REGISTRY}/{to}:{version}"),
        ]);
    }
}

/// One GET of Bookinfo's product page through the gateway; Ok when it and every call behind
/// it answered 200.
fn productpage(lb: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&lb, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET /productpage HTTP/1.1\r\nHost: bookinfo.example\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let page: serde_json::Value = serde_json::from_str(body).map_err(|_| format!("not JSON: {out:?}"))?;
    let ok = out.starts_with("HTTP/1.1 200")
        && page["calls"]["reviews"]["status"] == 200
        && page["calls"]["details"]["status"] == 200;
    if ok { Ok(()) } else { Err(format!("{out:.400}")) }
}

/// A client sending requests continuously (one every 100 ms, for at most 15 minutes) until
/// stopped; counts answers and failures, keeping the first failures' texts.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lb: SocketAddr) -> Self {
        let (stop, ok, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(900) {
                match productpage(lb) {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        let mut errs = e.lock().unwrap();
                        if errs.len() < 10 {
                            errs.push(format!("{:?}: {err}", start.elapsed()));
                        }
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, ok, failed, errors, handle: Some(handle) }
    }

    /// (answered, failed, first failures) so far.
    fn counts(&self) -> (u64, u64, Vec<String>) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), self.errors.lock().unwrap().clone())
    }

    fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.counts()
    }
}

async fn status(cluster: &Cluster) -> MeshControlPlaneStatus {
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    api.get("default").await.unwrap().status.unwrap_or_default()
}

fn condition<'a>(
    s: &'a MeshControlPlaneStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// `Reconciling` reasons seen, each with what kstatus and Flux's kstatus made of the object
/// right then.
type Seen = Vec<(String, (String, String))>;

/// Waits (at most `secs`) until `check` holds for the MeshControlPlane's status, recording
/// every `Reconciling` reason seen on the way.
async fn until_status(
    cluster: &Cluster,
    what: &str,
    secs: u64,
    seen: &mut Seen,
    check: impl Fn(&MeshControlPlaneStatus) -> bool,
) -> MeshControlPlaneStatus {
    let start = Instant::now();
    loop {
        let s = status(cluster).await;
        if let Some(c) = condition(&s, "Reconciling").filter(|c| c.status == "True")
            && seen.last().map(|(r, _)| r) != Some(&c.reason)
        {
            seen.push((c.reason.clone(), gitops_status(cluster, &["mcp", "default"])));
        }
        if check(&s) {
            return s;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            panic!(
                "{what} not seen after {secs} s; status: {}\n{}",
                serde_json::to_string_pretty(&s).unwrap(),
                diagnostics(cluster, NS)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Bookinfo's pods: name → (revision, proxy image).
async fn bookinfo_pods(cluster: &Cluster) -> BTreeMap<String, (String, String)> {
    pods_in(cluster, "bookinfo").await
}

/// The pods of `namespace` not being deleted: name → (revision, proxy image).
async fn pods_in(cluster: &Cluster, namespace: &str) -> BTreeMap<String, (String, String)> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let list = pods.list(&ListParams::default()).await.unwrap();
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let rev = p.labels().get("istio.io/rev").cloned().unwrap_or_default();
            let spec = p.spec.as_ref().unwrap();
            let image = spec
                .containers
                .iter()
                .find(|c| c.name == "skein-proxy")
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            (p.name_any(), (rev, image))
        })
        .collect()
}

fn patch_spec(cluster: &Cluster, spec: &str) {
    kubectl_ok(cluster, &["patch", "mcp", "default", "--type=merge", "-p", &format!(r#"{{"spec":{spec}}}"#)]);
}

async fn deployments(cluster: &Cluster) -> Vec<String> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), NS);
    let list = api.list(&ListParams::default().labels("app.kubernetes.io/name=skein-controlplane")).await.unwrap();
    let mut names: Vec<String> = list.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    names
}

/// Bookinfo in namespace `bookinfo` (labelled `istio-injection=enabled`) with Istio's gateway
/// and v1 routing, available.
fn bookinfo(cluster: &Cluster) {
    kubectl_ok(cluster, &["create", "namespace", "bookinfo"]);
    kubectl_ok(cluster, &["label", "namespace", "bookinfo", "istio-injection=enabled"]);
    kubectl_ok(cluster, &["apply", "-n", "bookinfo", "-f", &sample("bookinfo.yaml")]);
    for f in ["bookinfo-gateway.yaml", "destination-rule-all.yaml", "virtual-service-all-v1.yaml"] {
        kubectl_ok(cluster, &["apply", "-n", "bookinfo", "-f", &sample(f)]);
    }
    let out = cluster.kubectl(
        &["wait", "--for=condition=Available", "deployment", "--all", "-n", "bookinfo", "--timeout=180s"],
        None,
    );
    assert!(out.status.success(), "Bookinfo did not become available\n{}", diagnostics(cluster, NS));
}

/// Namespace `tagged`, labelled `istio.io/rev=prod` (a tag of `revisionTags`), with one
/// workload, available.
fn tagged(cluster: &Cluster) {
    kubectl_ok(cluster, &["create", "namespace", "tagged"]);
    kubectl_ok(cluster, &["label", "namespace", "tagged", "istio.io/rev=prod"]);
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: echo, namespace: tagged}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  template:\n    metadata: {{labels: {{app: echo}}}}\n    spec:\n      containers: [{{name: echo, image: \"{REGISTRY}/bookinfo-app:dev\", args: [details, v1, \"0.0.0.0:9080\"], ports: [{{containerPort: 9080}}]}}]\n"
    ));
    let out = cluster.kubectl(&["rollout", "status", "deployment/echo", "-n", "tagged", "--timeout=180s"], None);
    assert!(out.status.success(), "the tagged workload did not become available\n{}", diagnostics(cluster, NS));
}

/// The ingress gateway's LoadBalancer address, once Bookinfo answers through it.
fn answering_gateway(cluster: &Cluster) -> SocketAddr {
    let lb = kubectl_ok(
        cluster,
        &["get", "service", "skein-ingressgateway", "-n", NS, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"],
    );
    let lb: SocketAddr = format!("{}:80", lb.trim()).parse().expect("a LoadBalancer address");
    let start = Instant::now();
    while let Err(e) = productpage(lb) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no Bookinfo answer through {lb}: {e}\n{}",
            diagnostics(cluster, NS)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lb
}

/// A cluster with a real node, `releases` tagged ((version, control plane image, proxy
/// image)), the operator installed with README's Helm block, and MeshControlPlane `default` with `spec` (the lines under `spec:`)
/// Ready.
async fn mesh_on(name: &str, releases: &[(&str, &str, &str)], spec: &str) -> Cluster {
    let cluster = Cluster::start_with(name, Node::Real).await.expect("cluster with a real node starts");
    for (version, control_plane, proxy) in releases {
        release(&cluster, version, control_plane, proxy);
    }
    install_operator_with_helm(&cluster);
    cluster.apply(&format!(
        "apiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {{name: default}}\nspec:\n{spec}"
    ));
    wait_ready(&cluster, "Ready=True", |s, _| s == "True").await;
    cluster
}

/// The MeshControlPlane's Events, a line each: `<type> <reason> <note>`.
fn events(cluster: &Cluster) -> String {
    kubectl_ok(
        cluster,
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.name=default,involvedObject.kind=MeshControlPlane",
            "-o",
            "jsonpath={range .items[*]}{.type} {.reason} {.note}{.message}{\"\\n\"}{end}",
        ],
    )
}

/// The image of Deployment `deploy`'s first container (in the mesh namespace).
fn image_of(cluster: &Cluster, deploy: &str) -> String {
    kubectl_ok(
        cluster,
        &["get", "deploy", deploy, "-n", NS, "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
    )
}

/// After a rollback to 1-1-0: waits for Bookinfo to be available, checks every pod and the
/// gateway run 1.1.0 on revision 1-1-0, and returns the pods.
async fn back_on_1_1_0(cluster: &Cluster) -> BTreeMap<String, (String, String)> {
    // Rolled out, not only Available: an Available Deployment may still run its old pod beside
    // the surge pod (a CI run saw 8 pods of 6 Deployments).
    let out = cluster.kubectl(&["rollout", "status", "deployment", "-n", "bookinfo", "--timeout=180s"], None);
    assert!(out.status.success(), "Bookinfo did not come back\n{}", diagnostics(cluster, NS));
    let proxy_110 = format!("{REGISTRY}/skein-proxy:1.1.0");
    let back = bookinfo_pods(cluster).await;
    assert!(back.values().all(|(rev, image)| rev == "1-1-0" && *image == proxy_110), "{back:?}");
    assert_eq!(image_of(cluster, "skein-ingressgateway"), proxy_110, "the gateway rolled back");
    back
}

const GOOD: &str = "skein-controlplane";
const PROXY: &str = "skein-proxy";

/// The two tests each run a real node and a mesh under load: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The catalog an operator upgrade brings in the in-place test: 1.1.0 reached `stable`,
/// 1.0.1 is end-of-life.
const NEWER_CATALOG: &str = "registry: registry.skein.dev/skein\nreleases:\n  - {version: 1.0.1, channel: stable, endOfLife: true}\n  - {version: 1.0.2, channel: stable}\n  - {version: 1.1.0, channel: stable}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_follower_upgrades_in_place_when_an_operator_upgrade_brings_a_newer_catalog() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Follows `stable`, whose newest release in the built-in catalog is 1.0.2. Two control
    // plane replicas: the proxies are spread over them, and the migration gate must read both.
    let spec = "  channel: stable\n  components: {controlPlane: {replicas: 2}}\n  updateStrategy: {type: InPlace, updateWorkloads: true, workloadBatch: 50%}\n";
    let cluster = mesh_on("inplace", &[("1.0.2", GOOD, PROXY), ("1.1.0", GOOD, PROXY)], spec).await;
    let s = status(&cluster).await;
    assert_eq!((s.version.as_deref(), s.channel_head.as_deref()), (Some("1.0.2"), Some("1.0.2")));
    bookinfo(&cluster);
    let proxy_102 = format!("{REGISTRY}/skein-proxy:1.0.2");
    let before = bookinfo_pods(&cluster).await;
    assert!(before.values().all(|(rev, image)| rev == "default" && *image == proxy_102), "{before:?}");
    let traffic = Traffic::start(answering_gateway(&cluster));

    // The operator is upgraded with a catalog in which 1.1.0 reached stable (README's
    // `helm upgrade` block): the mesh follows its channel on its own, in place.
    let catalog = cluster.scratch_dir().join("newer-catalog.yaml");
    std::fs::write(&catalog, NEWER_CATALOG).unwrap();
    upgrade_operator_catalog(&cluster, &catalog);
    let mut seen = Vec::new();
    let s = until_status(&cluster, "the in-place upgrade to 1.1.0 complete", 420, &mut seen, |s| {
        s.upgrade.as_ref().is_some_and(|u| u.phase == "Complete")
    })
    .await;
    assert_eq!((s.active_revision.as_deref(), s.version.as_deref()), (Some("default"), Some("1.1.0")));
    assert_eq!(s.channel_head.as_deref(), Some("1.1.0"));
    let reasons: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons, ["WaitingForRevision", "MigratingWorkloads"]);
    let u = s.upgrade.as_ref().unwrap();
    assert_eq!((u.migrated, u.remaining), (6, 0));
    let image = |deploy: &str| image_of(&cluster, deploy);
    assert_eq!(image("skein-controlplane"), format!("{REGISTRY}/skein-controlplane:1.1.0"));
    let proxy_110 = format!("{REGISTRY}/skein-proxy:1.1.0");
    assert_eq!(image("skein-ingressgateway"), proxy_110);
    assert_eq!(deployments(&cluster).await, ["skein-controlplane"]);
    let after = bookinfo_pods(&cluster).await;
    assert!(after.values().all(|(rev, image)| rev == "default" && *image == proxy_110), "{after:?}");
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), ("Current".to_string(), "Current".to_string()));

    // The release the new catalog marks end-of-life cannot be pinned: refused, nothing
    // changed, the mesh keeps serving.
    patch_spec(&cluster, r#"{"version":"1.0.1"}"#);
    let s = until_status(&cluster, "Stalled=True EndOfLife", 60, &mut seen, |s| {
        condition(s, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "EndOfLife")
    })
    .await;
    assert!(condition(&s, "Stalled").unwrap().message.contains("1.0.1 is end-of-life"), "{:?}", s.conditions);
    assert_eq!(s.version.as_deref(), Some("1.1.0"));
    assert_eq!(image("skein-controlplane"), format!("{REGISTRY}/skein-controlplane:1.1.0"));
    assert_eq!(bookinfo_pods(&cluster).await, after, "no pod restarted");
    let failed = ("Failed".to_string(), "Failed".to_string());
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), failed);

    let (ok, failed, errors) = traffic.stop();
    eprintln!("channel upgrade in place: {ok} requests answered, {failed} failed: {errors:?}");
    assert!(ok > 50, "traffic kept flowing: {ok} answered");
    assert_eq!(failed, 0, "requests failed: {errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_based_upgrade_migrates_bookinfo_stalls_on_a_bad_release_and_refuses_skew() {
    let _one = ONE_AT_A_TIME.lock().await;
    // 1.0.2, revision-based, workloads migrated two at a time; 1.2.0-rc.1's control plane is
    // the test app's image (it exits).
    let spec = "  version: 1.0.2\n  revisionTags: [prod]\n  updateStrategy:\n    type: RevisionBased\n    updateWorkloads: true\n    workloadBatch: 2\n    progressDeadlineSeconds: 120\n    inactiveRevisionDeletionGracePeriodSeconds: 10\n";
    let releases = [("1.0.2", GOOD, PROXY), ("1.1.0", GOOD, PROXY), ("1.2.0-rc.1", "bookinfo-app", PROXY)];
    let cluster = mesh_on("upgrade", &releases, spec).await;
    let s = status(&cluster).await;
    assert_eq!((s.active_revision.as_deref(), s.version.as_deref()), (Some("1-0-2"), Some("1.0.2")));
    assert_eq!(deployments(&cluster).await, ["skein-controlplane-1-0-2"]);

    bookinfo(&cluster);
    // A namespace that follows the user's tag `prod` (Istio's `istio.io/rev=<tag>`): injected
    // by the revision the tag points at, and migrated with the tag.
    tagged(&cluster);
    let proxy_102 = format!("{REGISTRY}/skein-proxy:1.0.2");
    assert_eq!(
        pods_in(&cluster, "tagged").await.into_values().collect::<Vec<_>>(),
        [("1-0-2".into(), proxy_102.clone())]
    );
    let before = bookinfo_pods(&cluster).await;
    assert!(before.values().all(|(rev, image)| rev == "1-0-2" && *image == proxy_102), "{before:?}");
    let s = status(&cluster).await;
    let r = &s.revisions[0];
    assert_eq!(
        (r.name.as_str(), r.tags.as_slice(), r.proxies),
        ("1-0-2", &["default".to_string(), "prod".to_string()][..], before.len() as i32 + 1)
    );

    // A finished Job whose pod the 1-0-2 revision injected (its sidecar exited with its work,
    // as Istio's `quitquitquit` has it): a Completed pod never holds a revision.
    kubectl_ok(&cluster, &["create", "namespace", "jobs"]);
    cluster.apply(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: done, namespace: jobs}}\nspec:\n  backoffLimit: 0\n  template:\n    metadata: {{labels: {{security.istio.io/tlsMode: istio, istio.io/rev: 1-0-2}}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: skein-proxy, image: \"{REGISTRY}/skein-proxy:1.0.2\", args: [--help]}}]\n"
    ));
    let out = cluster.kubectl(&["wait", "--for=condition=complete", "job/done", "-n", "jobs", "--timeout=120s"], None);
    assert!(out.status.success(), "the Job did not complete\n{}", diagnostics(&cluster, NS));

    let traffic = Traffic::start(answering_gateway(&cluster));

    // 1.0.2 -> 1.1.0: the new revision beside the old, tags moved, workloads migrated, the old
    // revision removed after its grace period.
    patch_spec(&cluster, r#"{"version":"1.1.0"}"#);
    let mut seen = Vec::new();
    until_status(&cluster, "revision 1-1-0 installed beside 1-0-2", 120, &mut seen, |s| s.revisions.len() == 2).await;
    let s = until_status(&cluster, "the upgrade to 1.1.0 complete and 1-0-2 removed", 420, &mut seen, |s| {
        s.upgrade.as_ref().is_some_and(|u| u.phase == "Complete") && s.revisions.iter().all(|r| r.name != "1-0-2")
    })
    .await;
    assert_eq!((s.active_revision.as_deref(), s.version.as_deref()), (Some("1-1-0"), Some("1.1.0")));
    // GitOps tools saw the upgrade in progress, then done (kstatus and Flux's fork).
    let progress = || ("InProgress".to_string(), "InProgress".to_string());
    let want: Seen = vec![("WaitingForRevision".into(), progress()), ("MigratingWorkloads".into(), progress())];
    assert_eq!(seen, want, "Reconciling reasons in order, with kstatus/flux status");
    assert!(condition(&s, "Reconciling").is_none() && condition(&s, "Stalled").is_none(), "{:?}", s.conditions);
    let current = ("Current".to_string(), "Current".to_string());
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), current);
    let u = s.upgrade.as_ref().unwrap();
    assert_eq!((u.from_revision.as_str(), u.to_revision.as_str(), u.migrated, u.remaining), ("1-0-2", "1-1-0", 7, 0));
    let proxy_110 = format!("{REGISTRY}/skein-proxy:1.1.0");
    assert_eq!(
        pods_in(&cluster, "tagged").await.into_values().collect::<Vec<_>>(),
        [("1-1-0".into(), proxy_110.clone())],
        "the prod tag moved: its namespace's workload is on 1-1-0"
    );
    assert_eq!(deployments(&cluster).await, ["skein-controlplane-1-1-0"]);
    let job_pod = kubectl_ok(
        &cluster,
        &[
            "get",
            "pods",
            "-n",
            "jobs",
            "-o",
            "jsonpath={.items[0].status.phase} {.items[0].metadata.labels.istio\\.io/rev}",
        ],
    );
    assert_eq!(job_pod, "Succeeded 1-0-2", "the Completed pod is still there and did not pin 1-0-2");
    let after = bookinfo_pods(&cluster).await;
    assert!(after.values().all(|(rev, image)| rev == "1-1-0" && *image == proxy_110), "{after:?}");
    assert!(after.keys().all(|p| !before.contains_key(p)), "every pod was replaced: {before:?} {after:?}");
    let gw = image_of(&cluster, "skein-ingressgateway");
    assert_eq!(gw, proxy_110, "the gateway follows the default tag");
    let ev = events(&cluster);
    for want in ["Normal WaitingForRevision", "Normal Migrating", "Normal RestartedWorkloads", "Normal Complete"] {
        assert!(ev.lines().any(|l| l.starts_with(want)), "`kubectl describe mcp` shows {want}: {ev}");
    }
    let (ok, failed, errors) = traffic.counts();
    eprintln!("upgrade to 1.1.0: {ok} requests answered, {failed} failed: {errors:?}");
    assert!(ok > 100, "traffic kept flowing: {ok} answered");
    assert_eq!(failed, 0, "requests failed during the upgrade: {errors:?}");

    // The bad release: its control plane never becomes Ready. Stalled once the deadline
    // passes; the tags never moved, so no pod restarts and traffic is untouched.
    let pods_110 = bookinfo_pods(&cluster).await;
    patch_spec(&cluster, r#"{"version":"1.2.0-rc.1","updateStrategy":{"progressDeadlineSeconds":20}}"#);
    let s = until_status(&cluster, "Stalled=True RevisionNotReady", 180, &mut seen, |s| {
        condition(s, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "RevisionNotReady")
    })
    .await;
    assert_eq!((s.active_revision.as_deref(), s.version.as_deref()), (Some("1-1-0"), Some("1.1.0")));
    let stalled = condition(&s, "Stalled").unwrap();
    assert!(stalled.message.contains("1-2-0-rc-1") && stalled.message.contains("1-1-0"), "{}", stalled.message);
    assert_eq!(s.upgrade.as_ref().unwrap().phase, "RolledBack");
    let failed = ("Failed".to_string(), "Failed".to_string());
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), failed, "a stalled upgrade is a failure to GitOps tools");
    let health = skein_e2e::real::argocd_health(&cluster, "default");
    assert_eq!(health.0, "Degraded", "Argo CD: {health:?}");
    // The failed revision goes after its grace period; the webhook still injects 1-1-0.
    until_status(&cluster, "revision 1-2-0-rc-1 removed", 120, &mut seen, |s| s.revisions.len() == 1).await;
    assert_eq!(deployments(&cluster).await, ["skein-controlplane-1-1-0"]);
    let hooks = kubectl_ok(
        &cluster,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "skein-sidecar-injector-default",
            "-o",
            "jsonpath={.webhooks[*].clientConfig.service.name}",
        ],
    );
    assert_eq!(hooks, "skein-controlplane-1-1-0 skein-controlplane-1-1-0 skein-controlplane-1-1-0");
    assert_eq!(bookinfo_pods(&cluster).await, pods_110, "no pod restarted for a release that never became Ready");
    // Stalled is final for this generation: it stays while nothing changes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        condition(&status(&cluster).await, "Stalled").map(|c| c.reason.clone()).as_deref(),
        Some("RevisionNotReady")
    );

    // The bad release again (a spec change: a new attempt), now with a control plane that
    // comes up but a sidecar that never starts. The tags move, the first batch never becomes
    // healthy; at its deadline the tags move back, the gateway rolls back and the migrated
    // workloads are restarted onto 1-1-0.
    release(&cluster, "1.2.0-rc.1", GOOD, "bookinfo-app");
    patch_spec(&cluster, r#"{"updateStrategy":{"progressDeadlineSeconds":40}}"#);
    let s = until_status(&cluster, "Stalled=True MigrationFailed", 300, &mut seen, |s| {
        condition(s, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "MigrationFailed")
    })
    .await;
    let message = &condition(&s, "Stalled").unwrap().message;
    assert!(message.contains("Deployment bookinfo/"), "names the unhealthy workloads: {message}");
    assert_eq!((s.active_revision.as_deref(), s.version.as_deref()), (Some("1-1-0"), Some("1.1.0")));
    let s = until_status(&cluster, "the migrated workloads back on 1-1-0", 240, &mut seen, |s| {
        s.upgrade.as_ref().is_some_and(|u| u.phase == "RolledBack" && u.remaining == 0)
    })
    .await;
    let tags: Vec<(&str, &[String])> = s.revisions.iter().map(|r| (r.name.as_str(), r.tags.as_slice())).collect();
    assert!(tags.contains(&("1-1-0", &["default".to_string(), "prod".to_string()][..])), "{tags:?}");
    // The restarted workloads were put back as `rollout undo` does: their previous
    // ReplicaSets, whose pods never stopped (the new ones never became ready), are theirs
    // again; no pod is replaced by a third ReplicaSet.
    assert_eq!(back_on_1_1_0(&cluster).await, pods_110, "the pods from before the attempt, and only them");
    let ev = events(&cluster);
    assert!(
        ev.lines().any(|l| l.starts_with("Normal RolledBackWorkloads") && l.contains("Deployment bookinfo/")),
        "{ev}"
    );
    assert!(ev.lines().any(|l| l.starts_with("Warning MigrationFailed") && l.contains("not healthy")), "{ev}");
    assert!(
        ev.lines().any(|l| l.starts_with("Warning RevisionNotReady") && l.contains("not Ready within 20s")),
        "{ev}"
    );
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), failed);

    // Once more, now with proxies that start but refuse every config of the new revision
    // (a limit of 1 KiB, SKEIN_MAX_CONFIG_BYTES in the image): Ready never comes, and the
    // control plane's report names the NACKs. The migration fails at once, long before its
    // 600 s deadline, and everything goes back as before.
    // The failed revision goes first, so that no pod of the previous attempt remains.
    until_status(&cluster, "revision 1-2-0-rc-1 removed again", 120, &mut seen, |s| s.revisions.len() == 1).await;
    release(&cluster, "1.2.0-rc.1", GOOD, "skein-proxy-tight");
    let pods_before = bookinfo_pods(&cluster).await;
    let started = Instant::now();
    patch_spec(&cluster, r#"{"updateStrategy":{"progressDeadlineSeconds":600}}"#);
    let s = until_status(&cluster, "Stalled=True MigrationFailed on refused configs", 240, &mut seen, |s| {
        condition(s, "Stalled").is_some_and(|c| {
            c.status == "True" && c.reason == "MigrationFailed" && c.message.contains("refused the config")
        })
    })
    .await;
    let took = started.elapsed();
    let message = &condition(&s, "Stalled").unwrap().message;
    assert!(
        message.contains("revision 1-2-0-rc-1 (NACK)") && message.contains("config larger than 1024 bytes"),
        "names the refusing proxies and their reason: {message}"
    );
    assert!(took < Duration::from_secs(300), "failed on the NACKs, not at the deadline: {took:?}");
    eprintln!("refused configs: stalled {took:?} after the spec change: {message}");
    let s = until_status(&cluster, "the migrated workloads back on 1-1-0 after the NACKs", 240, &mut seen, |s| {
        s.upgrade.as_ref().is_some_and(|u| u.phase == "RolledBack" && u.remaining == 0)
    })
    .await;
    let recorded = s.upgrade.as_ref().and_then(|u| u.message.clone()).unwrap_or_default();
    assert!(recorded.contains("(NACK)"), "status.upgrade says why: {recorded}");
    assert_eq!(back_on_1_1_0(&cluster).await, pods_before, "put back: the pods from before the attempt");

    // Back to a 1.0 control plane under 1.1 proxies: refused, nothing installed.
    patch_spec(&cluster, r#"{"version":"1.0.2"}"#);
    let s = until_status(&cluster, "Stalled=True SkewViolation", 60, &mut seen, |s| {
        condition(s, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "SkewViolation")
    })
    .await;
    let message = &condition(&s, "Stalled").unwrap().message;
    assert!(message.contains("bookinfo/productpage-v1-"), "names the blocking workloads: {message}");
    assert_eq!(s.active_revision.as_deref(), Some("1-1-0"));
    assert!(!deployments(&cluster).await.iter().any(|d| d.ends_with("1-0-2")), "nothing installed");
    assert_eq!(gitops_status(&cluster, &["mcp", "default"]), failed);

    let (ok, failed, errors) = traffic.stop();
    eprintln!("whole test: {ok} requests answered, {failed} failed: {errors:?}");
    assert_eq!(failed, 0, "requests failed: {errors:?}");
}
