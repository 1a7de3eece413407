//! Which control plane revisions run and which one the tags point at: a pure function from the
//! spec's target, what is installed and what the last status recorded, so every step of an
//! upgrade (waiting for the new revision, moving the tags, rolling back, removing an unused
//! revision) is decided in one place and table-tested.
//!
//! The operator keeps no memory besides the object's status: each reconcile re-plans from
//! `status.activeRevision`/`status.version` (where the mesh is), `status.upgrade` (where it was
//! going and since when) and the `Stalled` condition (a failure for this generation is final
//! until the spec changes).

use std::collections::BTreeMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use semver::Version;
use skein_api::{RevisionStatus, UpdateStrategyType, UpgradeStatus, conditions::Reason};

use crate::render::DEFAULT_REVISION;

/// `UpgradeStatus.phase` values.
pub mod phase {
    /// The new revision's control plane is starting.
    pub const WAITING: &str = "WaitingForRevision";
    /// Tags moved; workloads are being restarted onto the new revision.
    pub const MIGRATING: &str = "Migrating";
    /// The mesh is on the new revision.
    pub const COMPLETE: &str = "Complete";
    /// The upgrade failed and the mesh is back on `from`.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// The upgrade was refused before anything changed.
    pub const BLOCKED: &str = "Blocked";
}

/// Name of the revision a release is installed as with `RevisionBased` (`1.1.0` → `1-1-0`,
/// `1.2.0-rc.1` → `1-2-0-rc-1`): a label value and a DNS label.
pub fn revision_name(version: &Version) -> String {
    version.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// A revision (control plane Deployment) found in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Its `istio.io/rev`.
    pub revision: String,
    /// Release its pod template runs.
    pub version: Version,
    /// Whether every replica runs that template and is available.
    pub ready: bool,
}

/// A revision to render, at a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// Revision name.
    pub revision: String,
    /// Release it runs.
    pub version: Version,
}

/// A condition the plan asks for (absent when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Reason.
    pub reason: Reason,
    /// Message.
    pub message: String,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Update strategy.
    pub strategy: UpdateStrategyType,
    /// `spec.updateStrategy.paused`.
    pub paused: bool,
    /// The target came from a channel (or `vX.Y-latest`) and no maintenance window is open:
    /// when the next one opens. A move that has started is not held.
    pub window_closed: Option<Timestamp>,
    /// `spec.updateStrategy.updateWorkloads`.
    pub update_workloads: bool,
    /// `spec.updateStrategy.progressDeadlineSeconds`.
    pub deadline: SignedDuration,
    /// `spec.updateStrategy.inactiveRevisionDeletionGracePeriodSeconds`.
    pub grace: SignedDuration,
    /// Release the spec resolves to.
    pub target: &'a Version,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Revisions installed now.
    pub installed: &'a [Installed],
    /// Running or Pending injected pods per revision.
    pub in_use: &'a BTreeMap<String, i32>,
    /// `status.activeRevision` and `status.version` as last written.
    pub active: Option<(&'a str, &'a Version)>,
    /// `status.upgrade` as last written.
    pub upgrade: Option<&'a UpgradeStatus>,
    /// `status.revisions` as last written (for `unusedSince`).
    pub revisions: &'a [RevisionStatus],
    /// The `Stalled` condition when it is True for this generation: (reason, message).
    pub stalled: Option<(&'a str, &'a str)>,
    /// Why the target is refused before anything changes (the version skew guard, an
    /// end-of-life release; checked by the caller).
    pub refused: Option<Flag>,
    /// `revisionTags`: tags besides `default`, all following the active revision.
    pub tags: &'a [String],
    /// Now.
    pub now: Timestamp,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The revision the tags point at, and its release (gateways run its proxy image).
    pub active: Serve,
    /// Revisions to render (the active one first). Installed revisions missing here are
    /// pruned.
    pub serve: Vec<Serve>,
    /// `status.upgrade`.
    pub upgrade: Option<UpgradeStatus>,
    /// `Reconciling=True` with this reason, else absent.
    pub reconciling: Option<Flag>,
    /// `Stalled=True` with this reason, else absent.
    pub stalled: Option<Flag>,
    /// A newer version held back by `paused`.
    pub paused: Option<String>,
    /// A newer version waiting for the maintenance window that opens then.
    pub outside_window: Option<(String, Timestamp)>,
    /// `status.revisions`.
    pub revisions: Vec<RevisionStatus>,
}

impl Plan {
    /// Whether workload migration runs in rollback mode: everything not on the active revision
    /// is restarted at once, without a health gate.
    pub fn rolling_back(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.phase == phase::ROLLED_BACK)
    }

    /// A migration batch failed its gate: the tags go back to the revision the upgrade came
    /// from, and the workloads already moved follow them (see [`Plan::rolling_back`]).
    pub fn roll_back(&mut self, message: String) {
        let Some(u) = self.upgrade.as_mut() else { return };
        let Ok(version) = Version::parse(&u.from_version) else { return };
        let from = Serve { revision: u.from_revision.clone(), version };
        u.phase = phase::ROLLED_BACK.into();
        u.message = Some(message.clone());
        self.serve.retain(|s| s.revision != from.revision);
        self.serve.insert(0, from.clone());
        self.active = from;
        self.stalled = Some(Flag { reason: Reason::MigrationFailed, message });
        self.reconciling = None;
        // Every tag moves with `default` to the revision the mesh returns to.
        let mut tags: Vec<String> = self.revisions.iter_mut().flat_map(|r| r.tags.drain(..)).collect();
        if tags.is_empty() {
            tags.push(DEFAULT_REVISION.to_string());
        }
        if let Some(r) = self.revisions.iter_mut().find(|r| r.name == self.active.revision) {
            r.tags = tags;
        }
    }

    /// Whether workloads should be migrated now (tags moved, or moved back).
    pub fn migrating(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.phase == phase::MIGRATING || u.phase == phase::ROLLED_BACK)
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// The revision the target release is installed as.
pub fn target_revision(strategy: UpdateStrategyType, target: &Version) -> String {
    match strategy {
        UpdateStrategyType::InPlace => DEFAULT_REVISION.to_string(),
        UpdateStrategyType::RevisionBased => revision_name(target),
    }
}

/// Plans one reconcile. See the module documentation.
pub fn plan(input: &Input<'_>) -> Plan {
    let target = Serve { revision: target_revision(input.strategy, input.target), version: input.target.clone() };
    let installed = |rev: &str| input.installed.iter().find(|i| i.revision == rev);
    // Where the mesh is: the recorded active revision, while it is installed.
    let current = input
        .active
        .filter(|(rev, _)| installed(rev).is_some())
        .map(|(rev, v)| Serve { revision: rev.to_string(), version: v.clone() });

    let mut out = Plan {
        active: target.clone(),
        serve: vec![target.clone()],
        upgrade: input.upgrade.cloned(),
        reconciling: None,
        stalled: None,
        paused: None,
        outside_window: None,
        revisions: Vec::new(),
    };
    match current {
        // Nothing installed yet (or the record is gone): install the target and point at it.
        None => {}
        // Steady, or the tags already moved: finish the migration if one is running.
        Some(cur) if cur == target => {
            if let Some(u) = out.upgrade.as_mut()
                && u.phase == phase::MIGRATING
            {
                out.reconciling = Some(Flag {
                    reason: Reason::MigratingWorkloads,
                    message: format!("restarting workloads onto revision {} ({})", u.to_revision, u.to_version),
                });
            }
        }
        Some(cur) => {
            let same_move = |u: &&UpgradeStatus| {
                u.from_revision == cur.revision
                    && u.from_version == cur.version.to_string()
                    && u.to_revision == target.revision
                    && u.to_version == target.version.to_string()
            };
            let recorded = input.upgrade.filter(same_move).cloned();
            // A move that ended (rolled back, blocked) is tried afresh once the spec changes:
            // its deadline counts from the new attempt.
            let existing = recorded.clone().filter(|u| u.phase == phase::WAITING || u.phase == phase::MIGRATING);
            let new_move = |phase: &str| UpgradeStatus {
                from_revision: cur.revision.clone(),
                from_version: cur.version.to_string(),
                to_revision: target.revision.clone(),
                to_version: target.version.to_string(),
                phase: phase.to_string(),
                started_at: time(input.now),
                migrated: 0,
                remaining: 0,
                message: None,
            };
            out.active = cur.clone();
            out.serve = vec![cur.clone()];
            if let Some((reason, message)) = input.stalled {
                // Failed for this generation: stay where the mesh is until the spec changes.
                out.stalled = Some(Flag { reason: reason_of(reason), message: message.to_string() });
                out.upgrade = recorded.or(out.upgrade);
                if out.upgrade.as_ref().is_some_and(|u| u.phase == phase::ROLLED_BACK) {
                    out.reconciling = None;
                }
            } else if input.paused {
                out.paused = Some(target.version.to_string());
            } else if let Some(opens) = input.window_closed.filter(|_| existing.is_none()) {
                out.outside_window = Some((target.version.to_string(), opens));
            } else if let Some(why) = &input.refused {
                let mut u = existing.unwrap_or_else(|| new_move(phase::BLOCKED));
                u.phase = phase::BLOCKED.into();
                u.message = Some(why.message.clone());
                out.upgrade = Some(u);
                out.stalled = Some(why.clone());
            } else {
                let mut u = existing.unwrap_or_else(|| new_move(phase::WAITING));
                let new = installed(&target.revision).filter(|i| i.version == target.version);
                if new.is_some_and(|i| i.ready) {
                    // The new revision is Ready: the tags move to it.
                    u.phase = if input.update_workloads { phase::MIGRATING } else { phase::COMPLETE }.into();
                    out.active = target.clone();
                    out.serve = vec![target.clone()];
                    if u.phase == phase::MIGRATING {
                        out.reconciling = Some(Flag {
                            reason: Reason::MigratingWorkloads,
                            message: format!("restarting workloads onto revision {} ({})", u.to_revision, u.to_version),
                        });
                    }
                } else if input.now.duration_since(u.started_at.0) > input.deadline {
                    // Not Ready in time: the tags never moved; an in-place rollout is undone.
                    let message = format!(
                        "revision {} ({}) was not Ready within {}s; the mesh stays on revision {} ({})",
                        target.revision,
                        target.version,
                        input.deadline.as_secs(),
                        cur.revision,
                        cur.version
                    );
                    u.phase = phase::ROLLED_BACK.into();
                    u.message = Some(message.clone());
                    out.stalled = Some(Flag { reason: Reason::RevisionNotReady, message });
                } else {
                    out.reconciling = Some(Flag {
                        reason: Reason::WaitingForRevision,
                        message: format!(
                            "waiting for revision {} ({}) to become Ready before moving the tags from {} ({})",
                            target.revision, target.version, cur.revision, cur.version
                        ),
                    });
                    match input.strategy {
                        // Beside the old one; in place it replaces it (same Deployment).
                        UpdateStrategyType::RevisionBased => out.serve.push(target.clone()),
                        UpdateStrategyType::InPlace => out.serve = vec![target.clone()],
                    }
                }
                out.upgrade = Some(u);
            }
        }
    }
    keep_inactive(input, &mut out);
    out
}

/// A `Stalled` reason read back from status.
fn reason_of(s: &str) -> Reason {
    match s {
        "RevisionNotReady" => Reason::RevisionNotReady,
        "SkewViolation" => Reason::SkewViolation,
        "EndOfLife" => Reason::EndOfLife,
        _ => Reason::MigrationFailed,
    }
}

/// Adds the installed revisions that are not served but still in use, or unused for less than
/// the grace period, and writes `revisions` for status.
fn keep_inactive(input: &Input<'_>, out: &mut Plan) {
    let mut revisions = Vec::new();
    let tags = |rev: &str| -> Vec<String> {
        if rev != out.active.revision {
            return Vec::new();
        }
        std::iter::once(DEFAULT_REVISION.to_string()).chain(input.tags.iter().cloned()).collect()
    };
    for i in input.installed {
        let proxies = input.in_use.get(&i.revision).copied().unwrap_or(0);
        let served = out.serve.iter().any(|s| s.revision == i.revision);
        let mut unused_since = None;
        if !served {
            if proxies == 0 {
                let since = input
                    .revisions
                    .iter()
                    .find(|r| r.name == i.revision)
                    .and_then(|r| r.unused_since.as_ref())
                    .map_or(input.now, |t| t.0);
                if input.now.duration_since(since) >= input.grace {
                    continue; // removed: not rendered, so pruned
                }
                unused_since = Some(time(since));
            }
            out.serve.push(Serve { revision: i.revision.clone(), version: i.version.clone() });
        }
        revisions.push(RevisionStatus {
            name: i.revision.clone(),
            version: i.version.to_string(),
            ready: i.ready,
            tags: tags(&i.revision),
            proxies,
            unused_since,
        });
    }
    // A revision being installed shows before its Deployment exists.
    for s in &out.serve {
        if !revisions.iter().any(|r| r.name == s.revision) {
            revisions.push(RevisionStatus {
                name: s.revision.clone(),
                version: s.version.to_string(),
                ready: false,
                tags: tags(&s.revision),
                proxies: input.in_use.get(&s.revision).copied().unwrap_or(0),
                unused_since: None,
            });
        }
    }
    revisions.sort_by(|a, b| a.name.cmp(&b.name));
    out.revisions = revisions;
}

#[cfg(test)]
mod tests;
