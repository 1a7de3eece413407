//! Status of a `MeshControlPlane`: typed conditions with stable transition times, and readiness of
//! each installed component read from its Deployment.

use k8s_openapi::{
    api::apps::v1::Deployment,
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
        return ComponentStatus { name: name.to_string(), ready: false, replicas: 0, ready_replicas: 0 };
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
    ComponentStatus { name: name.to_string(), ready, replicas, ready_replicas }
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
}
