//! Status of a `MeshControlPlane`: typed conditions with stable transition times, and readiness of
//! each installed component read from its Deployment.

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use skein_api::{
    ComponentStatus,
    conditions::{ConditionType, Reason},
};

/// A condition to record; `lastTransitionTime` is filled in by [`upsert_condition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Condition type.
    pub type_: ConditionType,
    /// Whether it holds.
    pub status: bool,
    /// Why.
    pub reason: Reason,
    /// Human-readable detail.
    pub message: String,
}

/// Whether `conditions` has a condition of `type_`.
pub fn has_condition(conditions: &[Condition], type_: ConditionType) -> bool {
    conditions.iter().any(|c| c.type_ == type_.as_str())
}

/// Sets a condition in `conditions`. `lastTransitionTime` changes only when the status flips, so
/// re-asserting the same state writes nothing new.
pub fn upsert_condition(conditions: &mut Vec<Condition>, update: ConditionUpdate, generation: Option<i64>, now: Time) {
    let status = if update.status { "True" } else { "False" }.to_string();
    let existing = conditions.iter().position(|c| c.type_ == update.type_.as_str());
    let last_transition_time = match existing {
        Some(i) if conditions[i].status == status => conditions[i].last_transition_time.clone(),
        _ => now,
    };
    let cond = Condition {
        type_: update.type_.to_string(),
        status,
        reason: update.reason.as_str().to_string(),
        message: update.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
}

/// Readiness of one component from its Deployment (absent: not ready).
///
/// Ready means the Deployment controller has seen the current spec and every desired replica is
/// updated and available, the same rule `kubectl rollout status` applies.
pub fn component_status(name: &str, deployment: Option<&Deployment>) -> ComponentStatus {
    let Some(d) = deployment else {
        return ComponentStatus { name: name.to_string(), ready: false, replicas: 0, ready_replicas: 0, message: None };
    };
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let observed = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let ready_replicas = st.ready_replicas.unwrap_or(0);
    let ready = observed
        && st.updated_replicas.unwrap_or(0) >= replicas
        && st.available_replicas.unwrap_or(0) >= replicas
        && ready_replicas >= replicas
        && st.replicas.unwrap_or(0) == replicas;
    ComponentStatus { name: name.to_string(), ready, replicas, ready_replicas, message: None }
}

/// What keeps a component's pods from being ready, in the words the kubelet used: the first
/// not-ready pod (by name) and its first container that waits (`CrashLoopBackOff`,
/// `ErrImageNeverPull`, ...) or last exited with an error, else the pod's unmet condition
/// (`Unschedulable`). `None` when every pod is ready or there is none to blame.
pub fn pod_problem(pods: &[Pod]) -> Option<String> {
    const MAX: usize = 300;
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods.into_iter().find_map(|pod| {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let status = pod.status.as_ref()?;
        let conditions = status.conditions.as_deref().unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
            return None;
        }
        let containers =
            status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        let from_container = containers.filter(|c| !c.ready).find_map(|c| {
            let state = c.state.as_ref()?;
            let detail = |reason: &str, message: Option<&str>| match message.filter(|m| !m.is_empty()) {
                Some(m) => format!("container {}: {reason}: {m}", c.name),
                None => format!("container {}: {reason}", c.name),
            };
            let last_exit = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
            if let Some(w) = &state.waiting {
                let reason = w.reason.as_deref().unwrap_or("Waiting");
                let mut text = detail(reason, w.message.as_deref());
                if let Some(code) = last_exit {
                    text.push_str(&format!(" (last exit code {code})"));
                }
                return Some(text);
            }
            let t = state.terminated.as_ref().filter(|t| t.exit_code != 0)?;
            Some(format!(
                "{} (exit code {})",
                detail(t.reason.as_deref().unwrap_or("Error"), t.message.as_deref()),
                t.exit_code
            ))
        });
        let text = from_container.or_else(|| {
            let c = conditions.iter().find(|c| c.status == "False" && c.reason.is_some())?;
            Some(format!("{}: {}", c.reason.as_deref()?, c.message.as_deref().unwrap_or_default()))
        })?;
        let mut text = format!("pod {name}: {text}");
        if text.len() > MAX {
            let cut = (0..=MAX).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn update(status: bool, reason: Reason) -> ConditionUpdate {
        ConditionUpdate { type_: ConditionType::Ready, status, reason, message: String::new() }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        upsert_condition(&mut conds, update(false, Reason::Installing), Some(1), t(100));
        upsert_condition(&mut conds, update(false, Reason::ComponentsNotReady), Some(2), t(200));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(100));
        assert_eq!(conds[0].reason, "ComponentsNotReady");
        assert_eq!(conds[0].observed_generation, Some(2));
        upsert_condition(&mut conds, update(true, Reason::ComponentsReady), Some(2), t(300));
        assert_eq!(conds[0].last_transition_time, t(300));
        assert_eq!(conds[0].status, "True");
    }

    fn deployment(generation: i64, replicas: i32, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..Default::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..Default::default() }),
            status: Some(status),
        }
    }

    #[test]
    fn deployment_is_ready_only_when_current_generation_is_fully_available() {
        let all = |n| DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(n),
            updated_replicas: Some(n),
            ready_replicas: Some(n),
            available_replicas: Some(n),
            ..Default::default()
        };
        assert!(component_status("cp", Some(&deployment(2, 2, all(2)))).ready);
        assert!(!component_status("cp", Some(&deployment(3, 2, all(2)))).ready, "spec change not yet observed");
        assert!(!component_status("cp", Some(&deployment(2, 3, all(2)))).ready, "scaling up");
        let rolling = DeploymentStatus { replicas: Some(3), ..all(2) };
        assert!(!component_status("cp", Some(&deployment(2, 2, rolling))).ready, "old pod still around");
        assert!(!component_status("cp", None).ready);
    }

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "status": status})).unwrap()
    }

    #[test]
    fn a_not_ready_pod_is_explained_by_its_containers_waiting_reason() {
        // What the kubelet reports for a control plane that exits at start.
        let crashing = pod(
            "skein-controlplane-b",
            serde_json::json!({
                "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{"name": "discovery", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
            }),
        );
        let ready =
            pod("skein-controlplane-a", serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        assert_eq!(
            pod_problem(&[crashing.clone(), ready.clone()]).unwrap(),
            "pod skein-controlplane-b: container discovery: CrashLoopBackOff: back-off 40s restarting failed container (last exit code 1)"
        );
        assert_eq!(pod_problem(&[ready]), None);
        // A missing image, and a pod that cannot be scheduled.
        let no_image = pod(
            "gw",
            serde_json::json!({"containerStatuses": [{"name": "proxy", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]}),
        );
        assert_eq!(pod_problem(&[no_image]).unwrap(), "pod gw: container proxy: ErrImageNeverPull");
        let pending = pod(
            "p",
            serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}),
        );
        assert_eq!(pod_problem(&[pending]).unwrap(), "pod p: Unschedulable: 0/1 nodes are available");
        assert_eq!(pod_problem(&[]), None);
    }
}
