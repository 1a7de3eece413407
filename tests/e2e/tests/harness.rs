//! The harness itself: several real clusters side by side (federation needs three), each with
//! its own state, and Pods of Deployments becoming Ready through kwok; a real node is removed
//! without a trace, also after a killed run.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use skein_e2e::{Cluster, Node, eventually};

#[tokio::test]
async fn three_clusters_run_side_by_side_with_separate_state() {
    let (a, b, c) = tokio::join!(Cluster::start("fed"), Cluster::start("fed"), Cluster::start("fed"));
    let clusters = [a.unwrap(), b.unwrap(), c.unwrap()];
    let names: std::collections::BTreeSet<_> = clusters.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names.len(), 3);

    // A namespace created in one cluster exists only there.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "only-in-first"}})).unwrap();
    Api::<Namespace>::all(clusters[0].client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    for (i, cluster) in clusters.iter().enumerate() {
        let found = Api::<Namespace>::all(cluster.client.clone()).get_opt("only-in-first").await.unwrap().is_some();
        assert_eq!(found, i == 0, "cluster {i}");
    }

    // Each cluster schedules and readies Pods of its own Deployments.
    for cluster in &clusters {
        let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}}});
        api.patch("web", &PatchParams::apply("test"), &Patch::Apply(d)).await.unwrap();
    }
    for cluster in &clusters {
        let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
        eventually("Deployment available through kwok", Duration::from_secs(60), || async {
            (api.get("web").await.ok()?.status?.available_replicas? == 2).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn garbage_collector_removes_dependents_of_a_deleted_owner() {
    let cluster = Cluster::start("gc").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "owner"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "owner"}},
            "template": {"metadata": {"labels": {"app": "owner"}}, "spec": {"containers": [{"name": "c", "image": "c"}]}}}});
    api.patch("owner", &PatchParams::apply("test"), &Patch::Apply(d)).await.unwrap();
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    eventually("ReplicaSet created", Duration::from_secs(30), || async {
        rs.list(&Default::default()).await.ok()?.items.first().map(|_| ())
    })
    .await;
    api.delete("owner", &Default::default()).await.unwrap();
    eventually("ReplicaSet collected", Duration::from_secs(60), || async {
        rs.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}

/// What a real node leaves on the host, found by its slot: its network namespace, its link,
/// mounts under its directories, processes that name its containerd, pod logs.
fn node_leftovers(slot: &str, cluster_dir: &std::path::Path) -> Vec<String> {
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh").args(["-c", cmd]).output().expect("sh");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let run_dir = format!("/run/skein/node-{slot}");
    let checks = [
        ("netns", sh(&format!("ip netns list | grep -w skein-node-{slot} || true"))),
        ("link", sh(&format!("ip -o link show sknode{slot} 2>/dev/null || true"))),
        (
            "mounts",
            sh(&format!("findmnt -rn -o TARGET | grep -e '^{run_dir}' -e '^{}' || true", cluster_dir.display())),
        ),
        // `[/]`: the pattern must not match the shell that runs pgrep.
        ("processes", sh(&format!("pgrep -af -- '[/]run/skein/node-{slot}/' || true"))),
        ("isolation rules", sh(&format!("iptables -w 5 -S SKEIN-ISOLATE 2>/dev/null | grep -w sknode{slot} || true"))),
    ];
    checks.into_iter().filter(|(_, found)| !found.is_empty()).map(|(what, found)| format!("{what}: {found}")).collect()
}

#[tokio::test]
async fn a_real_node_is_removed_completely_even_after_a_killed_run() {
    let cluster = Cluster::start_with("left", Node::Real).await.expect("cluster with a real node");
    // A running pod: a sandbox, mounts, a veth, a shim.
    cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: default}\nspec:\n  containers:\n  - {name: app, image: skein.local/skein/bookinfo-app:dev, args: [details, v1, \"0.0.0.0:9080\"]}\n");
    let out = cluster.kubectl(&["wait", "--for=condition=Ready", "pod/app", "--timeout=90s"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = cluster.scratch_dir();
    let slot = std::fs::read_to_string(dir.join("slot")).unwrap().trim().to_string();
    assert!(!node_leftovers(&slot, &dir).is_empty(), "a running node must be visible to the check");

    // A killed run: every process the cluster recorded dies at once; shims and pods stay.
    for pid in std::fs::read_dir(dir.join("pids")).unwrap() {
        let pid = std::fs::read_to_string(pid.unwrap().path()).unwrap();
        let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        // SIGKILL is asynchronous: a many-threaded process takes a moment to be gone.
        let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        eventually("killed process gone", Duration::from_secs(10), || {
            let gone = !proc.exists();
            async move { gone.then_some(()) }
        })
        .await;
    }
    // The next `up` under the same name takes the leftovers over and starts afresh.
    cluster.up_again().expect("up after a killed run");
    let out = cluster.kubectl(&["get", "pods", "-A", "-o", "name"], None);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.is_empty(), "a fresh cluster: {stdout} {stderr}");
    let slot = std::fs::read_to_string(dir.join("slot")).unwrap().trim().to_string();
    drop(cluster);
    let left = node_leftovers(&slot, &dir);
    assert!(left.is_empty(), "down left {left:?}");
}
