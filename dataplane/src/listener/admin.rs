//! Admin endpoints: readiness (`/healthz/ready`), Prometheus metrics (`/stats/prometheus`),
//! the config dump (`/config_dump`) and Envoy's `/stats`, `/clusters` and `/drain_listeners`,
//! each on the listeners of its role.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::debug;

use super::{HEAD_TIMEOUT, envoy_admin};
use crate::{
    drain::{Drain, StopListeners},
    http::Body,
    metrics::Metrics,
    runtime::Runtime,
    store::Store,
};

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Which endpoints an admin listener serves. The config dump stays on the loopback admin
/// address; the status and metrics ports, reachable from outside the pod, serve only their one
/// path each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// `/config_dump`, `/stats`, `/clusters`, plus readiness and metrics (Envoy's 15000).
    Admin,
    /// `/healthz/ready` (Istio's 15021).
    Status,
    /// `/stats/prometheus` (Istio's 15090).
    Metrics,
}

/// Connections one admin listener serves at once: enough for probes and scrapes, and within
/// the descriptors the data-plane caps leave to the proxy itself, so a flood of one admin port
/// neither exhausts descriptors nor touches the data plane's places.
const ADMIN_CONNECTIONS: usize = 64;

/// Serves the endpoints of `role` on `listener` until aborted.
pub async fn serve_admin(listener: TcpListener, role: AdminRole, store: Store, metrics: Metrics, drain: Drain) {
    let places = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: wait for some to be freed rather than spin.
                debug!(?role, error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap: closed at once.
        let Ok(place) = places.clone().try_acquire_owned() else { continue };
        let (store, metrics, drain) = (store.clone(), metrics.clone(), drain.clone());
        tokio::spawn(async move {
            let _place = place;
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = match (role, req.uri().path()) {
                    (AdminRole::Admin | AdminRole::Status, "/healthz/ready" | "/ready") => {
                        match (drain.is_draining(), store.is_configured()) {
                            (true, _) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
                            (false, false) => text(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n".into()),
                            (false, true) => text(StatusCode::OK, "ready\n".into()),
                        }
                    }
                    (AdminRole::Admin | AdminRole::Metrics, "/stats/prometheus" | "/metrics") => {
                        text(StatusCode::OK, with_outlier_stats(metrics.render(), &store.current()))
                    }
                    (AdminRole::Admin, "/stats") => match envoy_admin::StatsQuery::parse(req.uri().query()) {
                        Ok(q) => text(StatusCode::OK, envoy_admin::stats(&store.current(), &q)),
                        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    (AdminRole::Admin, "/clusters") => text(StatusCode::OK, envoy_admin::clusters(&store.current())),
                    (AdminRole::Admin, "/drain_listeners") => drain_listeners(&req, &drain),
                    (AdminRole::Admin, "/config_dump") => {
                        let dump = serde_json::to_string_pretty(&store.current().config).unwrap_or_default();
                        text(StatusCode::OK, dump)
                    }
                    _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Envoy's `POST /drain_listeners[?inboundonly][&graceful]`: closes the listeners (all, or
/// the inbound ones), which stay closed; Istio's locality failover task uses it to make a
/// listed endpoint fail. `graceful` is accepted and changes nothing: the listeners close at
/// once and open connections finish on their own, as after Envoy's graceful period.
fn drain_listeners(req: &Request<Incoming>, drain: &Drain) -> Response<Body> {
    if req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "drain_listeners needs POST\n".into());
    }
    let mut which = StopListeners::All;
    for param in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match param.split('=').next().unwrap_or_default() {
            "inboundonly" => which = StopListeners::InboundOnly,
            "graceful" | "skip_exit" => {}
            other => return text(StatusCode::BAD_REQUEST, format!("drain_listeners: unknown parameter {other:?}\n")),
        }
    }
    drain.stop_listeners(which);
    text(StatusCode::OK, "OK\n".into())
}

/// Adds the outlier-detection series of every cluster that has it, read from the clusters at
/// scrape time (ejections expire on their own, so a gauge kept up to date by events would need
/// a timer per ejection): `envoy_cluster_outlier_detection_ejections_active` and
/// `envoy_cluster_outlier_detection_ejections_enforced_total`, labelled like Envoy's.
fn with_outlier_stats(mut text: String, runtime: &Runtime) -> String {
    let mut stats: Vec<(&str, usize, usize)> =
        runtime.clusters().filter_map(|u| u.ejection_stats().map(|(a, t)| (u.name.as_str(), a, t))).collect();
    if stats.is_empty() {
        return text;
    }
    stats.sort_unstable();
    // OpenMetrics text ends with `# EOF`: the series go before it.
    let eof = text.rfind("# EOF").unwrap_or(text.len());
    let tail = text.split_off(eof);
    let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
    text.push_str(
        "# HELP envoy_cluster_outlier_detection_ejections_active Endpoints ejected by outlier detection now.\n",
    );
    text.push_str("# TYPE envoy_cluster_outlier_detection_ejections_active gauge\n");
    for (name, active, _) in &stats {
        text.push_str(&format!(
            "envoy_cluster_outlier_detection_ejections_active{{cluster_name=\"{}\"}} {active}\n",
            label(name)
        ));
    }
    text.push_str(
        "# HELP envoy_cluster_outlier_detection_ejections_enforced Endpoints ejected by outlier detection.\n",
    );
    text.push_str("# TYPE envoy_cluster_outlier_detection_ejections_enforced counter\n");
    for (name, _, total) in &stats {
        text.push_str(&format!(
            "envoy_cluster_outlier_detection_ejections_enforced_total{{cluster_name=\"{}\"}} {total}\n",
            label(name)
        ));
    }
    text.push_str(&tail);
    text
}
