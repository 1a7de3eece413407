//! Per-route filters before forwarding: fault injection (delay, then abort, as Envoy's fault
//! filter), redirects, rewrites and header edits.

use std::time::Instant;

use hyper::{
    StatusCode, Uri,
    header::{self, HeaderValue},
};
use skein_api::proxy::{HeaderOps, Route};

use super::{Outcome, ResponseFlag, full, headers::split_port};

/// Applies header edits in Envoy's order: `remove`, then `set` (overwrite or add), then `add`
/// (append). The config was validated, so every name and value parses.
pub(super) fn edit_headers(headers: &mut hyper::HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    let parsed = |(n, v): (&String, &String)| {
        Some((header::HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
    };
    for (name, value) in ops.set.iter().filter_map(parsed) {
        headers.insert(name, value);
    }
    for (name, value) in ops.add.iter().filter_map(parsed) {
        headers.append(name, value);
    }
}

pub(super) fn hit(percentage: f64) -> bool {
    percentage >= 100.0 || fastrand::f64() * 100.0 < percentage
}

/// Applies the route's faults: a delay (counted against the route timeout: past the deadline
/// the request times out), then an abort. `Some` is the answer when the request goes no further.
pub(super) async fn fault(r: &Route, deadline: Option<Instant>) -> Option<Outcome> {
    let f = r.fault.as_ref()?;
    if let Some(d) = f.delay.as_ref().filter(|d| hit(d.percentage)) {
        match deadline {
            Some(dl) if Instant::now() + d.fixed_delay > dl => {
                tokio::time::sleep_until(dl.into()).await;
                return Some(Outcome::timeout());
            }
            _ => tokio::time::sleep(d.fixed_delay).await,
        }
    }
    let a = f.abort.as_ref().filter(|a| hit(a.percentage))?;
    let status = StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(Outcome::local(status, "fault filter abort\n", ResponseFlag::FaultInjected))
}

pub(super) fn redirect_to(redirect: &skein_api::proxy::Redirect, authority: &str, uri: &Uri, https: bool) -> Outcome {
    let mut r = full(StatusCode::from_u16(redirect.redirect_code).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
    if let Ok(v) = HeaderValue::from_str(&location(redirect, authority, uri, https)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Outcome { response: r, flag: ResponseFlag::None, upstream: None }
}

/// The `Location` of a redirect, as Envoy builds it: the scheme, host, port and path the
/// redirect names replace the request's. A scheme change without a port drops the request's
/// port (the new scheme's default); a default port is not written. A path without a query
/// keeps the request's query.
fn location(redirect: &skein_api::proxy::Redirect, authority: &str, uri: &Uri, https: bool) -> String {
    let from = if https { "https" } else { "http" };
    let scheme = redirect.scheme.as_deref().unwrap_or(from);
    let (req_host, req_port) = split_port(authority);
    let (host, authority_port) = match redirect.authority.as_deref() {
        Some(a) => split_port(a),
        None => (req_host, None),
    };
    let port = redirect.port.or(authority_port).or(if scheme == from { req_port } else { None });
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &redirect.uri {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => uri.query().map_or_else(|| p.clone(), |q| format!("{p}?{q}")),
        None => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

/// Applies the route's rewrite: the matched prefix (or the whole path) and the authority.
pub(super) fn rewrite(r: &Route, uri: &Uri, matched_prefix: Option<&str>, authority: String) -> (String, String) {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let Some(rw) = &r.rewrite else {
        return (format!("{path}{query}"), authority);
    };
    let new_path = match (&rw.uri, matched_prefix) {
        (Some(to), Some(prefix)) => format!("{to}{}", &path[prefix.len().min(path.len())..]),
        (Some(to), None) => to.clone(),
        (None, _) => path.to_string(),
    };
    (format!("{new_path}{query}"), rw.authority.clone().unwrap_or(authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_replace_scheme_host_port_and_path_as_envoy_does() {
        use skein_api::proxy::Redirect;
        let uri: Uri = "/a?x=1".parse().unwrap();
        let r = |scheme: Option<&str>, authority: Option<&str>, port: Option<u16>, path: Option<&str>| Redirect {
            scheme: scheme.map(Into::into),
            authority: authority.map(Into::into),
            port,
            uri: path.map(Into::into),
            redirect_code: 301,
        };
        // httpsRedirect: the scheme changes, the request's port goes, path and query stay.
        assert_eq!(location(&r(Some("https"), None, None, None), "shop:8080", &uri, false), "https://shop/a?x=1");
        assert_eq!(location(&r(None, None, None, None), "shop:8080", &uri, false), "http://shop:8080/a?x=1");
        assert_eq!(location(&r(None, None, None, None), "shop", &uri, true), "https://shop/a?x=1");
        assert_eq!(
            location(&r(None, Some("new"), None, Some("/b")), "shop:8080", &uri, false),
            "http://new:8080/b?x=1"
        );
        assert_eq!(location(&r(None, None, Some(9443), Some("/b?y")), "shop", &uri, false), "http://shop:9443/b?y");
        assert_eq!(location(&r(Some("https"), None, Some(443), None), "shop", &uri, false), "https://shop/a?x=1");
        assert_eq!(location(&r(Some("http"), None, None, None), "[::1]:8443", &uri, true), "http://[::1]/a?x=1");
    }

    #[test]
    fn header_edits_remove_then_set_then_add() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-old", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("a"));
        h.insert("x-over", HeaderValue::from_static("before"));
        let ops: HeaderOps = serde_yaml::from_str(
            "{remove: [x-old, x-set-and-removed], set: {x-over: after, x-set-and-removed: kept}, add: {x-keep: b}}",
        )
        .unwrap();
        edit_headers(&mut h, &ops);
        assert!(h.get("x-old").is_none());
        assert_eq!(h["x-over"], "after");
        // Removal comes first: a header both removed and set ends up set.
        assert_eq!(h["x-set-and-removed"], "kept");
        let kept: Vec<_> = h.get_all("x-keep").iter().collect();
        assert_eq!(kept, ["a", "b"], "add appends");
    }

    #[test]
    fn rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        let route = Route {
            rewrite: Some(skein_api::proxy::Rewrite { uri: Some("/v2/".into()), authority: Some("new".into()) }),
            ..Default::default()
        };
        let uri: Uri = "/api/items?x=1".parse().unwrap();
        assert_eq!(rewrite(&route, &uri, Some("/api/"), "old".into()), ("/v2/items?x=1".into(), "new".into()));
        assert_eq!(rewrite(&route, &uri, None, "old".into()).0, "/v2/?x=1");
    }
}
