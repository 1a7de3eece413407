//! Virtual hosts and routes on the wire.

use super::{InvalidConfig, dur, pb, pb_dur};
use crate::proxy::*;

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
            .map(|d| WeightedDestination {
                cluster: d.cluster,
                weight: if d.weight == 0 { 100 } else { d.weight },
                headers: header_rules(d.headers),
            })
            .collect(),
        redirect,
        rewrite: r.rewrite.map(|w| Rewrite { uri: w.uri, authority: w.authority }),
        timeout: dur(format!("{at}.timeout"), r.timeout)?,
        retries,
        fault,
        mirror: r.mirror,
        mirror_percentage: r.mirror_percentage,
        headers: header_rules(r.headers),
    })
}

fn header_rules(h: Option<pb::HeaderRules>) -> HeaderRules {
    let ops = |o: Option<pb::HeaderOps>| {
        o.map(|o| HeaderOps { set: o.set.into_iter().collect(), add: o.add.into_iter().collect(), remove: o.remove })
            .unwrap_or_default()
    };
    h.map(|h| HeaderRules { request: ops(h.request), response: ops(h.response) }).unwrap_or_default()
}

fn pb_header_rules(h: &HeaderRules) -> Option<pb::HeaderRules> {
    let ops = |o: &HeaderOps| {
        (!o.is_empty()).then(|| pb::HeaderOps {
            set: o.set.clone().into_iter().collect(),
            add: o.add.clone().into_iter().collect(),
            remove: o.remove.clone(),
        })
    };
    (!h.is_empty()).then(|| pb::HeaderRules { request: ops(&h.request), response: ops(&h.response) })
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
            .map(|d| pb::WeightedDestination {
                cluster: d.cluster.clone(),
                weight: d.weight,
                headers: pb_header_rules(&d.headers),
            })
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
        headers: pb_header_rules(&r.headers),
    }
}
