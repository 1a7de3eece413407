//! Locality-aware failover as Istio does it: where a workload runs (`region/zone/subzone`,
//! from its node's topology labels, its `istio-locality` label or a ServiceEntry endpoint's
//! `locality`), and the priority each endpoint gets for a given client under a
//! `localityLbSetting`. Pure functions; translation turns priorities into the proxy's ordered
//! endpoint levels.
//!
//! Istio applies failover priorities only to clusters with outlier detection (without it
//! Envoy never leaves the first priority), and only when the setting is not disabled; the
//! mesh-wide setting (MeshConfig `localityLbSetting`, enabled by default) applies where the
//! DestinationRule has none.

use std::collections::BTreeMap;

use skein_api::istio::networking::LocalityLbSetting;

/// Node label for the region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label for the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label for the subzone (Istio's own).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Pod label overriding the node's locality, `region.zone.subzone` (label values cannot hold
/// `/`).
pub const POD_LOCALITY_LABEL: &str = "istio-locality";

/// Where a workload runs. Empty parts are unknown; two unknowns compare equal, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

impl Locality {
    /// `region/zone/subzone` (a ServiceEntry endpoint's `locality`); missing parts are empty.
    pub fn parse(s: &str) -> Self {
        Self::split(s, '/')
    }

    /// A Pod's `istio-locality` label, `region.zone.subzone`.
    pub fn from_pod_label(s: &str) -> Self {
        Self::split(s, '.')
    }

    fn split(s: &str, sep: char) -> Self {
        let mut parts = s.splitn(3, sep).map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// A Node's topology labels.
    pub fn from_node_labels(labels: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Self { region: get(REGION_LABEL), zone: get(ZONE_LABEL), subzone: get(SUBZONE_LABEL) }
    }

    /// Nothing known.
    pub fn is_unknown(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// What decides an endpoint's priority for one client.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's locality.
    pub locality: &'a Locality,
    /// The client's Pod labels (for `failoverPriority`).
    pub labels: &'a BTreeMap<String, String>,
}

/// One endpoint as far as its priority goes.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Its locality.
    pub locality: &'a Locality,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The setting in force for a cluster: the DestinationRule's, else the mesh's; `None` when
/// locality failover does not apply (disabled, no outlier detection, or `distribute`, which
/// validation refuses).
pub fn effective<'a>(
    rule: Option<&'a LocalityLbSetting>,
    mesh: &'a LocalityLbSetting,
    outlier_detection: bool,
) -> Option<&'a LocalityLbSetting> {
    let s = rule.unwrap_or(mesh);
    (outlier_detection && s.enabled != Some(false) && s.distribute.is_empty()).then_some(s)
}

/// Istio's priority of `ep` for `client` (0 is the highest): with `failoverPriority`, first by
/// how many of the listed labels match in order, then (with `failover`, or without
/// `failoverPriority`) by locality — 0 same region, zone and subzone; 1 same region and zone;
/// 2 same region; 3 another region; 4 another region not named by a `failover` entry for the
/// client's region. Callers order levels by this number; only its order matters.
pub fn priority(setting: &LocalityLbSetting, client: Client<'_>, ep: Candidate<'_>) -> u32 {
    let labels = if setting.failover_priority.is_empty() {
        0
    } else {
        let n = setting.failover_priority.len();
        let matched = setting.failover_priority.iter().take_while(|entry| label_matches(entry, client, ep)).count();
        (n - matched) as u32
    };
    // Istio ranks by locality under label priorities only when `failover` is also given.
    if !setting.failover_priority.is_empty() && setting.failover.is_empty() {
        return labels;
    }
    labels * 5 + locality_rank(setting, client.locality, ep.locality)
}

/// `key` (the endpoint's value equals the client's) or `key=value` (the endpoint's equals
/// `value`). A label the client does not have matches nothing.
fn label_matches(entry: &str, client: Client<'_>, ep: Candidate<'_>) -> bool {
    let (key, want) = match entry.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (entry, None),
    };
    // Topology keys compare the localities (endpoints carry them as localities, not labels).
    let topology = |l: &Locality| match key {
        REGION_LABEL => Some(l.region.clone()),
        ZONE_LABEL => Some(l.zone.clone()),
        SUBZONE_LABEL => Some(l.subzone.clone()),
        _ => None,
    };
    let (mine, theirs) = match (topology(client.locality), topology(ep.locality)) {
        (Some(m), Some(t)) => (Some(m), Some(t)),
        _ => (client.labels.get(key).cloned(), ep.labels.get(key).cloned()),
    };
    match want {
        Some(v) => theirs.as_deref() == Some(v),
        None => mine.is_some_and(|m| !m.is_empty() && Some(&m) == theirs.as_ref()),
    }
}

fn locality_rank(setting: &LocalityLbSetting, client: &Locality, ep: &Locality) -> u32 {
    if client.region == ep.region {
        return match (client.zone == ep.zone, client.subzone == ep.subzone) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
    }
    match setting.failover.iter().find(|f| f.from == client.region) {
        Some(f) if f.to != ep.region => 4,
        _ => 3,
    }
}

/// Items grouped into levels by ascending priority, keeping their order within a level.
pub fn levels<T>(items: impl IntoIterator<Item = (u32, T)>) -> Vec<Vec<T>> {
    let mut by: BTreeMap<u32, Vec<T>> = BTreeMap::new();
    for (p, t) in items {
        by.entry(p).or_default().push(t);
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use skein_api::istio::networking::LocalityFailover;

    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s)
    }

    fn rank(setting: &LocalityLbSetting, client: &str, ep: &str) -> u32 {
        let none = BTreeMap::new();
        priority(
            setting,
            Client { locality: &loc(client), labels: &none },
            Candidate { locality: &loc(ep), labels: &none },
        )
    }

    #[test]
    fn localities_are_read_from_every_place_istio_reads_them() {
        assert_eq!(
            loc("us-east/us-east-1a/rack1"),
            Locality { region: "us-east".into(), zone: "us-east-1a".into(), subzone: "rack1".into() }
        );
        assert_eq!(Locality::from_pod_label("eu.eu-1b"), loc("eu/eu-1b"));
        let node: BTreeMap<String, String> =
            [(REGION_LABEL.to_string(), "r".to_string()), (ZONE_LABEL.to_string(), "z".to_string())].into();
        assert_eq!(Locality::from_node_labels(&node), loc("r/z"));
        assert!(Locality::from_node_labels(&BTreeMap::new()).is_unknown());
    }

    #[test]
    fn default_priorities_follow_region_zone_and_subzone() {
        let s = LocalityLbSetting::default();
        assert_eq!(rank(&s, "r1/z1/s1", "r1/z1/s1"), 0);
        assert_eq!(rank(&s, "r1/z1/s1", "r1/z1/s2"), 1);
        assert_eq!(rank(&s, "r1/z1/s1", "r1/z2/s1"), 2);
        assert_eq!(rank(&s, "r1/z1/s1", "r2/z1/s1"), 3);
        // Nothing known on either side: all equal.
        assert_eq!(rank(&s, "", ""), 0);
    }

    #[test]
    fn failover_names_the_region_to_try_before_all_others() {
        let s = LocalityLbSetting {
            failover: vec![LocalityFailover { from: "us-east".into(), to: "eu-west".into() }],
            ..Default::default()
        };
        assert_eq!(rank(&s, "us-east/a", "eu-west/b"), 3);
        assert_eq!(rank(&s, "us-east/a", "ap-south/b"), 4);
        // Clients of other regions are not affected.
        assert_eq!(rank(&s, "ap-south/a", "eu-west/b"), 3);
        assert_eq!(rank(&s, "ap-south/a", "us-east/b"), 3);
    }

    #[test]
    fn failover_priority_ranks_by_matching_labels_in_order() {
        let s = LocalityLbSetting {
            failover_priority: vec!["topology.istio.io/network".into(), "version=v2".into()],
            ..Default::default()
        };
        let client: BTreeMap<String, String> = [("topology.istio.io/network".to_string(), "n1".to_string())].into();
        let ep = |net: &str, v: &str| -> BTreeMap<String, String> {
            [("topology.istio.io/network".to_string(), net.to_string()), ("version".to_string(), v.to_string())].into()
        };
        let here = Locality::default();
        let p = |labels: &BTreeMap<String, String>| {
            priority(&s, Client { locality: &here, labels: &client }, Candidate { locality: &here, labels })
        };
        assert_eq!(p(&ep("n1", "v2")), 0);
        assert_eq!(p(&ep("n1", "v1")), 1);
        // The first label decides before the second is looked at.
        assert_eq!(p(&ep("n2", "v2")), 2);
        // Without `failover`, locality does not rank within a label level.
        let far = loc("elsewhere/x");
        assert_eq!(
            priority(
                &s,
                Client { locality: &here, labels: &client },
                Candidate { locality: &far, labels: &ep("n1", "v2") }
            ),
            0
        );
    }

    #[test]
    fn failover_priority_with_failover_ranks_locality_inside_each_label_level() {
        let s = LocalityLbSetting {
            failover_priority: vec!["app".into()],
            failover: vec![LocalityFailover { from: "r1".into(), to: "r2".into() }],
            ..Default::default()
        };
        let labels: BTreeMap<String, String> = [("app".to_string(), "a".to_string())].into();
        let other: BTreeMap<String, String> = [("app".to_string(), "b".to_string())].into();
        let c = loc("r1/z1");
        let p = |l: &str, ep_labels: &BTreeMap<String, String>| {
            priority(&s, Client { locality: &c, labels: &labels }, Candidate { locality: &loc(l), labels: ep_labels })
        };
        assert_eq!(p("r1/z1", &labels), 0);
        assert_eq!(p("r2/z1", &labels), 3);
        assert_eq!(p("r3/z1", &labels), 4);
        assert_eq!(p("r1/z1", &other), 5);
    }

    #[test]
    fn the_setting_applies_only_with_outlier_detection_and_when_enabled() {
        let mesh = LocalityLbSetting::default();
        assert!(effective(None, &mesh, true).is_some());
        assert!(effective(None, &mesh, false).is_none(), "Envoy never fails over without outlier detection");
        let off = LocalityLbSetting { enabled: Some(false), ..Default::default() };
        assert!(effective(Some(&off), &mesh, true).is_none());
        assert!(effective(None, &off, true).is_none(), "mesh-wide off");
        let on = LocalityLbSetting { enabled: Some(true), ..Default::default() };
        assert!(effective(Some(&on), &off, true).is_some(), "the rule's setting wins over the mesh's");
    }

    #[test]
    fn levels_group_by_priority_in_order() {
        assert_eq!(levels([(3, 'a'), (0, 'b'), (3, 'c'), (1, 'd')]), vec![vec!['b'], vec!['d'], vec!['a', 'c']]);
        assert!(levels(Vec::<(u32, char)>::new()).is_empty());
    }
}
