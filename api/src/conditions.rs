//! Condition types and reasons of `MeshControlPlane` status, typed so the operator cannot
//! misspell one and users (and GitOps health checks) can rely on the exact strings.

use std::fmt;

/// A condition type on `MeshControlPlane.status.conditions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// Every installed component is available.
    Ready,
    /// The last reconcile applied the spec (`False` names the reason, e.g. an unknown version).
    Reconciled,
    /// The Istio API CRDs are installed and kept by Skein (`False` when another installation,
    /// e.g. Istio, owns them; Skein then uses them as they are).
    IstioCrdsManaged,
    /// Every peer in `status.remoteClusters` is read and its Services imported (`False` names
    /// the peers that are not, with their reasons). Absent without peers.
    RemoteClustersSynced,
    /// An upgrade or rollback is in progress (kstatus: InProgress). Absent otherwise.
    Reconciling,
    /// The last upgrade failed, or the spec was refused, and the operator will not retry until
    /// the spec (or what it names, e.g. the namespace) changes (kstatus: Failed). Absent
    /// otherwise.
    Stalled,
}

impl ConditionType {
    /// The type as written in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Reconciled => "Reconciled",
            ConditionType::IstioCrdsManaged => "IstioCRDsManaged",
            ConditionType::RemoteClustersSynced => "RemoteClustersSynced",
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a condition has its status (CamelCase, as Kubernetes writes reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `Ready=False` on a new object: installation has started.
    Installing,
    /// `Ready=False`: nothing is installed until the spec can be reconciled.
    NotInstalled,
    /// `Ready=True`: every component is available.
    ComponentsReady,
    /// `Ready=False`: some component is not available yet.
    ComponentsNotReady,
    /// `Reconciled=True`: the spec was applied.
    Applied,
    /// `Reconciled=False`: `spec.version`/`spec.channel` name no known release.
    InvalidVersion,
    /// `Reconciled=False`: `spec.updateStrategy` cannot be acted on (e.g. `workloadBatch`).
    InvalidUpdateStrategy,
    /// `Reconciled=False`: the root CA Secret is missing or not in Istio's `cacerts` layout.
    InvalidRootCa,
    /// `IstioCRDsManaged=True`: Skein installed the Istio API CRDs.
    Installed,
    /// `IstioCRDsManaged=False`: another installation owns the Istio API CRDs.
    OwnedByAnother,
    /// `RemoteClustersSynced=True`: every peer is synced.
    AllSynced,
    /// `RemoteClustersSynced=False`: some peer is unreachable, unauthorized, misconfigured...
    RemoteClustersNotSynced,
    /// `Reconciling=True`: a new version's control plane is starting beside (or in place of)
    /// the running one.
    WaitingForRevision,
    /// `Reconciling=True`: workloads are being restarted onto the new revision.
    MigratingWorkloads,
    /// `Reconciling=True`: a failed upgrade is being undone.
    RollingBack,
    /// `Stalled=True`: the new version's control plane was not Ready within the deadline.
    RevisionNotReady,
    /// `Stalled=True`: a migration batch was not healthy within the deadline.
    MigrationFailed,
    /// `Stalled=True`: the target would leave proxies too far behind (or ahead of) the control
    /// plane; nothing was changed.
    SkewViolation,
    /// `Stalled=True` (refused) or `Reconciled=True` with a warning: the release is end-of-life.
    EndOfLife,
    /// `Reconciled=True`: `spec.updateStrategy.paused` holds a newer version back.
    UpgradePaused,
    /// `Reconciled=True`: a newer release from the channel waits for a maintenance window
    /// (`spec.updateStrategy.maintenanceWindows`).
    OutsideMaintenanceWindow,
    /// `Reconciled=False`/`Stalled=True`: `spec.namespace` does not exist (the operator does
    /// not create namespaces; create it, as with Istio's `istio-system`).
    NamespaceNotFound,
    /// `Reconciled=False`/`Stalled=True`: `spec.namespace` is not one of the namespaces the
    /// operator was installed to manage (`--mesh-namespaces`, where its RBAC grants it a Role).
    NamespaceNotManaged,
}

impl Reason {
    /// The reason as written in status and Events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Installing => "Installing",
            Reason::NotInstalled => "NotInstalled",
            Reason::ComponentsReady => "ComponentsReady",
            Reason::ComponentsNotReady => "ComponentsNotReady",
            Reason::Applied => "Applied",
            Reason::InvalidVersion => "InvalidVersion",
            Reason::InvalidUpdateStrategy => "InvalidUpdateStrategy",
            Reason::InvalidRootCa => "InvalidRootCA",
            Reason::Installed => "Installed",
            Reason::OwnedByAnother => "OwnedByAnother",
            Reason::AllSynced => "AllSynced",
            Reason::RemoteClustersNotSynced => "RemoteClustersNotSynced",
            Reason::WaitingForRevision => "WaitingForRevision",
            Reason::MigratingWorkloads => "MigratingWorkloads",
            Reason::RollingBack => "RollingBack",
            Reason::RevisionNotReady => "RevisionNotReady",
            Reason::MigrationFailed => "MigrationFailed",
            Reason::SkewViolation => "SkewViolation",
            Reason::EndOfLife => "EndOfLife",
            Reason::UpgradePaused => "UpgradePaused",
            Reason::OutsideMaintenanceWindow => "OutsideMaintenanceWindow",
            Reason::NamespaceNotFound => "NamespaceNotFound",
            Reason::NamespaceNotManaged => "NamespaceNotManaged",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_strings_are_the_documented_ones() {
        // Users, the e2e tests and GitOps health checks match on these exact strings.
        assert_eq!(ConditionType::IstioCrdsManaged.to_string(), "IstioCRDsManaged");
        assert_eq!(Reason::InvalidRootCa.to_string(), "InvalidRootCA");
        assert_eq!(Reason::OwnedByAnother.as_str(), "OwnedByAnother");
    }
}
