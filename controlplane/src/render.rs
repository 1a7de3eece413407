//! Configs as sent: encoded in parts, versioned by content, sent whole or as a delta, and
//! cached per snapshot.
//!
//! A sidecar's config is three parts: its own (listeners, policies, settings), the virtual
//! hosts and the clusters of its outbound view (shared by every workload with the same
//! outbound key). Each part is encoded once, as `ProxyConfig` fields; since protobuf decodes
//! fields in any order and appends repeated ones, the concatenation of the parts *is* the
//! encoded `ProxyConfig`. The version is a sum of the parts' hashes, so it is the same for the
//! same content in every control plane process, and a changed cluster changes it without the
//! rest being hashed again.
//!
//! A delta (`ConfigDelta`) between two configs with the same own part and virtual hosts is the
//! clusters that differ: what EDS is to xDS. It is computed once per (new config, base
//! version) and shared by every proxy at that base.
//!
//! The caches live here, not in the snapshot (the input): [`Configs`] holds one snapshot's
//! encoded outbound parts and rendered configs, and is made from the previous [`Configs`] so
//! that an endpoint-only change patches the previous parts instead of translating the mesh
//! again (istiod's ConfigGenerator, which takes its cache as an argument, is the model).

use std::{
    collections::{BTreeSet, HashMap},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use imbl::ordmap::DiffItem;
use prost::Message;
use skein_api::proxy::{Cluster, NameEntry, ProxyConfig, VirtualHost, wire::pb};

use crate::{
    snapshot::Snapshot,
    translate::{self, Outbound, OutboundKey, Workload},
};

/// Stable hash of bytes (`DefaultHasher::new()` uses fixed keys: the same in every process).
fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Encoded `ProxyConfig` field(s) and the hash of that encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    /// The encoding, as fields of `ProxyConfig`.
    pub bytes: Bytes,
    /// Hash of `bytes`.
    pub hash: u64,
}

impl Part {
    fn of(fields: pb::ProxyConfig) -> Self {
        let bytes = Bytes::from(fields.encode_to_vec());
        Self { hash: hash(&bytes), bytes }
    }

    /// A cluster as one `ProxyConfig.clusters` (= `ConfigDelta.clusters`) field.
    pub fn cluster(c: &Cluster) -> Self {
        Self::of(pb::ProxyConfig { clusters: vec![pb::Cluster::from(c)], ..Default::default() })
    }

    /// Virtual hosts and the name table as `ProxyConfig.virtual_hosts` and `name_table` fields
    /// (one part: both follow the visible services and neither changes with endpoints).
    pub fn virtual_hosts(v: &[VirtualHost], names: &[NameEntry]) -> Self {
        Self::of(pb::ProxyConfig {
            virtual_hosts: v.iter().map(pb::VirtualHost::from).collect(),
            name_table: names.iter().map(pb::NameEntry::from).collect(),
            ..Default::default()
        })
    }
}

/// An outbound part (translation's plain values) with the encoding of each virtual-host list
/// and cluster, so a config is assembled (and a delta between two configs computed) without
/// encoding again.
#[derive(Debug, Clone, Default)]
pub struct EncodedOutbound {
    /// What was encoded.
    pub plain: Outbound,
    /// The virtual hosts, encoded.
    pub virtual_hosts: Arc<Part>,
    /// Each cluster, encoded, by name (shares nodes with the part it was patched from).
    pub clusters: imbl::OrdMap<Arc<str>, Arc<Part>>,
    /// Sum of the clusters' hashes (part of the config's version).
    pub clusters_hash: u64,
}

impl EncodedOutbound {
    /// Encodes every virtual host and cluster of `plain`.
    pub fn new(plain: Outbound) -> Self {
        let clusters: imbl::OrdMap<Arc<str>, Arc<Part>> =
            plain.clusters.iter().map(|(n, c)| (n.clone(), Arc::new(Part::cluster(c)))).collect();
        let clusters_hash = clusters.values().fold(0u64, |h, c| h.wrapping_add(c.hash));
        let virtual_hosts = Arc::new(Part::virtual_hosts(&plain.virtual_hosts, &plain.names));
        Self { virtual_hosts, clusters, clusters_hash, plain }
    }

    /// The encoding of `plain`, reusing this one's for everything `plain` shares with what
    /// this one encodes: only added or changed clusters are encoded (the persistent maps'
    /// diff visits only what differs), and the virtual hosts only when they are not the same
    /// list.
    pub fn patched(&self, plain: Outbound) -> Self {
        let virtual_hosts = if Arc::ptr_eq(&self.plain.virtual_hosts, &plain.virtual_hosts)
            && Arc::ptr_eq(&self.plain.names, &plain.names)
        {
            self.virtual_hosts.clone()
        } else {
            Arc::new(Part::virtual_hosts(&plain.virtual_hosts, &plain.names))
        };
        let (mut clusters, mut clusters_hash) = (self.clusters.clone(), self.clusters_hash);
        for item in self.plain.clusters.diff(&plain.clusters) {
            let (name, new) = match item {
                DiffItem::Add(name, c) | DiffItem::Update { new: (name, c), .. } => (name, Some(c)),
                DiffItem::Remove(name, _) => (name, None),
            };
            if let Some(old) = clusters.remove(name) {
                clusters_hash = clusters_hash.wrapping_sub(old.hash);
            }
            if let Some(c) = new {
                let part = Part::cluster(c);
                clusters_hash = clusters_hash.wrapping_add(part.hash);
                clusters.insert(name.clone(), Arc::new(part));
            }
        }
        Self { plain, virtual_hosts, clusters, clusters_hash }
    }
}

/// One proxy config, encoded in parts.
#[derive(Debug)]
pub struct Rendered {
    /// Content version.
    pub version: String,
    /// The workload's own part: everything but virtual hosts and clusters.
    own: Bytes,
    outbound: Arc<EncodedOutbound>,
    /// Deltas from other versions of the same workload's config, by base version (`None`:
    /// no delta possible from that base).
    deltas: Mutex<HashMap<String, Option<Bytes>>>,
}

impl Rendered {
    fn from_parts(own: &ProxyConfig, outbound: Arc<EncodedOutbound>) -> Self {
        let own = Bytes::from(pb::ProxyConfig::from(own).encode_to_vec());
        let sum = hash(&own).wrapping_add(outbound.virtual_hosts.hash).wrapping_add(outbound.clusters_hash);
        Self { version: format!("{sum:016x}"), own, outbound, deltas: Mutex::default() }
    }

    /// Size of the whole encoded config.
    pub fn len(&self) -> usize {
        self.own.len()
            + self.outbound.virtual_hosts.bytes.len()
            + self.outbound.clusters.values().map(|c| c.bytes.len()).sum::<usize>()
    }

    /// Whether the encoding is empty (never: the own part always has listeners).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The config itself, decoded as the proxy decodes it (for `/debug/config_dump`).
    pub fn decode(&self) -> Result<ProxyConfig, String> {
        let mut all = BytesMut::with_capacity(self.len());
        for part in self.parts() {
            all.extend_from_slice(part);
        }
        let wire = pb::ProxyConfig::decode(all.freeze()).map_err(|e| e.to_string())?;
        ProxyConfig::try_from(wire).map_err(|e| e.to_string())
    }

    /// The parts whose concatenation is the encoded `ProxyConfig`.
    pub fn parts(&self) -> impl Iterator<Item = &Bytes> {
        [&self.own, &self.outbound.virtual_hosts.bytes]
            .into_iter()
            .chain(self.outbound.clusters.values().map(|c| &c.bytes))
    }

    /// The encoded `ConfigDelta` turning `base` into this config, when only clusters differ.
    pub fn delta_from(&self, base: &Rendered) -> Option<Bytes> {
        let mut deltas = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = deltas.get(&base.version) {
            return d.clone();
        }
        deltas.entry(base.version.clone()).or_insert_with(|| self.compute_delta(base)).clone()
    }

    fn compute_delta(&self, base: &Rendered) -> Option<Bytes> {
        let (new, old) = (&self.outbound, &base.outbound);
        let same_hosts =
            Arc::ptr_eq(&new.virtual_hosts, &old.virtual_hosts) || new.virtual_hosts.bytes == old.virtual_hosts.bytes;
        if self.own != base.own || !same_hosts {
            return None;
        }
        // The maps share every unchanged node, so the diff visits only what changed.
        let mut out = BytesMut::new();
        let mut removed = Vec::new();
        for item in old.clusters.diff(&new.clusters) {
            match item {
                DiffItem::Add(_, c) | DiffItem::Update { new: (_, c), .. } => out.extend_from_slice(&c.bytes),
                DiffItem::Remove(name, _) => removed.push(name.to_string()),
            }
        }
        out.extend_from_slice(&pb::ConfigDelta { removed_clusters: removed, ..Default::default() }.encode_to_vec());
        Some(out.freeze())
    }
}

/// The configs of one snapshot: computed on demand, once per outbound key and once per
/// distinct workload however many proxies ask, and shared by every proxy they fit.
#[derive(Debug, Default)]
pub struct Configs {
    snap: Arc<Snapshot>,
    /// Encoded outbound parts computed so far, by key.
    outbound: Mutex<HashMap<OutboundKey, Arc<EncodedOutbound>>>,
    /// Rendered configs by workload (concurrent requests for one wait for its computation).
    rendered: Mutex<HashMap<Workload, Arc<tokio::sync::OnceCell<Arc<Rendered>>>>>,
    /// What may be reused from the previous snapshot's configs.
    reuse: Option<Reuse>,
}

/// The previous snapshot's outbound parts, and the only hosts whose endpoints changed since.
#[derive(Debug)]
struct Reuse {
    outbound: HashMap<OutboundKey, Arc<EncodedOutbound>>,
    changed_hosts: BTreeSet<String>,
}

impl Configs {
    /// The configs of `snap`. When the only difference from `prev`'s snapshot is the
    /// endpoints of some services (the common change: a pod starts, stops or moves), the
    /// outbound parts `prev` computed are patched instead of translated again.
    pub fn new(snap: Arc<Snapshot>, prev: Option<&Configs>) -> Self {
        let reuse = prev.and_then(|p| {
            let changed_hosts = snap.endpoint_only_changes(&p.snap)?;
            let outbound = p.outbound.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Some(Reuse { outbound, changed_hosts })
        });
        Self { snap, outbound: Mutex::default(), rendered: Mutex::default(), reuse }
    }

    /// The snapshot these configs are computed from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    /// The hosts whose endpoints alone changed since the previous configs, when translation
    /// is patched; `None` when everything is translated anew.
    pub fn patched_hosts(&self) -> Option<&BTreeSet<String>> {
        self.reuse.as_ref().map(|r| &r.changed_hosts)
    }

    /// The encoded outbound part for `key`, computed once per snapshot and key.
    pub fn outbound(&self, key: &OutboundKey) -> Arc<EncodedOutbound> {
        if let Some(hit) = self.outbound.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return hit.clone();
        }
        // Computed outside the lock: two proxies racing on one key may both compute it, which
        // costs time once but never blocks every other proxy behind one computation.
        let prev = self.reuse.as_ref().and_then(|r| Some((r.outbound.get(key)?, &r.changed_hosts)));
        let built = Arc::new(match prev {
            Some((prev, hosts)) => prev.patched(translate::patch_outbound(&self.snap, key, &prev.plain, hosts)),
            None => EncodedOutbound::new(translate::outbound(&self.snap, key)),
        });
        self.outbound.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_insert(built).clone()
    }

    /// `workload`'s config, rendered once per snapshot however many proxies ask.
    pub async fn rendered(&self, workload: &Workload) -> Arc<Rendered> {
        let cell = {
            let mut cells = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
            match cells.get(workload) {
                Some(c) => c.clone(),
                None => cells.entry(workload.clone()).or_default().clone(),
            }
        };
        cell.get_or_init(|| async { Arc::new(self.render(workload)) }).await.clone()
    }

    /// Renders `workload`'s config: its own part, and the outbound part of its key (for a
    /// gateway, patched with the gateway's own routes and clusters).
    pub fn render(&self, workload: &Workload) -> Rendered {
        let own = translate::own(&self.snap, workload);
        let mesh = self.outbound(&OutboundKey::of(workload, &self.snap));
        let outbound = match own.gateway {
            None => mesh,
            Some(_) => Arc::new(mesh.patched(own.outbound(&mesh.plain))),
        };
        Rendered::from_parts(&own.config, outbound)
    }
}

/// Splits a sequence of parts into chunks of at most `max` bytes: a part larger than a chunk
/// is sliced without copying, small ones are gathered into one chunk. Lazy, so a sender holds
/// one chunk at a time, not a copy of the whole config.
pub struct Chunks<'a, I: Iterator<Item = &'a Bytes>> {
    parts: I,
    current: Bytes,
    max: usize,
}

impl<'a, I: Iterator<Item = &'a Bytes>> Chunks<'a, I> {
    /// Chunks of `parts`, each at most `max` (≥ 1) bytes.
    pub fn new(parts: I, max: usize) -> Self {
        Self { parts, current: Bytes::new(), max: max.max(1) }
    }
}

impl<'a, I: Iterator<Item = &'a Bytes>> Iterator for Chunks<'a, I> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut acc = BytesMut::new();
        loop {
            if self.current.is_empty() {
                match self.parts.next() {
                    Some(p) => self.current = p.clone(),
                    None => break,
                }
                continue;
            }
            if acc.is_empty() && self.current.len() >= self.max {
                return Some(self.current.split_to(self.max));
            }
            let take = (self.max - acc.len()).min(self.current.len());
            acc.extend_from_slice(&self.current.split_to(take));
            if acc.len() == self.max {
                break;
            }
        }
        (!acc.is_empty()).then(|| acc.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            endpoints: vec![std::net::SocketAddr::from(([10, 0, 0, 1], port))],
            connect_timeout: None,
            load_balancer: Default::default(),
            connection_pool: None,
            outlier_detection: None,
            tls: None,
            http2: false,
            service_addresses: Vec::new(),
            failover: Vec::new(),
        }
    }

    fn plain(clusters: &[Cluster]) -> Outbound {
        let vh = VirtualHost { name: "a".into(), domains: vec!["a".into()], routes: Vec::new() };
        let clusters = clusters.iter().map(|c| (Arc::from(c.name.as_str()), Arc::new(c.clone()))).collect();
        let names = vec![NameEntry { host: "a.default.global".into(), addresses: vec!["240.0.0.1".parse().unwrap()] }];
        Outbound { virtual_hosts: Arc::new(vec![vh]), clusters, names: Arc::new(names) }
    }

    fn outbound(clusters: &[Cluster]) -> Arc<EncodedOutbound> {
        Arc::new(EncodedOutbound::new(plain(clusters)))
    }

    fn own() -> ProxyConfig {
        translate::own(&Snapshot::default(), &Workload::default()).config
    }

    fn whole(r: &Rendered) -> ProxyConfig {
        let bytes: Vec<u8> = r.parts().flat_map(|b| b.iter().copied()).collect();
        ProxyConfig::try_from(pb::ProxyConfig::decode(bytes.as_slice()).unwrap()).unwrap()
    }

    #[test]
    fn the_parts_concatenated_are_the_config_and_the_version_is_its_content() {
        let (a, b) = (cluster("a", 1), cluster("b", 2));
        let r = Rendered::from_parts(&own(), outbound(&[a.clone(), b.clone()]));
        let cfg = whole(&r);
        assert_eq!(cfg.clusters, vec![a.clone(), b.clone()]);
        assert_eq!(cfg.listeners, own().listeners);
        assert_eq!(cfg.virtual_hosts.len(), 1);
        assert_eq!(cfg.name_table, *plain(&[]).names, "the name table travels with the virtual hosts");
        assert_eq!(r.len(), r.parts().map(Bytes::len).sum::<usize>());
        // Same content, same version, however it was built; other content, other version.
        assert_eq!(Rendered::from_parts(&own(), outbound(&[a.clone(), b.clone()])).version, r.version);
        assert_ne!(Rendered::from_parts(&own(), outbound(&[a, cluster("b", 3)])).version, r.version);
    }

    #[test]
    fn a_delta_carries_only_changed_and_removed_clusters_and_rebuilds_the_new_config() {
        let (a, b, c) = (cluster("a", 1), cluster("b", 2), cluster("c", 3));
        let old = Rendered::from_parts(&own(), outbound(&[a.clone(), b.clone(), c]));
        let b2 = cluster("b", 20);
        let d = cluster("d", 4);
        let new = Rendered::from_parts(&own(), outbound(&[a, b2.clone(), d.clone()]));
        let bytes = new.delta_from(&old).expect("only clusters differ");
        let delta = skein_api::proxy::ConfigDelta::try_from(pb::ConfigDelta::decode(bytes.clone()).unwrap()).unwrap();
        assert_eq!(delta.clusters, vec![b2, d]);
        assert_eq!(delta.removed_clusters, vec!["c".to_string()]);
        assert_eq!(delta.apply_to(&whole(&old)).clusters, whole(&new).clusters);
        assert!(bytes.len() < new.len());
        assert_eq!(new.delta_from(&old), Some(bytes), "cached per base, same answer");
    }

    #[test]
    fn no_delta_when_more_than_clusters_changed() {
        let a = cluster("a", 1);
        let old = Rendered::from_parts(&own(), outbound(std::slice::from_ref(&a)));
        let mut other_own = own();
        other_own.outbound_traffic_policy = skein_api::proxy::OutboundPolicy::RegistryOnly;
        let new = Rendered::from_parts(&other_own, outbound(&[a]));
        assert_eq!(new.delta_from(&old), None);
    }

    #[test]
    fn a_patched_encoding_equals_a_fresh_one_and_shares_what_did_not_change() {
        let (a, b, c) = (cluster("a", 1), cluster("b", 2), cluster("c", 3));
        let old = EncodedOutbound::new(plain(&[a.clone(), b.clone(), c]));
        // b changed, c removed, d added; the virtual hosts are the same list.
        let mut next = old.plain.clone();
        next.clusters.insert(Arc::from("b"), Arc::new(cluster("b", 20)));
        next.clusters.remove("c");
        next.clusters.insert(Arc::from("d"), Arc::new(cluster("d", 4)));
        let patched = old.patched(next.clone());
        let fresh = EncodedOutbound::new(next);
        assert_eq!(patched.clusters, fresh.clusters);
        assert_eq!(patched.clusters_hash, fresh.clusters_hash);
        assert_eq!(patched.virtual_hosts, fresh.virtual_hosts);
        assert!(Arc::ptr_eq(&patched.virtual_hosts, &old.virtual_hosts), "same list, encoding reused");
        assert!(Arc::ptr_eq(&patched.clusters["a"], &old.clusters["a"]), "unchanged cluster not encoded again");
    }

    #[test]
    fn chunks_slice_large_parts_gather_small_ones_and_lose_nothing() {
        let parts: Vec<Bytes> =
            [vec![1u8; 3], vec![2; 10], vec![3; 1], vec![4; 4], vec![]].into_iter().map(Bytes::from).collect();
        let chunks: Vec<Bytes> = Chunks::new(parts.iter(), 4).collect();
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 4), "{chunks:?}");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let expected: Vec<u8> = parts.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, expected);
        // 1112 | 2222 | 2222 | 2344 | 44
        assert_eq!(chunks.len(), 5, "{chunks:?}");
        assert_eq!(Chunks::new(std::iter::empty(), 4).count(), 0);
    }
}
