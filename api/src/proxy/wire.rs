//! The protobuf wire form of the proxy configuration (`proto/skein/proxy/v1/proxy.proto`) and
//! its conversions. Decoding is `TryFrom` with [`InvalidConfig`] naming the field, so a
//! malformed push is NACKed with a reason; semantic checks stay in `ProxyConfig::validate`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::*;

/// Generated messages and tonic services.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("skein.proxy.v1");
}

fn addr(path: String, s: &str) -> Result<SocketAddr, InvalidConfig> {
    s.parse().map_err(|_| invalid(path, format!("{s:?} is not an ip:port address")))
}

fn dur(path: String, d: Option<prost_types::Duration>) -> Result<Option<Duration>, InvalidConfig> {
    d.map(|d| Duration::try_from(d).map_err(|e| invalid(path, format!("invalid duration: {e}")))).transpose()
}

fn pb_dur(d: Option<Duration>) -> Option<prost_types::Duration> {
    d.and_then(|d| prost_types::Duration::try_from(d).ok())
}

/// Decodes a proto enum field: unknown numbers are an error (a newer control plane must not be
/// half-understood silently).
fn enum_of<E: TryFrom<i32>>(path: String, v: i32) -> Result<E, InvalidConfig> {
    E::try_from(v).map_err(|_| invalid(path, format!("unknown enum value {v}")))
}

impl TryFrom<pb::ProxyConfig> for ProxyConfig {
    type Error = InvalidConfig;

    fn try_from(c: pb::ProxyConfig) -> Result<Self, InvalidConfig> {
        let outbound_traffic_policy =
            match enum_of::<pb::OutboundPolicy>("outboundTrafficPolicy".into(), c.outbound_traffic_policy)? {
                pb::OutboundPolicy::Unspecified | pb::OutboundPolicy::AllowAny => OutboundPolicy::AllowAny,
                pb::OutboundPolicy::RegistryOnly => OutboundPolicy::RegistryOnly,
            };
        Ok(ProxyConfig {
            version: c.version,
            outbound_traffic_policy,
            listeners: c.listeners.into_iter().map(Listener::try_from).collect::<Result<_, _>>()?,
            virtual_hosts: c.virtual_hosts.into_iter().map(VirtualHost::try_from).collect::<Result<_, _>>()?,
            clusters: c.clusters.into_iter().map(Cluster::try_from).collect::<Result<_, _>>()?,
            identity: c.identity.map(|i| IdentityFiles {
                cert_chain: i.cert_chain.into(),
                private_key: i.private_key.into(),
                root_cert: i.root_cert.into(),
            }),
            access_log: c
                .access_log
                .map(|a| {
                    let encoding = match enum_of::<pb::AccessLogEncoding>("accessLog.encoding".into(), a.encoding)? {
                        pb::AccessLogEncoding::Json => AccessLogEncoding::Json,
                        _ => AccessLogEncoding::Text,
                    };
                    Ok::<_, InvalidConfig>(AccessLog { path: a.path.into(), encoding })
                })
                .transpose()?,
        })
    }
}

impl From<&ProxyConfig> for pb::ProxyConfig {
    fn from(c: &ProxyConfig) -> Self {
        pb::ProxyConfig {
            version: c.version.clone(),
            outbound_traffic_policy: match c.outbound_traffic_policy {
                OutboundPolicy::AllowAny => pb::OutboundPolicy::AllowAny,
                OutboundPolicy::RegistryOnly => pb::OutboundPolicy::RegistryOnly,
            } as i32,
            listeners: c.listeners.iter().map(Into::into).collect(),
            virtual_hosts: c.virtual_hosts.iter().map(Into::into).collect(),
            clusters: c.clusters.iter().map(Into::into).collect(),
            identity: c.identity.as_ref().map(|i| pb::IdentityFiles {
                cert_chain: path_str(&i.cert_chain),
                private_key: path_str(&i.private_key),
                root_cert: path_str(&i.root_cert),
            }),
            access_log: c.access_log.as_ref().map(|a| pb::AccessLog {
                path: path_str(&a.path),
                encoding: match a.encoding {
                    AccessLogEncoding::Text => pb::AccessLogEncoding::Text,
                    AccessLogEncoding::Json => pb::AccessLogEncoding::Json,
                } as i32,
            }),
        }
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

impl TryFrom<pb::Listener> for Listener {
    type Error = InvalidConfig;

    fn try_from(l: pb::Listener) -> Result<Self, InvalidConfig> {
        let at = |f: &str| format!("listeners[{}].{f}", l.name);
        let protocol = match enum_of::<pb::ListenerProtocol>(at("protocol"), l.protocol)? {
            pb::ListenerProtocol::Unspecified | pb::ListenerProtocol::Http => ListenerProtocol::Http,
            pb::ListenerProtocol::Tcp => ListenerProtocol::Tcp,
            pb::ListenerProtocol::AutoPassthrough => ListenerProtocol::AutoPassthrough,
            pb::ListenerProtocol::Tls => ListenerProtocol::Tls,
            pb::ListenerProtocol::Auto => ListenerProtocol::Auto,
        };
        let capture = match enum_of::<pb::Capture>(at("capture"), l.capture)? {
            pb::Capture::Unspecified => None,
            pb::Capture::Outbound => Some(Capture::Outbound),
            pb::Capture::Inbound => Some(Capture::Inbound),
        };
        Ok(Listener {
            address: addr(at("address"), &l.address)?,
            protocol,
            cluster: l.cluster,
            peer_authentication: peer_auth(at("peerAuthentication"), l.peer_authentication)?,
            port_peer_authentication: l
                .port_peer_authentication
                .into_iter()
                .map(|(port, mode)| {
                    let at = at(&format!("portPeerAuthentication[{port}]"));
                    let port = u16::try_from(port).map_err(|_| invalid(at.clone(), "not a port number"))?;
                    Ok((port, peer_auth(at, mode)?))
                })
                .collect::<Result<_, InvalidConfig>>()?,
            authorization: l
                .authorization
                .into_iter()
                .map(|p| authz_policy(&at("authorization"), p))
                .collect::<Result<_, _>>()?,
            capture,
            server_tls: l.server_tls.map(|t| ServerTls {
                credentials: t
                    .credentials
                    .into_iter()
                    .map(|c| ServerCredential {
                        hosts: c.hosts,
                        cert_chain: c.cert_chain.into(),
                        private_key: c.private_key.into(),
                        inline: c.inline.map(|i| InlineCredential {
                            cert_chain: i.cert_chain,
                            private_key: SecretPem(i.private_key),
                            ca_certificates: i.ca_certificates,
                        }),
                    })
                    .collect(),
                ca_certificates: t.ca_certificates.map(PathBuf::from),
            }),
            tls_routes: l
                .tls_routes
                .into_iter()
                .map(|r| TlsRoute { sni_hosts: r.sni_hosts, cluster: r.cluster })
                .collect(),
            name: l.name,
        })
    }
}

fn peer_auth(path: String, v: i32) -> Result<PeerAuthMode, InvalidConfig> {
    Ok(match enum_of::<pb::PeerAuthMode>(path, v)? {
        pb::PeerAuthMode::Unspecified | pb::PeerAuthMode::Disable => PeerAuthMode::Disable,
        pb::PeerAuthMode::Permissive => PeerAuthMode::Permissive,
        pb::PeerAuthMode::Strict => PeerAuthMode::Strict,
    })
}

fn pb_peer_auth(m: PeerAuthMode) -> i32 {
    (match m {
        PeerAuthMode::Disable => pb::PeerAuthMode::Disable,
        PeerAuthMode::Permissive => pb::PeerAuthMode::Permissive,
        PeerAuthMode::Strict => pb::PeerAuthMode::Strict,
    }) as i32
}

fn authz_policy(at: &str, p: pb::AuthorizationPolicy) -> Result<AuthorizationPolicy, InvalidConfig> {
    let action = match enum_of::<pb::AuthzAction>(format!("{at}[{}].action", p.name), p.action)? {
        pb::AuthzAction::Unspecified | pb::AuthzAction::Allow => AuthzAction::Allow,
        pb::AuthzAction::Deny => AuthzAction::Deny,
    };
    let rules = p
        .rules
        .into_iter()
        .map(|r| AuthzRule {
            from: r
                .from
                .into_iter()
                .map(|s| AuthzFrom {
                    source: AuthzSource {
                        principals: s.principals,
                        not_principals: s.not_principals,
                        namespaces: s.namespaces,
                        not_namespaces: s.not_namespaces,
                        ip_blocks: s.ip_blocks,
                        not_ip_blocks: s.not_ip_blocks,
                    },
                })
                .collect(),
            to: r
                .to
                .into_iter()
                .map(|o| AuthzTo {
                    operation: AuthzOperation {
                        hosts: o.hosts,
                        not_hosts: o.not_hosts,
                        ports: o.ports,
                        not_ports: o.not_ports,
                        methods: o.methods,
                        not_methods: o.not_methods,
                        paths: o.paths,
                        not_paths: o.not_paths,
                    },
                })
                .collect(),
            when: r
                .when
                .into_iter()
                .map(|c| AuthzCondition { key: c.key, values: c.values, not_values: c.not_values })
                .collect(),
        })
        .collect();
    Ok(AuthorizationPolicy { name: p.name, action, rules })
}

impl From<&Listener> for pb::Listener {
    fn from(l: &Listener) -> Self {
        pb::Listener {
            name: l.name.clone(),
            address: l.address.to_string(),
            protocol: match l.protocol {
                ListenerProtocol::Http => pb::ListenerProtocol::Http,
                ListenerProtocol::Tcp => pb::ListenerProtocol::Tcp,
                ListenerProtocol::AutoPassthrough => pb::ListenerProtocol::AutoPassthrough,
                ListenerProtocol::Tls => pb::ListenerProtocol::Tls,
                ListenerProtocol::Auto => pb::ListenerProtocol::Auto,
            } as i32,
            cluster: l.cluster.clone(),
            peer_authentication: pb_peer_auth(l.peer_authentication),
            port_peer_authentication: l
                .port_peer_authentication
                .iter()
                .map(|(port, mode)| (u32::from(*port), pb_peer_auth(*mode)))
                .collect(),
            authorization: l.authorization.iter().map(Into::into).collect(),
            capture: match l.capture {
                None => pb::Capture::Unspecified,
                Some(Capture::Outbound) => pb::Capture::Outbound,
                Some(Capture::Inbound) => pb::Capture::Inbound,
            } as i32,
            server_tls: l.server_tls.as_ref().map(|t| pb::ServerTls {
                credentials: t
                    .credentials
                    .iter()
                    .map(|c| pb::ServerCredential {
                        hosts: c.hosts.clone(),
                        cert_chain: path_str(&c.cert_chain),
                        private_key: path_str(&c.private_key),
                        inline: c.inline.as_ref().map(|i| pb::InlineCredential {
                            cert_chain: i.cert_chain.clone(),
                            private_key: i.private_key.0.clone(),
                            ca_certificates: i.ca_certificates.clone(),
                        }),
                    })
                    .collect(),
                ca_certificates: t.ca_certificates.as_deref().map(path_str),
            }),
            tls_routes: l
                .tls_routes
                .iter()
                .map(|r| pb::TlsRoute { sni_hosts: r.sni_hosts.clone(), cluster: r.cluster.clone() })
                .collect(),
        }
    }
}

impl From<&AuthorizationPolicy> for pb::AuthorizationPolicy {
    fn from(p: &AuthorizationPolicy) -> Self {
        pb::AuthorizationPolicy {
            name: p.name.clone(),
            action: match p.action {
                AuthzAction::Allow => pb::AuthzAction::Allow,
                AuthzAction::Deny => pb::AuthzAction::Deny,
            } as i32,
            rules: p
                .rules
                .iter()
                .map(|r| pb::AuthzRule {
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            let s = &f.source;
                            pb::AuthzSource {
                                principals: s.principals.clone(),
                                not_principals: s.not_principals.clone(),
                                namespaces: s.namespaces.clone(),
                                not_namespaces: s.not_namespaces.clone(),
                                ip_blocks: s.ip_blocks.clone(),
                                not_ip_blocks: s.not_ip_blocks.clone(),
                            }
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| {
                            let o = &t.operation;
                            pb::AuthzOperation {
                                hosts: o.hosts.clone(),
                                not_hosts: o.not_hosts.clone(),
                                ports: o.ports.clone(),
                                not_ports: o.not_ports.clone(),
                                methods: o.methods.clone(),
                                not_methods: o.not_methods.clone(),
                                paths: o.paths.clone(),
                                not_paths: o.not_paths.clone(),
                            }
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| pb::AuthzCondition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::VirtualHost> for VirtualHost {
    type Error = InvalidConfig;

    fn try_from(v: pb::VirtualHost) -> Result<Self, InvalidConfig> {
        let at = format!("virtualHosts[{}]", v.name);
        let routes = v
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| route(&format!("{at}.routes[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(VirtualHost { name: v.name, domains: v.domains, routes })
    }
}

fn string_match(path: String, m: pb::StringMatch) -> Result<StringMatch, InvalidConfig> {
    use pb::string_match::MatchType;
    match m.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
        Some(MatchType::Regex(v)) => Ok(StringMatch::Regex(v)),
        None => Err(invalid(path, "a string match needs exactly one of exact, prefix, regex")),
    }
}

fn pb_string_match(m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::MatchType;
    pb::StringMatch {
        match_type: Some(match m {
            StringMatch::Exact(v) => MatchType::Exact(v.clone()),
            StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
            StringMatch::Regex(v) => MatchType::Regex(v.clone()),
        }),
    }
}

fn route(at: &str, r: pb::Route) -> Result<Route, InvalidConfig> {
    let mut matches = Vec::with_capacity(r.r#match.len());
    for (i, m) in r.r#match.into_iter().enumerate() {
        let mat = format!("{at}.match[{i}]");
        let port = m
            .port
            .map(|p| u16::try_from(p).map_err(|_| invalid(format!("{mat}.port"), format!("{p} is not a port"))))
            .transpose()?;
        matches.push(RouteMatch {
            uri: m.uri.map(|u| string_match(format!("{mat}.uri"), u)).transpose()?,
            method: m.method.map(|u| string_match(format!("{mat}.method"), u)).transpose()?,
            headers: m
                .headers
                .into_iter()
                .map(|(k, v)| Ok((k.clone(), string_match(format!("{mat}.headers[{k}]"), v)?)))
                .collect::<Result<_, InvalidConfig>>()?,
            port,
        });
    }
    let fault = r
        .fault
        .map(|f| {
            let delay = f
                .delay
                .map(|d| {
                    let fixed_delay = dur(format!("{at}.fault.delay.fixedDelay"), d.fixed_delay)?
                        .ok_or_else(|| invalid(format!("{at}.fault.delay.fixedDelay"), "required"))?;
                    Ok::<_, InvalidConfig>(Delay { fixed_delay, percentage: d.percentage.unwrap_or(100.0) })
                })
                .transpose()?;
            let abort =
                f.abort.map(|a| Abort { http_status: a.http_status as u16, percentage: a.percentage.unwrap_or(100.0) });
            if f.abort.is_some_and(|a| a.http_status > u32::from(u16::MAX)) {
                return Err(invalid(format!("{at}.fault.abort.httpStatus"), "not an HTTP status"));
            }
            Ok(Fault { delay, abort })
        })
        .transpose()?;
    let redirect =
        r.redirect
            .map(|d| {
                let code = match d.redirect_code {
                    0 => 301,
                    c => u16::try_from(c)
                        .map_err(|_| invalid(format!("{at}.redirect.redirectCode"), "not a 3xx status"))?,
                };
                let port = match d.port {
                    0 => None,
                    p => Some(u16::try_from(p).map_err(|_| invalid(format!("{at}.redirect.port"), "not a port"))?),
                };
                Ok::<_, InvalidConfig>(Redirect {
                    uri: d.uri,
                    authority: d.authority,
                    redirect_code: code,
                    scheme: d.scheme,
                    port,
                })
            })
            .transpose()?;
    let retries = r
        .retries
        .map(|t| {
            Ok::<_, InvalidConfig>(RetryPolicy {
                attempts: t.attempts,
                per_try_timeout: dur(format!("{at}.retries.perTryTimeout"), t.per_try_timeout)?,
                retry_on: if t.retry_on.is_empty() { default_retry_on() } else { t.retry_on },
            })
        })
        .transpose()?;
    Ok(Route {
        name: r.name,
        matches,
        route: r
            .route
            .into_iter()
            .map(|d| WeightedDestination { cluster: d.cluster, weight: if d.weight == 0 { 100 } else { d.weight } })
            .collect(),
        redirect,
        rewrite: r.rewrite.map(|w| Rewrite { uri: w.uri, authority: w.authority }),
        timeout: dur(format!("{at}.timeout"), r.timeout)?,
        retries,
        fault,
        mirror: r.mirror,
        mirror_percentage: r.mirror_percentage,
    })
}

impl From<&VirtualHost> for pb::VirtualHost {
    fn from(v: &VirtualHost) -> Self {
        pb::VirtualHost {
            name: v.name.clone(),
            domains: v.domains.clone(),
            routes: v.routes.iter().map(pb_route).collect(),
        }
    }
}

fn pb_route(r: &Route) -> pb::Route {
    pb::Route {
        name: r.name.clone(),
        r#match: r
            .matches
            .iter()
            .map(|m| pb::RouteMatch {
                uri: m.uri.as_ref().map(pb_string_match),
                method: m.method.as_ref().map(pb_string_match),
                headers: m.headers.iter().map(|(k, v)| (k.clone(), pb_string_match(v))).collect(),
                port: m.port.map(u32::from),
            })
            .collect(),
        route: r
            .route
            .iter()
            .map(|d| pb::WeightedDestination { cluster: d.cluster.clone(), weight: d.weight })
            .collect(),
        redirect: r.redirect.as_ref().map(|d| pb::Redirect {
            uri: d.uri.clone(),
            authority: d.authority.clone(),
            redirect_code: u32::from(d.redirect_code),
            scheme: d.scheme.clone(),
            port: d.port.map_or(0, u32::from),
        }),
        rewrite: r.rewrite.as_ref().map(|w| pb::Rewrite { uri: w.uri.clone(), authority: w.authority.clone() }),
        timeout: pb_dur(r.timeout),
        retries: r.retries.as_ref().map(|t| pb::RetryPolicy {
            attempts: t.attempts,
            per_try_timeout: pb_dur(t.per_try_timeout),
            retry_on: t.retry_on.clone(),
        }),
        fault: r.fault.as_ref().map(|f| pb::Fault {
            delay: f
                .delay
                .as_ref()
                .map(|d| pb::Delay { fixed_delay: pb_dur(Some(d.fixed_delay)), percentage: Some(d.percentage) }),
            abort: f
                .abort
                .as_ref()
                .map(|a| pb::Abort { http_status: u32::from(a.http_status), percentage: Some(a.percentage) }),
        }),
        mirror: r.mirror.clone(),
        mirror_percentage: r.mirror_percentage,
    }
}

impl TryFrom<pb::ConfigDelta> for ConfigDelta {
    type Error = InvalidConfig;

    fn try_from(d: pb::ConfigDelta) -> Result<Self, InvalidConfig> {
        Ok(ConfigDelta {
            clusters: d.clusters.into_iter().map(Cluster::try_from).collect::<Result<_, _>>()?,
            removed_clusters: d.removed_clusters,
        })
    }
}

impl From<&ConfigDelta> for pb::ConfigDelta {
    fn from(d: &ConfigDelta) -> Self {
        pb::ConfigDelta {
            clusters: d.clusters.iter().map(pb::Cluster::from).collect(),
            removed_clusters: d.removed_clusters.clone(),
        }
    }
}

impl TryFrom<pb::Cluster> for Cluster {
    type Error = InvalidConfig;

    fn try_from(c: pb::Cluster) -> Result<Self, InvalidConfig> {
        let at = |f: &str| format!("clusters[{}].{f}", c.name);
        let endpoints = c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| addr(at(&format!("endpoints[{i}]")), e))
            .collect::<Result<_, _>>()?;
        let service_addresses = c
            .service_addresses
            .iter()
            .enumerate()
            .map(|(i, e)| addr(at(&format!("serviceAddresses[{i}]")), e))
            .collect::<Result<_, _>>()?;
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
        }
    }
}

#[cfg(test)]
mod tests;
