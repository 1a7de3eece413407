//! Clusters on the wire.

use super::{InvalidConfig, addr, dur, enum_of, pb, pb_dur};
use crate::proxy::*;

impl TryFrom<pb::Cluster> for Cluster {
    type Error = InvalidConfig;

    fn try_from(c: pb::Cluster) -> Result<Self, InvalidConfig> {
        let at = |f: &str| format!("clusters[{}].{f}", c.name);
        // Each "ip:port" list, with the index of a bad entry in the error.
        let addrs = |field: &str, list: &[String]| -> Result<Vec<std::net::SocketAddr>, InvalidConfig> {
            list.iter().enumerate().map(|(i, e)| addr(at(&format!("{field}[{i}]")), e)).collect()
        };
        let endpoints = addrs("endpoints", &c.endpoints)?;
        let service_addresses = addrs("serviceAddresses", &c.service_addresses)?;
        // Priority 1 stays in `failover_endpoints`, which proxies of earlier releases read;
        // the levels after it follow in `later_failover`.
        let mut failover = Vec::new();
        if !c.failover_endpoints.is_empty() {
            failover.push(addrs("failoverEndpoints", &c.failover_endpoints)?);
        }
        for (i, level) in c.later_failover.iter().enumerate() {
            if failover.is_empty() {
                return Err(invalid(at("laterFailover"), "set without failoverEndpoints"));
            }
            let level = addrs(&format!("laterFailover[{i}].endpoints"), &level.endpoints)?;
            if level.is_empty() {
                return Err(invalid(at(&format!("laterFailover[{i}]")), "an empty priority level"));
            }
            failover.push(level);
        }
        let load_balancer = match c.load_balancer.and_then(|l| l.policy) {
            None => LoadBalancer::RoundRobin,
            Some(pb::load_balancer::Policy::Simple(s)) => {
                match enum_of::<pb::load_balancer::Simple>(at("loadBalancer.simple"), s)? {
                    pb::load_balancer::Simple::Unspecified | pb::load_balancer::Simple::RoundRobin => {
                        LoadBalancer::RoundRobin
                    }
                    pb::load_balancer::Simple::LeastRequest => LoadBalancer::LeastRequest,
                    pb::load_balancer::Simple::Random => LoadBalancer::Random,
                }
            }
            Some(pb::load_balancer::Policy::HttpHeaderName(h)) => {
                LoadBalancer::ConsistentHash(HashKey::HttpHeaderName(h.to_ascii_lowercase()))
            }
            Some(pb::load_balancer::Policy::HttpCookie(n)) => LoadBalancer::ConsistentHash(HashKey::HttpCookie(n)),
            Some(pb::load_balancer::Policy::UseSourceIp(true)) => LoadBalancer::ConsistentHash(HashKey::UseSourceIp),
            Some(pb::load_balancer::Policy::UseSourceIp(false)) => {
                return Err(invalid(at("loadBalancer.useSourceIp"), "must be true when set"));
            }
        };
        let outlier_detection = c
            .outlier_detection
            .map(|o| {
                Ok::<_, InvalidConfig>(OutlierDetection {
                    consecutive_5xx_errors: o.consecutive_5xx_errors,
                    consecutive_gateway_errors: o.consecutive_gateway_errors,
                    interval: dur(at("outlierDetection.interval"), o.interval)?,
                    base_ejection_time: dur(at("outlierDetection.baseEjectionTime"), o.base_ejection_time)?,
                    max_ejection_percent: o.max_ejection_percent,
                    min_health_percent: o.min_health_percent,
                })
            })
            .transpose()?;
        let tls = c
            .tls
            .map(|t| {
                let mode = match enum_of::<pb::ClientTlsMode>(at("tls.mode"), t.mode)? {
                    pb::ClientTlsMode::Unspecified | pb::ClientTlsMode::ClientDisable => ClientTlsMode::Disable,
                    pb::ClientTlsMode::Simple => ClientTlsMode::Simple,
                    pb::ClientTlsMode::IstioMutual => ClientTlsMode::IstioMutual,
                };
                Ok::<_, InvalidConfig>(ClusterTls { mode, subject_alt_names: t.subject_alt_names, sni: t.sni })
            })
            .transpose()?;
        Ok(Cluster {
            endpoints,
            connect_timeout: dur(at("connectTimeout"), c.connect_timeout)?,
            load_balancer,
            connection_pool: c.connection_pool.map(|p| ConnectionPool {
                max_connections: p.max_connections,
                http1_max_pending_requests: p.http1_max_pending_requests,
                http2_max_requests: p.http2_max_requests,
                max_retries: p.max_retries,
                max_requests_per_connection: p.max_requests_per_connection,
            }),
            outlier_detection,
            tls,
            http2: c.http2,
            service_addresses,
            failover,
            name: c.name,
        })
    }
}

impl From<&Cluster> for pb::Cluster {
    fn from(c: &Cluster) -> Self {
        use pb::load_balancer::{Policy, Simple};
        let policy = match &c.load_balancer {
            LoadBalancer::RoundRobin => Policy::Simple(Simple::RoundRobin as i32),
            LoadBalancer::LeastRequest => Policy::Simple(Simple::LeastRequest as i32),
            LoadBalancer::Random => Policy::Simple(Simple::Random as i32),
            LoadBalancer::ConsistentHash(HashKey::HttpHeaderName(h)) => Policy::HttpHeaderName(h.clone()),
            LoadBalancer::ConsistentHash(HashKey::HttpCookie(n)) => Policy::HttpCookie(n.clone()),
            LoadBalancer::ConsistentHash(HashKey::UseSourceIp) => Policy::UseSourceIp(true),
        };
        pb::Cluster {
            name: c.name.clone(),
            endpoints: c.endpoints.iter().map(ToString::to_string).collect(),
            connect_timeout: pb_dur(c.connect_timeout),
            load_balancer: Some(pb::LoadBalancer { policy: Some(policy) }),
            connection_pool: c.connection_pool.as_ref().map(|p| pb::ConnectionPool {
                max_connections: p.max_connections,
                http1_max_pending_requests: p.http1_max_pending_requests,
                http2_max_requests: p.http2_max_requests,
                max_retries: p.max_retries,
                max_requests_per_connection: p.max_requests_per_connection,
            }),
            outlier_detection: c.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
                consecutive_5xx_errors: o.consecutive_5xx_errors,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: pb_dur(o.interval),
                base_ejection_time: pb_dur(o.base_ejection_time),
                max_ejection_percent: o.max_ejection_percent,
                min_health_percent: o.min_health_percent,
            }),
            tls: c.tls.as_ref().map(|t| pb::ClusterTls {
                mode: match t.mode {
                    ClientTlsMode::Disable => pb::ClientTlsMode::ClientDisable,
                    ClientTlsMode::Simple => pb::ClientTlsMode::Simple,
                    ClientTlsMode::IstioMutual => pb::ClientTlsMode::IstioMutual,
                } as i32,
                subject_alt_names: t.subject_alt_names.clone(),
                sni: t.sni.clone(),
            }),
            http2: c.http2,
            service_addresses: c.service_addresses.iter().map(ToString::to_string).collect(),
            failover_endpoints: c.failover.first().into_iter().flatten().map(ToString::to_string).collect(),
            later_failover: c
                .failover
                .iter()
                .skip(1)
                .map(|l| pb::EndpointList { endpoints: l.iter().map(ToString::to_string).collect() })
                .collect(),
        }
    }
}
