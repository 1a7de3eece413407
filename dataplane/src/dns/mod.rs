//! The sidecar's DNS proxy (Istio's DNS proxying): the pod's DNS queries to its nameservers are
//! redirected here (`init-iptables --redirect-dns-port`), mesh hosts of the name table the
//! control plane sends are answered with their virtual IPs, and everything else is forwarded to
//! the pod's own nameservers. This is how `reviews.default.global` resolves in a client pod with
//! no CoreDNS edit.
//!
//! Messages are parsed and built with hickory-proto; [`answer`] is the pure decision (fuzzed),
//! [`server`] the sockets.

pub mod server;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};
use skein_api::proxy::NameEntry;

/// TTL of the answers for mesh hosts, Istio's: short, because a virtual IP can change.
pub const TTL: u32 = 30;

/// The hosts the proxy answers for, with their addresses by family.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NameTable {
    hosts: HashMap<String, Addresses>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Addresses {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl NameTable {
    /// The table of a config's `nameTable` (hosts already validated lower case).
    pub fn new(entries: &[NameEntry]) -> Self {
        let mut hosts: HashMap<String, Addresses> = HashMap::with_capacity(entries.len());
        for e in entries {
            let a = hosts.entry(e.host.clone()).or_default();
            for ip in &e.addresses {
                match ip {
                    IpAddr::V4(v4) => a.v4.push(*v4),
                    IpAddr::V6(v6) => a.v6.push(*v6),
                }
            }
        }
        Self { hosts }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Send this reply (encoded).
    Reply(Vec<u8>),
    /// Not a mesh host: forward the query unchanged to the pod's nameservers.
    Forward,
    /// Not a DNS message at all (too short to carry an id): nothing to answer.
    Drop,
}

/// Decides what to do with the DNS message `query`. Answered: A/AAAA queries (class IN) for a
/// host of `table`, or for such a host with one of the pod's `search` suffixes appended (the
/// resolver tries `reviews.default.global.default.svc.cluster.local` first when `ndots` asks
/// for it: answered with a CNAME to the host, so the lookup ends at the first query instead of
/// walking the search list through the cluster's DNS). A known host asked for the other
/// address family gets an empty answer (NODATA), as from an authoritative server. A message
/// that does not parse gets FORMERR. Everything else is forwarded.
pub fn answer(query: &[u8], table: &NameTable, search: &[String]) -> Decision {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 2 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
        Err(_) => return Decision::Drop,
    };
    if req.metadata.message_type != MessageType::Query || req.metadata.op_code != OpCode::Query {
        return Decision::Forward;
    }
    let [q] = req.queries.as_slice() else { return Decision::Forward };
    if q.query_class() != DNSClass::IN || !matches!(q.query_type(), RecordType::A | RecordType::AAAA) {
        return Decision::Forward;
    }
    let asked = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let (host, addrs) = match table.hosts.get_key_value(&asked) {
        Some(found) => found,
        None => {
            let stripped = search.iter().find_map(|s| {
                let s = s.trim_end_matches('.');
                let base = asked.strip_suffix(s)?.strip_suffix('.')?;
                table.hosts.get_key_value(base)
            });
            match stripped {
                Some(found) => found,
                None => return Decision::Forward,
            }
        }
    };
    let Ok(target) = Name::from_ascii(format!("{host}.")) else { return Decision::Forward };
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(Query::query(q.name().clone(), q.query_type()));
    if *host != asked {
        resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::CNAME(CNAME(target.clone()))));
    }
    let records: Vec<RData> = match q.query_type() {
        RecordType::A => addrs.v4.iter().map(|ip| RData::A(A(*ip))).collect(),
        _ => addrs.v6.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
    };
    for r in records {
        resp.add_answer(Record::from_rdata(target.clone(), TTL, r));
    }
    encode(resp)
}

/// SERVFAIL for `query` (the nameservers did not answer), when it carries an id.
pub fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    match encode(Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)) {
        Decision::Reply(b) => Some(b),
        _ => None,
    }
}

fn encode(m: Message) -> Decision {
    m.to_vec().map_or(Decision::Drop, Decision::Reply)
}

#[cfg(test)]
mod tests;
