//! Configs as sent: encoded in parts, versioned by content, and sent whole or as a delta.
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

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use imbl::ordmap::DiffItem;
use prost::Message;
use skein_api::proxy::{Cluster, ProxyConfig, VirtualHost, wire::pb};

use crate::{
    snapshot::Snapshot,
    translate::{self, Outbound, Workload},
};

/// Stable hash of bytes (`DefaultHasher::new()` uses fixed keys: the same in every process).
fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A value with its encoding as `ProxyConfig` field(s) and the hash of that encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded<T> {
    /// The value.
    pub value: T,
    /// Its encoding as fields of `ProxyConfig`.
    pub bytes: Bytes,
    /// Hash of `bytes`.
    pub hash: u64,
}

impl<T> Encoded<T> {
    fn new(value: T, fields: pb::ProxyConfig) -> Self {
        let bytes = Bytes::from(fields.encode_to_vec());
        Self { hash: hash(&bytes), value, bytes }
    }
}

impl Encoded<Cluster> {
    /// A cluster as one `ProxyConfig.clusters` (= `ConfigDelta.clusters`) field.
    pub fn cluster(c: Cluster) -> Self {
        let fields = pb::ProxyConfig { clusters: vec![pb::Cluster::from(&c)], ..Default::default() };
        Self::new(c, fields)
    }
}

impl Encoded<Vec<VirtualHost>> {
    /// Virtual hosts as `ProxyConfig.virtual_hosts` fields.
    pub fn virtual_hosts(v: Vec<VirtualHost>) -> Self {
        let fields =
            pb::ProxyConfig { virtual_hosts: v.iter().map(pb::VirtualHost::from).collect(), ..Default::default() };
        Self::new(v, fields)
    }
}

/// One proxy config, encoded in parts.
#[derive(Debug)]
pub struct Rendered {
    /// Content version.
    pub version: String,
    /// The workload's own part: everything but virtual hosts and clusters.
    own: Bytes,
    outbound: Arc<Outbound>,
    /// Deltas from other versions of the same workload's config, by base version (`None`:
    /// no delta possible from that base).
    deltas: Mutex<HashMap<String, Option<Bytes>>>,
}

impl Rendered {
    /// Renders `workload`'s config from `snap`.
    pub fn new(snap: &Snapshot, workload: &Workload) -> Self {
        let (own, outbound) = translate::parts(snap, workload);
        Self::from_parts(&own, outbound)
    }

    fn from_parts(own: &ProxyConfig, outbound: Arc<Outbound>) -> Self {
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

/// The config of `workload`, computed once per snapshot however many proxies ask.
pub async fn rendered(snap: &Arc<Snapshot>, workload: &Workload) -> Arc<Rendered> {
    let cell = {
        let mut cells = snap.rendered.lock().unwrap_or_else(|e| e.into_inner());
        match cells.get(workload) {
            Some(c) => c.clone(),
            None => cells.entry(workload.clone()).or_default().clone(),
        }
    };
    cell.get_or_init(|| async { Arc::new(Rendered::new(snap, workload)) }).await.clone()
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
        }
    }

    fn outbound(clusters: &[Cluster]) -> Arc<Outbound> {
        let vh = VirtualHost { name: "a".into(), domains: vec!["a".into()], routes: Vec::new() };
        let map =
            clusters.iter().map(|c| (Arc::from(c.name.as_str()), Arc::new(Encoded::cluster(c.clone())))).collect();
        let clusters_hash = clusters.iter().fold(0u64, |h, c| h.wrapping_add(Encoded::cluster(c.clone()).hash));
        Arc::new(Outbound { virtual_hosts: Arc::new(Encoded::virtual_hosts(vec![vh])), clusters: map, clusters_hash })
    }

    fn own() -> ProxyConfig {
        translate::parts(&Snapshot::default(), &Workload::default()).0
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
