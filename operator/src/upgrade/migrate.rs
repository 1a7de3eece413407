//! Workload migration, pure: which workloads to restart next onto the active revision, and
//! whether the batch in flight passed its health gate.
//!
//! A workload is restarted by stamping its pod template with the revision it is restarted for
//! and when ([`RESTARTED_FOR`], [`RESTARTED_AT`]), as `kubectl rollout restart` does; the stamp
//! is also the only record of a batch in flight, so an operator restart resumes where it was.
//! The stamp the template had before is kept on the workload itself ([`RESTARTED_FROM`], not
//! in the template): rolling back puts it back ([`Step::undo`]), so the template is again the
//! one of the workload's previous ReplicaSet, which the Deployment controller scales back up,
//! as `kubectl rollout undo` does, instead of rolling out a third one.
//! The gate of a batch: every workload of it rolled out (all replicas updated and available),
//! every one of its pods injected by the active revision, and every one of their proxies
//! connected to that revision's control plane and acknowledging its config, as the control
//! plane reports it ([`Sync`], its `/debug/syncz`). A proxy of the revision that refuses a
//! config (a NACK: Istio's `pilot_total_xds_rejects` rises) fails the migration at once rather
//! than at the deadline: it keeps running its last good config, which readiness cannot show.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Pod-template annotation: the revision a workload was last restarted for.
pub const RESTARTED_FOR: &str = "mesh.skein.dev/restarted-for";
/// Pod-template annotation: when (RFC 3339).
pub const RESTARTED_AT: &str = "mesh.skein.dev/restarted-at";
/// Workload annotation: the template's stamp before the operator's last restart of it, as
/// JSON [`Stamp`] (with `to`, the revision restarted for).
pub const RESTARTED_FROM: &str = "mesh.skein.dev/restarted-from";
/// Workload annotation: the revision a rollback put the workload's template back for.
pub const ROLLED_BACK_TO: &str = "mesh.skein.dev/rolled-back-to";

/// A pod template's restart stamp, as the annotations hold it (absent: never restarted).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// [`RESTARTED_FOR`].
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// [`RESTARTED_AT`], verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// What [`RESTARTED_FROM`] holds: the stamp before a restart for `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Previous {
    /// The stamp the template had.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// The revision of the restart that replaced it.
    pub to: String,
}

/// Kind of a workload the operator restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl Kind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }
}

/// What the migration needs to know of one workload whose pods the mesh injected, in a
/// namespace that follows a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its pod template's [`RESTARTED_FOR`].
    pub restarted_for: Option<String>,
    /// Its pod template's [`RESTARTED_AT`].
    pub restarted_at: Option<Timestamp>,
    /// The same, as written (a rollback puts it back byte for byte).
    pub restarted_at_verbatim: Option<String>,
    /// Its [`RESTARTED_FROM`], when it describes the template's current stamp.
    pub restarted_from: Option<Previous>,
    /// Its [`ROLLED_BACK_TO`].
    pub rolled_back_to: Option<String>,
    /// Every replica updated to the current template and available.
    pub rolled_out: bool,
    /// Running or Pending pods not on the active revision (another `istio.io/rev`, or another
    /// proxy image); pods being deleted do not count.
    pub stale_pods: usize,
    /// Its pods on the active revision, as their proxies name themselves to the control plane
    /// (`<pod>.<namespace>`).
    pub proxies: Vec<String>,
}

impl Workload {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// One proxy as the active revision's control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxySync {
    /// It has acknowledged a config of this control plane (it runs one).
    pub acked: bool,
    /// Its last answer refused a config, for this reason.
    pub nack: Option<String>,
}

/// What the active revision's control plane reports of its connected proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync {
    /// Every connected proxy, by `<pod>.<namespace>`.
    Known(BTreeMap<String, ProxySync>),
    /// The report could not be read, for this reason: no batch passes its gate meanwhile.
    Unknown(String),
}

impl Sync {
    /// Reads the control plane's `/debug/syncz` (node id → `{sent, acked, nack}`); a node id
    /// is Istio's `<type>~<ip>~<pod>.<namespace>~<domain>`.
    pub fn from_syncz(body: &str) -> Sync {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            acked: String,
            #[serde(default)]
            nack: Option<String>,
        }
        match serde_json::from_str::<BTreeMap<String, Entry>>(body) {
            Ok(table) => Sync::Known(
                table
                    .into_iter()
                    .map(|(id, e)| {
                        let proxy = id.split('~').nth(2).unwrap_or(&id).to_string();
                        (proxy, ProxySync { acked: !e.acked.is_empty(), nack: e.nack })
                    })
                    .collect(),
            ),
            Err(e) => Sync::Unknown(format!("its /debug/syncz is not a sync table: {e}")),
        }
    }

    /// The reports of every replica of a control plane together (each proxy is connected to
    /// one replica); one unreadable report makes the whole unknown.
    pub fn merge(self, other: Sync) -> Sync {
        match (self, other) {
            (Sync::Unknown(why), _) | (_, Sync::Unknown(why)) => Sync::Unknown(why),
            (Sync::Known(mut a), Sync::Known(b)) => {
                for (proxy, s) in b {
                    // Listed twice only while a proxy moves between replicas: a NACK counts.
                    let e = a.entry(proxy).or_insert_with(|| ProxySync { acked: s.acked, nack: None });
                    e.acked |= s.acked;
                    e.nack = e.nack.take().or(s.nack);
                }
                Sync::Known(a)
            }
        }
    }

    /// Every proxy of `w` connected and acknowledging; `Unknown` passes none.
    fn synced(&self, w: &Workload) -> bool {
        match self {
            Sync::Known(t) => w.proxies.iter().all(|p| t.get(p).is_some_and(|s| s.acked && s.nack.is_none())),
            Sync::Unknown(_) => false,
        }
    }

    /// The proxies whose last answer was a NACK: `<pod>.<namespace>: <reason>`.
    fn rejections(&self) -> Vec<String> {
        match self {
            Sync::Known(t) => t.iter().filter_map(|(p, s)| s.nack.as_ref().map(|why| format!("{p}: {why}"))).collect(),
            Sync::Unknown(_) => Vec::new(),
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Workloads to restart now (indexes into the input).
    pub restart: Vec<usize>,
    /// Rolling back: workloads whose template is to be put back to its stamp before the
    /// restart for the abandoned revision (indexes into the input; see [`RESTARTED_FROM`]).
    pub undo: Vec<usize>,
    /// A batch missed its deadline: the workloads that failed the gate.
    pub failed: Vec<String>,
    /// Proxies of the active revision that refused its config (`<pod>.<namespace>: <reason>`):
    /// the migration fails at once.
    pub rejected: Vec<String>,
    /// Workloads already on the active revision after a restart for it.
    pub migrated: usize,
    /// Workloads still to restart or to finish rolling out.
    pub remaining: usize,
}

/// How many workloads a batch holds: `batch` is a count or a percentage (rounded up) of
/// `total`; at least 1.
pub fn batch_size(
    batch: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: usize,
) -> Result<usize, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match batch {
        None => Ok(1),
        Some(IntOrString::Int(n)) if *n >= 1 => Ok(*n as usize),
        Some(IntOrString::Int(n)) => Err(format!("spec.updateStrategy.workloadBatch: {n} is not a positive count")),
        Some(IntOrString::String(s)) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<usize>().ok())
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| {
                    format!(
                        "spec.updateStrategy.workloadBatch: {s:?} is neither a count nor a percentage from 1% to 100%"
                    )
                })?;
            Ok((total * pct).div_ceil(100).max(1))
        }
    }
}

/// How a migration goes on.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// One batch at a time, each waiting for its gate (with `sync`, the active revision's
    /// report of its proxies) and failing after `deadline`.
    Gated {
        /// Batch size.
        batch: usize,
        /// How long a batch may take.
        deadline: SignedDuration,
        /// The active revision's control plane's report.
        sync: &'a Sync,
    },
    /// Rolling back: every stale workload is put back (restarted for the abandoned revision,
    /// with the stamp before known) or restarted, at once.
    RollingBack,
}

/// Decides the next step for `active` (the revision the tags point at).
pub fn step(workloads: &[Workload], active: &str, mode: Mode<'_>, now: Timestamp) -> Step {
    let mut out = Step::default();
    let rolling_back = matches!(mode, Mode::RollingBack);
    // Put back for `active` by a rollback: on it as much as one restarted for it.
    let stamped = |w: &Workload| {
        w.restarted_for.as_deref() == Some(active) || (rolling_back && w.rolled_back_to.as_deref() == Some(active))
    };
    // Rolling back waits for no report: the previous revision's proxies ran before.
    let synced = |w: &Workload| match mode {
        Mode::Gated { sync, .. } => sync.synced(w),
        Mode::RollingBack => true,
    };
    let done = |w: &Workload| w.rolled_out && w.stale_pods == 0 && synced(w);
    let mut in_flight = Vec::new();
    let mut todo = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        match (stamped(w), done(w)) {
            (true, true) => out.migrated += 1,
            (true, false) => in_flight.push(i),
            (false, _) if w.stale_pods > 0 => todo.push(i),
            (false, _) => {}
        }
    }
    out.remaining = in_flight.len() + todo.len();
    let Mode::Gated { batch, deadline, sync } = mode else {
        // Restarted by the operator for the revision abandoned, and what the template was
        // before is known: put back, not restarted once more.
        let undoable =
            |w: &Workload| w.restarted_from.as_ref().is_some_and(|p| w.restarted_for.as_ref() == Some(&p.to));
        (out.undo, out.restart) = todo.into_iter().partition(|&i| undoable(&workloads[i]));
        return out;
    };
    if out.remaining > 0 {
        out.rejected = sync.rejections();
        if !out.rejected.is_empty() {
            return out;
        }
    }
    if !in_flight.is_empty() {
        let late = |w: &Workload| w.restarted_at.is_none_or(|t| now.duration_since(t) > deadline);
        out.failed = in_flight.iter().map(|&i| &workloads[i]).filter(|w| late(w)).map(Workload::describe).collect();
        return out;
    }
    out.restart = todo.into_iter().take(batch).collect();
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    fn w(name: &str, restarted_for: Option<&str>, at: i64, rolled_out: bool, stale: usize) -> Workload {
        Workload {
            kind: Kind::Deployment,
            namespace: "bookinfo".into(),
            name: name.into(),
            restarted_for: restarted_for.map(str::to_string),
            restarted_at: restarted_for.map(|_| Timestamp::from_second(at).unwrap()),
            restarted_at_verbatim: None,
            restarted_from: None,
            rolled_back_to: None,
            rolled_out,
            stale_pods: stale,
            proxies: vec![format!("{name}-pod.bookinfo")],
        }
    }

    /// A report where every proxy named is connected and acknowledging.
    fn synced(names: &[&str]) -> Sync {
        Sync::Known(
            names.iter().map(|n| (format!("{n}-pod.bookinfo"), ProxySync { acked: true, nack: None })).collect(),
        )
    }

    fn gated(batch: usize, sync: &Sync) -> Mode<'_> {
        Mode::Gated { batch, deadline: DEADLINE, sync }
    }

    const DEADLINE: SignedDuration = SignedDuration::from_secs(60);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn batches_go_one_after_another_and_each_waits_for_its_gate() {
        let ws = [w("a", None, 0, true, 1), w("b", None, 0, true, 2), w("c", None, 0, true, 1)];
        let all = synced(&["a", "b", "c"]);
        let s = step(&ws, "1-1-0", gated(2, &all), at(100));
        assert_eq!((s.restart.clone(), s.remaining, s.migrated), (vec![0, 1], 3, 0));
        // a and b restarted; b still rolling: nothing new starts.
        let ws = [w("a", Some("1-1-0"), 100, true, 0), w("b", Some("1-1-0"), 100, false, 1), w("c", None, 0, true, 1)];
        let s = step(&ws, "1-1-0", gated(2, &all), at(130));
        assert_eq!((s.restart.clone(), s.failed.clone(), s.migrated, s.remaining), (vec![], vec![], 1, 2));
        // b done: c goes.
        let ws = [w("a", Some("1-1-0"), 100, true, 0), w("b", Some("1-1-0"), 100, true, 0), w("c", None, 0, true, 1)];
        let s = step(&ws, "1-1-0", gated(2, &all), at(140));
        assert_eq!((s.restart, s.migrated, s.remaining), (vec![2], 2, 1));
    }

    #[test]
    fn a_batch_passes_only_once_its_proxies_acknowledge_the_revisions_config() {
        let ws = [w("a", Some("1-1-0"), 100, true, 0), w("b", None, 0, true, 1)];
        // a rolled out, but its proxy has not acknowledged a config of 1-1-0 yet (or is not
        // connected to it): b waits.
        let waiting = Sync::Known([("a-pod.bookinfo".to_string(), ProxySync::default())].into());
        let s = step(&ws, "1-1-0", gated(1, &waiting), at(110));
        assert_eq!((s.restart.clone(), s.migrated, s.remaining), (vec![], 0, 2));
        let s = step(&ws, "1-1-0", gated(1, &synced(&["b"])), at(110));
        assert_eq!((s.restart.clone(), s.migrated), (vec![], 0), "a not connected to 1-1-0");
        // An unreadable report passes nothing, and the batch fails at its deadline.
        let unknown = Sync::Unknown("no route".into());
        assert_eq!(step(&ws, "1-1-0", gated(1, &unknown), at(110)).restart, Vec::<usize>::new());
        assert_eq!(step(&ws, "1-1-0", gated(1, &unknown), at(161)).failed, vec!["Deployment bookinfo/a"]);
        let s = step(&ws, "1-1-0", gated(1, &synced(&["a"])), at(110));
        assert_eq!((s.restart, s.migrated), (vec![1], 1));
    }

    #[test]
    fn a_refused_config_fails_the_migration_at_once() {
        let ws = [w("a", Some("1-1-0"), 100, false, 1), w("b", None, 0, true, 1)];
        let mut table = BTreeMap::new();
        table.insert("a-pod.bookinfo".to_string(), ProxySync { acked: false, nack: Some("config too large".into()) });
        table.insert("gw.istio-system".to_string(), ProxySync { acked: true, nack: None });
        let s = step(&ws, "1-1-0", gated(1, &Sync::Known(table)), at(101));
        assert_eq!(s.rejected, vec!["a-pod.bookinfo: config too large"], "long before the deadline");
        assert!(s.restart.is_empty() && s.failed.is_empty());
        // Once everything is migrated a NACK no longer fails the (finished) migration.
        let ws = [w("a", Some("1-1-0"), 100, true, 0)];
        let table = [
            ("a-pod.bookinfo".to_string(), ProxySync { acked: true, nack: None }),
            ("gw.istio-system".to_string(), ProxySync { acked: true, nack: Some("later".into()) }),
        ];
        let s = step(&ws, "1-1-0", gated(1, &Sync::Known(table.into())), at(500));
        assert_eq!((s.rejected.len(), s.migrated, s.remaining), (0, 1, 0));
    }

    #[test]
    fn the_reports_of_every_replica_are_merged() {
        let one = |p: &str, acked: bool, nack: Option<&str>| {
            Sync::Known([(p.to_string(), ProxySync { acked, nack: nack.map(str::to_string) })].into())
        };
        let Sync::Known(t) = one("a.ns", true, None).merge(one("b.ns", false, Some("bad"))) else { panic!() };
        assert_eq!(t.len(), 2);
        assert_eq!(t["b.ns"].nack.as_deref(), Some("bad"));
        let Sync::Known(t) = one("a.ns", true, None).merge(one("a.ns", false, Some("bad"))) else { panic!() };
        assert_eq!(t["a.ns"], ProxySync { acked: true, nack: Some("bad".into()) });
        let unknown = one("a.ns", true, None).merge(Sync::Unknown("replica 2: timeout".into()));
        assert_eq!(unknown, Sync::Unknown("replica 2: timeout".into()));
    }

    #[test]
    fn the_control_planes_sync_table_is_read_by_pod() {
        let body = r#"{
          "sidecar~10.0.0.5~productpage-v1-7d9-x.bookinfo~bookinfo.svc.cluster.local": {"sent": "v2", "acked": "v1", "nack": "clusters[x]: bad", "pushes": 2},
          "router~10.0.0.6~skein-ingressgateway-5f-y.istio-system~istio-system.svc.cluster.local": {"sent": "v2", "acked": "v2", "nack": null, "pushes": 1},
          "sidecar~10.0.0.7~new.bookinfo~bookinfo.svc.cluster.local": {"sent": "v2", "acked": "", "pushes": 1}
        }"#;
        let Sync::Known(t) = Sync::from_syncz(body) else { panic!("parsed") };
        assert_eq!(
            t["productpage-v1-7d9-x.bookinfo"],
            ProxySync { acked: true, nack: Some("clusters[x]: bad".into()) }
        );
        assert_eq!(t["skein-ingressgateway-5f-y.istio-system"], ProxySync { acked: true, nack: None });
        assert_eq!(t["new.bookinfo"], ProxySync { acked: false, nack: None });
        assert!(matches!(Sync::from_syncz("<html>503</html>"), Sync::Unknown(e) if e.contains("not a sync table")));
    }

    #[test]
    fn a_batch_late_past_the_deadline_fails_naming_its_workloads() {
        // Rolled out but a pod still on the old revision (not injected by the new one) fails too.
        let ws = [w("a", Some("1-1-0"), 100, false, 1), w("b", Some("1-1-0"), 100, true, 1), w("c", None, 0, true, 1)];
        let all = synced(&["a", "b", "c"]);
        assert!(step(&ws, "1-1-0", gated(2, &all), at(160)).failed.is_empty());
        let s = step(&ws, "1-1-0", gated(2, &all), at(161));
        assert_eq!(s.failed, vec!["Deployment bookinfo/a", "Deployment bookinfo/b"]);
        assert!(s.restart.is_empty(), "nothing new starts after a failure");
    }

    #[test]
    fn rolling_back_restarts_every_stale_workload_at_once_and_leaves_the_others() {
        // Back on 1-0-2: a and b were moved to 1-1-0 (stale now); c never moved.
        let ws = [w("a", Some("1-1-0"), 100, true, 2), w("b", Some("1-1-0"), 100, true, 1), w("c", None, 0, true, 0)];
        let s = step(&ws, "1-0-2", Mode::RollingBack, at(200));
        assert_eq!((s.restart, s.remaining), (vec![0, 1], 2));
    }

    #[test]
    fn rolling_back_puts_back_the_templates_the_operator_restarted_and_waits_for_them() {
        // Back on 1-0-2 from 1-1-0: a was restarted for 1-1-0 from 1-0-2's stamp, b from no
        // stamp at all (never restarted before); c was restarted for 1-1-0 by an older operator
        // (nothing recorded); d's record is of an earlier restart (for 1-0-2), not the current.
        let from = |revision: Option<&str>, to: &str| Previous {
            stamp: Stamp {
                revision: revision.map(str::to_string),
                at: revision.map(|_| "2026-12-01T00:00:00Z".into()),
            },
            to: to.into(),
        };
        let mut ws = [
            w("a", Some("1-1-0"), 100, false, 1),
            w("b", Some("1-1-0"), 100, true, 2),
            w("c", Some("1-1-0"), 100, true, 1),
            w("d", Some("1-1-0"), 100, true, 1),
        ];
        ws[0].restarted_from = Some(from(Some("1-0-2"), "1-1-0"));
        ws[1].restarted_from = Some(from(None, "1-1-0"));
        ws[3].restarted_from = Some(from(None, "1-0-2"));
        let s = step(&ws, "1-0-2", Mode::RollingBack, at(200));
        assert_eq!((s.undo.clone(), s.restart.clone(), s.remaining), (vec![0, 1], vec![2, 3], 4));

        // Put back: a carries 1-0-2's stamp again, b none but the rollback's mark; both are
        // waited for (not restarted again) while their old pods come back, then done.
        ws[0].restarted_for = Some("1-0-2".into());
        ws[1].restarted_for = None;
        ws[1].rolled_back_to = Some("1-0-2".into());
        let s = step(&ws[..2], "1-0-2", Mode::RollingBack, at(201));
        assert_eq!((s.undo, s.restart, s.remaining, s.migrated), (vec![], vec![], 2, 0));
        ws[0].stale_pods = 0;
        ws[0].rolled_out = true;
        ws[1].stale_pods = 0;
        let s = step(&ws[..2], "1-0-2", Mode::RollingBack, at(202));
        assert_eq!((s.remaining, s.migrated), (0, 2));
        // The rollback's mark means nothing to the next upgrade: both are restarted for it.
        ws[0].stale_pods = 1;
        ws[1].stale_pods = 1;
        let sync = synced(&[]);
        assert_eq!(step(&ws[..2], "1-2-0", gated(5, &sync), at(300)).restart, vec![0, 1]);
    }

    #[test]
    fn the_previous_stamp_round_trips_through_its_annotation() {
        let p = Previous { stamp: Stamp { revision: Some("1-0-2".into()), at: Some("t".into()) }, to: "1-1-0".into() };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"for":"1-0-2","at":"t","to":"1-1-0"}"#);
        assert_eq!(serde_json::from_str::<Previous>(&text).unwrap(), p);
        let none = Previous { stamp: Stamp::default(), to: "1-1-0".into() };
        assert_eq!(serde_json::from_str::<Previous>(&serde_json::to_string(&none).unwrap()).unwrap(), none);
    }

    #[test]
    fn batch_sizes_are_counts_or_percentages_rounded_up() {
        assert_eq!(batch_size(None, 10), Ok(1));
        assert_eq!(batch_size(Some(&IntOrString::Int(3)), 10), Ok(3));
        assert_eq!(batch_size(Some(&IntOrString::String("25%".into())), 10), Ok(3));
        assert_eq!(batch_size(Some(&IntOrString::String("1%".into())), 10), Ok(1));
        let err = batch_size(Some(&IntOrString::String("0%".into())), 10).unwrap_err();
        assert!(err.starts_with("spec.updateStrategy.workloadBatch: \"0%\""), "{err}");
        assert!(batch_size(Some(&IntOrString::Int(0)), 10).is_err());
        assert!(batch_size(Some(&IntOrString::String("half".into())), 10).is_err());
    }
}
