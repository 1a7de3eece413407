//! The harness itself: several real clusters side by side (federation needs three), each with
//! its own state, and Pods of Deployments becoming Ready through kwok.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use skein_e2e::{Cluster, eventually};

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
