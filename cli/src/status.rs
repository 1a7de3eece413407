//! `skeinctl proxy-status`: every proxy connected to the mesh's control planes and whether it
//! runs the config the control plane last sent it, from each control plane's `/debug/syncz`
//! (as `istioctl proxy-status` reads istiod's).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::table;

/// One proxy's entry in `/debug/syncz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sync {
    /// Version last sent.
    #[serde(default)]
    pub sent: String,
    /// Version last acknowledged.
    #[serde(default)]
    pub acked: String,
    /// Error of the last NACK.
    #[serde(default)]
    pub nack: Option<String>,
    /// Pushes on the stream.
    #[serde(default)]
    pub pushes: u64,
}

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Runs the config last sent.
    Synced,
    /// Sent a config it has not answered yet.
    Stale,
    /// Refused the last config; runs an older one.
    Nacked,
    /// Connected, nothing sent yet.
    NotSent,
}

impl State {
    fn of(s: &Sync) -> Self {
        match s {
            Sync { nack: Some(_), .. } => Self::Nacked,
            Sync { sent, acked, .. } if sent.is_empty() && acked.is_empty() => Self::NotSent,
            Sync { sent, acked, .. } if sent.is_empty() || sent == acked => Self::Synced,
            _ => Self::Stale,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "SYNCED",
            Self::Stale => "STALE",
            Self::Nacked => "NACKED",
            Self::NotSent => "NOT SENT",
        }
    }
}

/// `<pod>.<namespace>` and `sidecar`/`gateway` from Istio's node id
/// `<type>~<ip>~<pod>.<namespace>~<domain>`; other ids as they are.
fn name_and_type(id: &str) -> (String, &'static str) {
    let parts: Vec<&str> = id.split('~').collect();
    match parts[..] {
        [kind, _, pod_ns, _] => (pod_ns.to_string(), if kind == "router" { "gateway" } else { "sidecar" }),
        _ => (id.to_string(), "-"),
    }
}

/// The proxies of every control plane's `/debug/syncz` answer, `(control plane, body)`;
/// `only` keeps the proxy of one `<pod>.<namespace>`. Returns the table and the lines
/// explaining refusals, and whether every proxy is synced.
pub fn render(answers: &[(String, String)], only: Option<&str>) -> Result<(String, bool), String> {
    let mut rows = Vec::new();
    let mut notes = String::new();
    let mut all_synced = true;
    for (cp, body) in answers {
        let table: BTreeMap<String, Sync> =
            serde_json::from_str(body).map_err(|e| format!("{cp}: /debug/syncz is not a sync table: {e}"))?;
        for (id, sync) in table {
            let (name, kind) = name_and_type(&id);
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let state = State::of(&sync);
            all_synced &= state == State::Synced;
            if let Some(nack) = &sync.nack {
                notes.push_str(&format!("{name}: refused version {}: {nack}\n", sync.sent));
            }
            let version = if sync.acked.is_empty() { "-".to_string() } else { sync.acked.clone() };
            rows.push(vec![
                name,
                kind.to_string(),
                state.as_str().to_string(),
                cp.clone(),
                version,
                sync.pushes.to_string(),
            ]);
        }
    }
    if let Some(o) = only
        && rows.is_empty()
    {
        return Err(format!("proxy {o} is not connected to any control plane"));
    }
    rows.sort();
    let mut out = table::render(&["NAME", "TYPE", "STATUS", "CONTROL PLANE", "VERSION", "PUSHES"], &rows);
    out.push_str(&notes);
    Ok((out, all_synced))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNCZ: &str = r#"{
      "sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local": {"sent": "a1", "acked": "a1", "nack": null, "pushes": 3},
      "sidecar~10.0.0.2~reviews-v1-1.default~default.svc.cluster.local": {"sent": "b2", "acked": "b1", "nack": "weights sum to 120", "pushes": 2},
      "router~10.0.0.3~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local": {"sent": "c2", "acked": "c1", "nack": null, "pushes": 2},
      "sidecar~10.0.0.4~ratings-v1-1.default~default.svc.cluster.local": {"sent": "", "acked": "", "nack": null, "pushes": 0}
    }"#;

    #[test]
    fn each_proxy_gets_its_state_and_refusals_are_explained() {
        let (out, synced) = render(&[("skein-controlplane-1".into(), SYNCZ.into())], None).unwrap();
        assert!(!synced);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        let row =
            |name: &str| lines.iter().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().collect::<Vec<_>>());
        assert_eq!(row("istio-ingressgateway-1.istio-system").unwrap()[1..3], ["gateway", "STALE"]);
        assert_eq!(
            row("productpage-v1-1.default").unwrap()[1..],
            ["sidecar", "SYNCED", "skein-controlplane-1", "a1", "3"]
        );
        assert_eq!(row("reviews-v1-1.default").unwrap()[2..5], ["NACKED", "skein-controlplane-1", "b1"]);
        assert_eq!(row("ratings-v1-1.default").unwrap()[2..4], ["NOT", "SENT"]);
        assert!(out.contains("reviews-v1-1.default: refused version b2: weights sum to 120\n"), "{out}");
    }

    #[test]
    fn one_proxy_can_be_asked_for_and_a_missing_one_is_an_error() {
        let (out, synced) = render(&[("cp".into(), SYNCZ.into())], Some("productpage-v1-1.default")).unwrap();
        assert!(synced);
        assert_eq!(out.lines().count(), 2, "{out}");
        let err = render(&[("cp".into(), SYNCZ.into())], Some("nope.default")).unwrap_err();
        assert_eq!(err, "proxy nope.default is not connected to any control plane");
        assert!(render(&[("cp".into(), "not json".into())], None).unwrap_err().starts_with("cp: /debug/syncz"));
    }
}
