//! Table tests of the upgrade planner: each step of an upgrade from the status the previous
//! step wrote.

use super::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn inst(rev: &str, version: &str, ready: bool) -> Installed {
    Installed { revision: rev.into(), version: v(version), ready }
}

struct World {
    strategy: UpdateStrategyType,
    target: Version,
    installed: Vec<Installed>,
    in_use: BTreeMap<String, i32>,
    active: Option<(String, Version)>,
    upgrade: Option<UpgradeStatus>,
    revisions: Vec<RevisionStatus>,
    stalled: Option<(String, String)>,
    refused: Option<Flag>,
    paused: bool,
    window_closed: Option<Timestamp>,
    now: Timestamp,
}

impl World {
    fn new(strategy: UpdateStrategyType, target: &str) -> Self {
        Self {
            strategy,
            target: v(target),
            installed: Vec::new(),
            in_use: BTreeMap::new(),
            active: None,
            upgrade: None,
            revisions: Vec::new(),
            stalled: None,
            refused: None,
            paused: false,
            window_closed: None,
            now: at(1000),
        }
    }

    fn plan(&self) -> Plan {
        plan(&Input {
            strategy: self.strategy,
            paused: self.paused,
            window_closed: self.window_closed,
            update_workloads: true,
            deadline: SignedDuration::from_secs(60),
            grace: SignedDuration::from_secs(30),
            target: &self.target,
            generation: Some(2),
            installed: &self.installed,
            in_use: &self.in_use,
            active: self.active.as_ref().map(|(r, v)| (r.as_str(), v)),
            upgrade: self.upgrade.as_ref(),
            revisions: &self.revisions,
            stalled: self.stalled.as_ref().map(|(r, m)| (r.as_str(), m.as_str())),
            refused: self.refused.clone(),
            tags: &["prod".to_string()],
            now: self.now,
        })
    }

    /// Records what the controller writes to status after a plan.
    fn record(&mut self, p: &Plan) {
        self.active = Some((p.active.revision.clone(), p.active.version.clone()));
        self.upgrade = p.upgrade.clone();
        self.revisions = p.revisions.clone();
        self.stalled = p.stalled.as_ref().map(|f| (f.reason.as_str().to_string(), f.message.clone()));
    }
}

fn revs(p: &Plan) -> Vec<&str> {
    p.serve.iter().map(|s| s.revision.as_str()).collect()
}

#[test]
fn revision_names_are_label_values() {
    assert_eq!(revision_name(&v("1.1.0")), "1-1-0");
    assert_eq!(revision_name(&v("1.2.0-rc.1")), "1-2-0-rc-1");
    assert_eq!(target_revision(UpdateStrategyType::InPlace, &v("1.1.0")), "default");
}

#[test]
fn a_fresh_install_serves_the_target_and_points_the_tags_at_it() {
    let w = World::new(UpdateStrategyType::RevisionBased, "1.0.2");
    let p = w.plan();
    assert_eq!(p.active, Serve { revision: "1-0-2".into(), version: v("1.0.2") });
    assert_eq!(revs(&p), ["1-0-2"]);
    assert_eq!((p.upgrade, p.reconciling, p.stalled), (None, None, None));
    assert_eq!(p.revisions.len(), 1);
    assert_eq!(p.revisions[0].tags, ["default", "prod"]);
    assert!(!p.revisions[0].ready);
}

fn on_1_0_2() -> World {
    let mut w = World::new(UpdateStrategyType::RevisionBased, "1.1.0");
    w.installed = vec![inst("1-0-2", "1.0.2", true)];
    w.active = Some(("1-0-2".into(), v("1.0.2")));
    w.in_use.insert("1-0-2".into(), 4);
    w
}

#[test]
fn revision_based_waits_for_the_new_revision_then_moves_the_tags_and_migrates() {
    let mut w = on_1_0_2();
    let p = w.plan();
    assert_eq!(p.active.revision, "1-0-2", "tags stay until the new revision is Ready");
    assert_eq!(revs(&p), ["1-0-2", "1-1-0"]);
    assert_eq!(p.reconciling.as_ref().map(|f| f.reason), Some(Reason::WaitingForRevision));
    let u = p.upgrade.clone().unwrap();
    assert_eq!(
        (u.from_revision.as_str(), u.to_revision.as_str(), u.phase.as_str()),
        ("1-0-2", "1-1-0", phase::WAITING)
    );
    assert_eq!(u.started_at.0, at(1000));
    w.record(&p);

    // Installed but not ready yet: still waiting, and the start time is kept.
    w.installed.push(inst("1-1-0", "1.1.0", false));
    w.now = at(1030);
    let p = w.plan();
    assert_eq!(p.upgrade.as_ref().unwrap().started_at.0, at(1000));
    assert_eq!(p.active.revision, "1-0-2");
    w.record(&p);

    // Ready: the tags move; the old revision stays while pods use it.
    w.installed[1].ready = true;
    w.now = at(1040);
    let p = w.plan();
    assert_eq!(p.active.revision, "1-1-0");
    assert_eq!(revs(&p), ["1-1-0", "1-0-2"]);
    assert_eq!(p.upgrade.as_ref().unwrap().phase, phase::MIGRATING);
    assert!(p.migrating() && !p.rolling_back());
    assert_eq!(p.reconciling.as_ref().map(|f| f.reason), Some(Reason::MigratingWorkloads));
    let tags: Vec<(&str, Vec<String>)> = p.revisions.iter().map(|r| (r.name.as_str(), r.tags.clone())).collect();
    assert_eq!(tags, [("1-0-2", vec![]), ("1-1-0", vec!["default".to_string(), "prod".to_string()])]);
    w.record(&p);

    // Every pod moved: the old revision is unused since now, kept for the grace period, then
    // dropped (not served, so pruned).
    w.in_use = BTreeMap::from([("1-1-0".to_string(), 4)]);
    w.now = at(1100);
    let p = w.plan();
    let old = p.revisions.iter().find(|r| r.name == "1-0-2").unwrap();
    assert_eq!(old.unused_since.as_ref().map(|t| t.0), Some(at(1100)));
    assert_eq!(revs(&p), ["1-1-0", "1-0-2"]);
    w.record(&p);
    w.now = at(1129);
    assert_eq!(revs(&w.plan()), ["1-1-0", "1-0-2"]);
    w.now = at(1130);
    let p = w.plan();
    assert_eq!(revs(&p), ["1-1-0"]);
    assert!(p.revisions.iter().all(|r| r.name != "1-0-2"));
}

#[test]
fn a_completed_pod_does_not_count_but_a_running_one_keeps_an_inactive_revision() {
    let mut w = on_1_0_2();
    w.target = v("1.0.2");
    w.installed.push(inst("1-1-0", "1.1.0", true));
    w.in_use = BTreeMap::from([("1-1-0".to_string(), 1)]);
    w.now = at(5000);
    assert_eq!(revs(&w.plan()), ["1-0-2", "1-1-0"], "in use: kept however long");
    // The caller counts only Running/Pending pods; with none the grace period starts.
    w.in_use.clear();
    let p = w.plan();
    assert_eq!(
        p.revisions.iter().find(|r| r.name == "1-1-0").unwrap().unused_since.as_ref().map(|t| t.0),
        Some(at(5000))
    );
}

#[test]
fn a_revision_not_ready_by_the_deadline_stalls_and_the_tags_never_move() {
    let mut w = on_1_0_2();
    w.target = v("1.2.0-rc.1");
    let p = w.plan();
    w.record(&p);
    w.installed.push(inst("1-2-0-rc-1", "1.2.0-rc.1", false));
    w.now = at(1061);
    let p = w.plan();
    assert_eq!(p.active.revision, "1-0-2");
    let stalled = p.stalled.clone().unwrap();
    assert_eq!(stalled.reason, Reason::RevisionNotReady);
    assert!(stalled.message.contains("1-2-0-rc-1") && stalled.message.contains("60s"), "{}", stalled.message);
    assert_eq!(p.upgrade.as_ref().unwrap().phase, phase::ROLLED_BACK);
    assert_eq!(revs(&p), ["1-0-2", "1-2-0-rc-1"], "the failed revision is only removed after the grace period");
    assert!(p.reconciling.is_none());
    w.record(&p);

    // The next reconciles of the same generation stay stalled, even if it becomes Ready.
    w.installed[1].ready = true;
    w.now = at(2000);
    let p = w.plan();
    assert_eq!(p.active.revision, "1-0-2");
    assert_eq!(p.stalled.as_ref().map(|f| f.reason), Some(Reason::RevisionNotReady));
    assert_eq!(revs(&p), ["1-0-2"], "unused past the grace period: removed");
    w.record(&p);

    // The spec changes (a new generation, the same target): a fresh attempt, its deadline
    // counting from now.
    w.installed.truncate(1);
    w.stalled = None;
    let p = w.plan();
    assert!(p.stalled.is_none());
    let u = p.upgrade.clone().unwrap();
    assert_eq!((u.phase.as_str(), u.started_at.0), (phase::WAITING, at(2000)));
    assert_eq!(revs(&p), ["1-0-2", "1-2-0-rc-1"]);
}

#[test]
fn in_place_rollback_renders_the_old_version_again() {
    let mut w = World::new(UpdateStrategyType::InPlace, "1.2.0-rc.1");
    w.installed = vec![inst("default", "1.0.2", true)];
    w.active = Some(("default".into(), v("1.0.2")));
    let p = w.plan();
    assert_eq!(p.serve, [Serve { revision: "default".into(), version: v("1.2.0-rc.1") }], "rolled in place");
    assert_eq!(p.active.version, v("1.0.2"), "status keeps the version that works until the new one is Ready");
    w.record(&p);
    w.installed = vec![inst("default", "1.2.0-rc.1", false)];
    w.now = at(1061);
    let p = w.plan();
    assert_eq!(p.serve, [Serve { revision: "default".into(), version: v("1.0.2") }]);
    assert_eq!(p.stalled.map(|f| f.reason), Some(Reason::RevisionNotReady));
}

#[test]
fn in_place_upgrade_completes_when_the_rollout_is_ready() {
    let mut w = World::new(UpdateStrategyType::InPlace, "1.1.0");
    w.installed = vec![inst("default", "1.1.0", true)];
    w.active = Some(("default".into(), v("1.0.2")));
    let p = w.plan();
    assert_eq!(p.active, Serve { revision: "default".into(), version: v("1.1.0") });
    assert_eq!(p.upgrade.unwrap().phase, phase::MIGRATING);
}

#[test]
fn a_failed_batch_rolls_the_tags_back_to_the_previous_revision() {
    let mut w = on_1_0_2();
    w.installed.push(inst("1-1-0", "1.1.0", true));
    w.upgrade = Some(UpgradeStatus {
        from_revision: "1-0-2".into(),
        from_version: "1.0.2".into(),
        to_revision: "1-1-0".into(),
        to_version: "1.1.0".into(),
        phase: phase::WAITING.into(),
        started_at: Time(at(990)),
        migrated: 0,
        remaining: 0,
        message: None,
    });
    let mut p = w.plan();
    assert_eq!(p.active.revision, "1-1-0");
    p.roll_back("Deployment bookinfo/reviews-v1 not healthy".into());
    assert_eq!(p.active, Serve { revision: "1-0-2".into(), version: v("1.0.2") });
    assert_eq!(revs(&p)[0], "1-0-2");
    assert!(p.rolling_back() && p.migrating());
    assert_eq!(p.stalled.as_ref().map(|f| f.reason), Some(Reason::MigrationFailed));
    let tags: Vec<(&str, Vec<String>)> = p.revisions.iter().map(|r| (r.name.as_str(), r.tags.clone())).collect();
    assert_eq!(tags, [("1-0-2", vec!["default".to_string(), "prod".to_string()]), ("1-1-0", vec![])]);
    w.record(&p);
    // Stays rolled back for this generation.
    let p = w.plan();
    assert_eq!(p.active.revision, "1-0-2");
    assert!(p.rolling_back());
    assert_eq!(p.stalled.map(|f| f.reason), Some(Reason::MigrationFailed));
}

#[test]
fn paused_holds_the_newer_version_and_skew_blocks_it() {
    let mut w = on_1_0_2();
    w.paused = true;
    let p = w.plan();
    assert_eq!((p.active.revision.as_str(), revs(&p), p.paused.as_deref()), ("1-0-2", vec!["1-0-2"], Some("1.1.0")));
    assert!(p.upgrade.is_none() && p.stalled.is_none());

    w.paused = false;
    w.target = v("1.2.0-rc.1");
    w.refused =
        Some(Flag { reason: Reason::SkewViolation, message: "would leave 4 running proxies two minors behind".into() });
    let p = w.plan();
    assert_eq!(revs(&p), ["1-0-2"], "nothing new installed");
    assert_eq!(p.stalled.map(|f| f.reason), Some(Reason::SkewViolation));
    assert_eq!(p.upgrade.unwrap().phase, phase::BLOCKED);
}

#[test]
fn a_closed_maintenance_window_holds_a_move_that_has_not_started_only() {
    let mut w = on_1_0_2();
    w.window_closed = Some(at(5000));
    let p = w.plan();
    assert_eq!((p.active.revision.as_str(), revs(&p)), ("1-0-2", vec!["1-0-2"]));
    assert_eq!(p.outside_window, Some(("1.1.0".to_string(), at(5000))));
    assert!(p.upgrade.is_none() && p.stalled.is_none() && p.reconciling.is_none());

    // The window opens: the move starts; it goes on when the window closes again.
    w.window_closed = None;
    let p = w.plan();
    assert_eq!(revs(&p), ["1-0-2", "1-1-0"]);
    w.record(&p);
    w.window_closed = Some(at(90_000));
    let p = w.plan();
    assert_eq!((revs(&p), p.outside_window.clone()), (vec!["1-0-2", "1-1-0"], None), "a started move is not held");
}

#[test]
fn a_first_install_is_never_held_by_a_maintenance_window() {
    let mut w = World::new(UpdateStrategyType::RevisionBased, "1.1.0");
    w.window_closed = Some(at(5000));
    let p = w.plan();
    assert_eq!((p.active.revision.as_str(), revs(&p)), ("1-1-0", vec!["1-1-0"]));
    assert_eq!(p.outside_window, None);
}
