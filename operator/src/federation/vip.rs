//! Virtual IPs of imported hosts, from 240.0.0.0/4 (reserved, never routed, so a VIP can only
//! mean the mesh host the sidecar resolves it to).
//!
//! - Derived from the host name (FNV-1a), so every cluster gives a host the same address in
//!   the common case; a collision moves to the next free address, hosts taken in name order,
//!   so the outcome is deterministic.
//! - Stable: a host keeps its address for as long as it is imported, across operator restarts,
//!   peer reconnects and re-lists. The generated ServiceEntry is the record of an assignment
//!   (its `spec.addresses`, read back at start with [`VipTable::recover`]); only the
//!   quarantine is persisted apart (a ConfigMap). Keeping every assignment in one ConfigMap
//!   would rewrite ~45 bytes per imported host on every new host, and stop at ConfigMaps'
//!   1 MiB limit (about 23 000 hosts).
//! - A released address is quarantined for [`QUARANTINE_SECONDS`] (much longer than any DNS
//!   TTL the sidecars use): only the same host may take it back in that time.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

/// How long a released address is kept from other hosts, in seconds.
pub const QUARANTINE_SECONDS: i64 = 3600;

const BASE: u32 = 0xF000_0000; // 240.0.0.0
const SIZE: u32 = 1 << 28;

/// A released address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The host that held it.
    pub host: String,
    /// Unix seconds of the release.
    pub at: i64,
}

/// The table. Persisted as its quarantine ([`VipTable::quarantine`]); tables written by
/// earlier versions, with every assignment, are still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipTable {
    /// Address of every imported host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assigned: BTreeMap<String, Ipv4Addr>,
    /// Addresses in quarantine.
    #[serde(default)]
    pub released: BTreeMap<Ipv4Addr, Released>,
}

/// Address `host` prefers: a hash of the name in 240.0.0.1 ..= 255.255.255.254 (the network and
/// broadcast-looking ends are skipped).
pub fn preferred(host: &str) -> Ipv4Addr {
    let h = super::credentials::fingerprint(host.as_bytes());
    let offset = 1 + (h % u64::from(SIZE - 2)) as u32;
    Ipv4Addr::from(BASE + offset)
}

fn next(ip: Ipv4Addr) -> Ipv4Addr {
    let offset = u32::from(ip) - BASE;
    Ipv4Addr::from(BASE + if offset + 1 >= SIZE - 1 { 1 } else { offset + 1 })
}

impl VipTable {
    /// Takes the assignments recorded by generated ServiceEntries (host, address), over what
    /// the table held. Addresses outside 240.0.0.0/4, and an address a host earlier in name
    /// order already recorded (a hand-edited copy), are not taken: those hosts get a fresh
    /// assignment from [`VipTable::assign`], and the edit is reverted.
    pub fn recover(&mut self, recorded: impl IntoIterator<Item = (String, Ipv4Addr)>) {
        let mut recorded: Vec<(String, Ipv4Addr)> = recorded.into_iter().collect();
        recorded.sort();
        let mut owners: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (host, ip) in recorded {
            if u32::from(ip) & 0xF000_0000 == BASE {
                owners.entry(ip).or_insert(host);
            }
        }
        // An older table's entry gives way to a recorded owner of its address.
        self.assigned.retain(|host, ip| owners.get(ip).is_none_or(|owner| owner == host));
        self.assigned.extend(owners.into_iter().map(|(ip, host)| (host, ip)));
    }

    /// What is persisted: the quarantine alone.
    pub fn quarantine(&self) -> VipTable {
        VipTable { assigned: BTreeMap::new(), released: self.released.clone() }
    }

    /// Makes the table hold exactly `hosts` at `now` (Unix seconds): hosts no longer wanted are
    /// released, expired quarantines dropped, new hosts given addresses. Returns whether
    /// anything changed (whether to persist).
    pub fn assign(&mut self, hosts: &BTreeSet<String>, now: i64) -> bool {
        // Called on every pass with every imported host: no copy of the table, and the set of
        // addresses in use is only made when something is to be assigned or released.
        let gone: Vec<String> = self.assigned.keys().filter(|h| !hosts.contains(*h)).cloned().collect();
        let mut changed = !gone.is_empty();
        for host in gone {
            if let Some(ip) = self.assigned.remove(&host) {
                self.released.insert(ip, Released { host, at: now });
            }
        }
        let quarantined = self.released.len();
        self.released.retain(|_, r| now - r.at < QUARANTINE_SECONDS);
        changed |= self.released.len() != quarantined;
        let new: Vec<&String> = hosts.iter().filter(|h| !self.assigned.contains_key(*h)).collect();
        if new.is_empty() && self.released.is_empty() {
            return changed;
        }
        changed |= !new.is_empty();
        let mut in_use: BTreeSet<Ipv4Addr> = self.assigned.values().copied().collect();
        for host in new {
            // The host's own quarantined address first: a service deleted and re-created keeps
            // its VIP.
            let own = self.released.iter().find(|(_, r)| &r.host == host).map(|(ip, _)| *ip);
            let ip = match own {
                Some(ip) => ip,
                None => {
                    let mut ip = preferred(host);
                    while in_use.contains(&ip) || self.released.contains_key(&ip) {
                        ip = next(ip);
                    }
                    ip
                }
            };
            in_use.insert(ip);
            self.assigned.insert(host.clone(), ip);
        }
        // An address in use is in no quarantine (a release that was persisted just before a
        // restart, for a host that came back).
        let quarantined = self.released.len();
        self.released.retain(|ip, _| !in_use.contains(ip));
        changed | (self.released.len() != quarantined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn addresses_are_in_240_slash_4_and_derived_from_the_name() {
        let mut a = VipTable::default();
        assert!(a.assign(&hosts(&["reviews.default.global", "ratings.default.global"]), 0));
        let mut b = VipTable::default();
        b.assign(&hosts(&["ratings.default.global", "reviews.default.global"]), 99);
        assert_eq!(a.assigned, b.assigned, "another cluster computes the same addresses");
        for ip in a.assigned.values() {
            assert_eq!(ip.octets()[0] & 0xF0, 240, "{ip}");
            assert_ne!(*ip, Ipv4Addr::new(255, 255, 255, 255));
        }
        assert_eq!(a.assigned["reviews.default.global"], preferred("reviews.default.global"));
        assert!(!a.assign(&hosts(&["reviews.default.global", "ratings.default.global"]), 5), "steady state");
    }

    #[test]
    fn collisions_resolve_deterministically_to_the_next_free_address() {
        let mut t = VipTable::default();
        // Pretend "a" already holds "b"'s preferred address.
        t.assigned.insert("a".into(), preferred("b"));
        t.assign(&hosts(&["a", "b"]), 0);
        assert_eq!(t.assigned["a"], preferred("b"), "an assigned host keeps its address");
        assert_eq!(t.assigned["b"], next(preferred("b")));
    }

    #[test]
    fn a_released_address_is_quarantined_from_other_hosts_and_returned_to_its_own() {
        let mut t = VipTable::default();
        t.assign(&hosts(&["a"]), 0);
        let a_ip = t.assigned["a"];
        assert!(t.assign(&hosts(&[]), 10));
        assert_eq!(t.released[&a_ip].host, "a");
        // "b" would prefer a's old address: it gets the next one during the quarantine.
        t.released.insert(preferred("b"), Released { host: "x".into(), at: 10 });
        t.assign(&hosts(&["b"]), 20);
        assert_ne!(t.assigned["b"], preferred("b"));
        // "a" comes back within the quarantine: same address.
        t.assign(&hosts(&["a", "b"]), 30);
        assert_eq!(t.assigned["a"], a_ip);
        // After the quarantine, released addresses are forgotten.
        t.assign(&hosts(&["b"]), 40);
        t.assign(&hosts(&["b"]), 40 + QUARANTINE_SECONDS);
        assert!(t.released.is_empty(), "{:?}", t.released);
    }

    #[test]
    fn the_range_wraps_without_leaving_240_slash_4() {
        assert_eq!(next(Ipv4Addr::new(255, 255, 255, 254)), Ipv4Addr::new(240, 0, 0, 1));
    }

    #[test]
    fn the_table_round_trips_through_json() {
        let mut t = VipTable::default();
        t.assign(&hosts(&["a", "b"]), 0);
        t.assign(&hosts(&["a"]), 1);
        let back: VipTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn assignments_come_back_from_the_service_entries_and_only_the_quarantine_is_persisted() {
        let mut t = VipTable::default();
        t.assign(&hosts(&["a", "b", "c"]), 0);
        assert!(t.assign(&hosts(&["a", "b"]), 5), "c released");
        let text = serde_json::to_string(&t.quarantine()).unwrap();
        assert!(!text.contains("assigned") && text.contains("\"c\""), "{text}");
        // A restart: the quarantine from the ConfigMap, the assignments from the objects.
        let mut back: VipTable = serde_json::from_str(&text).unwrap();
        back.recover(t.assigned.iter().map(|(h, ip)| (h.clone(), *ip)));
        assert_eq!(back, t);
        assert!(!back.assign(&hosts(&["a", "b"]), 6), "a restart changes nothing");
        // The release of c was persisted, its ServiceEntry not yet deleted, and c is wanted
        // again after the restart: it keeps its address, which leaves the quarantine.
        let c_ip = t.released.keys().next().copied().unwrap();
        let mut back: VipTable = serde_json::from_str(&text).unwrap();
        back.recover(t.assigned.iter().map(|(h, ip)| (h.clone(), *ip)).chain([("c".to_string(), c_ip)]));
        back.assign(&hosts(&["a", "b", "c"]), 7);
        assert_eq!(back.assigned["c"], c_ip);
        assert!(back.released.is_empty(), "{:?}", back.released);
    }

    #[test]
    fn a_recorded_address_outside_the_range_or_recorded_twice_is_reassigned() {
        let mut t = VipTable::default();
        let x = preferred("x");
        t.recover([("a".into(), Ipv4Addr::new(10, 0, 0, 1)), ("b".into(), x), ("c".into(), x)]);
        assert_eq!(t.assigned, BTreeMap::from([("b".to_string(), x)]), "the first in name order keeps it");
        t.assign(&hosts(&["a", "b", "c"]), 0);
        assert_eq!(t.assigned["a"], preferred("a"));
        assert_eq!(t.assigned["c"], preferred("c"));
        // A table written by an earlier version gives way to what the objects record.
        let mut old = VipTable::default();
        old.assigned.insert("d".into(), preferred("e"));
        old.assigned.insert("f".into(), preferred("f"));
        old.recover([("e".to_string(), preferred("e"))]);
        assert_eq!(old.assigned.get("d"), None);
        assert_eq!(old.assigned["e"], preferred("e"));
        assert_eq!(old.assigned["f"], preferred("f"), "an entry no object contradicts stays");
    }
}
