//! Access log: one line per HTTP request and per proxied TCP connection (Envoy's TCP form:
//! `"- - -"`, response code 0, bytes received from and sent to the client), in Envoy's
//! default text format (what `istioctl` users read) or as JSON. Lines go through a bounded
//! queue to one writer task, so a slow disk never blocks a request; when the queue is full the
//! line is dropped and counted (`skein_proxy_access_log_dropped_total`).

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

use serde::Serialize;
use skein_api::proxy::{AccessLog, AccessLogEncoding};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use crate::metrics::Metrics;

/// Lines waiting to be written before new ones are dropped.
const QUEUE: usize = 4096;

/// One logged request. Field names are Envoy's command operators.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Entry {
    /// Request start, RFC 3339.
    pub start_time: String,
    /// Method.
    pub method: String,
    /// Path as received.
    pub path: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Status sent.
    pub response_code: u16,
    /// Envoy response flags (`-`, `UO`, `NR`, ...).
    pub response_flags: String,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes (when known from the head; streamed bodies count 0).
    pub bytes_sent: u64,
    /// Milliseconds from start to response head.
    pub duration: u64,
    /// `x-forwarded-for`.
    pub x_forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `:authority` / Host.
    pub authority: Option<String>,
    /// Endpoint the request went to.
    pub upstream_host: Option<SocketAddr>,
    /// Cluster the request went to.
    pub upstream_cluster: Option<String>,
    /// Address the connection was accepted on (the original destination when captured).
    pub downstream_local_address: Option<SocketAddr>,
    /// Client address.
    pub downstream_remote_address: Option<SocketAddr>,
    /// Route name.
    pub route_name: Option<String>,
}

fn q(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn a(v: &Option<SocketAddr>) -> String {
    v.map_or_else(|| "-".into(), |a| a.to_string())
}

impl Entry {
    /// Envoy's default format:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    /// %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
    /// "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %DOWNSTREAM_LOCAL_ADDRESS%
    /// %DOWNSTREAM_REMOTE_ADDRESS% %ROUTE_NAME%` (operators Skein does not track are left out).
    pub fn text(&self) -> String {
        format!(
            "[{}] \"{} {} {}\" {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {}\n",
            self.start_time,
            self.method,
            self.path,
            self.protocol,
            self.response_code,
            self.response_flags,
            self.bytes_received,
            self.bytes_sent,
            self.duration,
            q(&self.x_forwarded_for),
            q(&self.user_agent),
            q(&self.request_id),
            q(&self.authority),
            a(&self.upstream_host),
            q(&self.upstream_cluster),
            a(&self.downstream_local_address),
            a(&self.downstream_remote_address),
            q(&self.route_name),
        )
    }
}

/// Handle for logging; cheap to clone.
#[derive(Clone)]
pub struct AccessLogger {
    tx: mpsc::Sender<(PathBuf, String)>,
    metrics: Metrics,
}

impl AccessLogger {
    /// Starts the writer task (needs a tokio runtime).
    pub fn start(metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(rx));
        Self { tx, metrics }
    }

    /// Queues `entry` for the log `config` names; drops it if the queue is full.
    pub fn log(&self, config: &AccessLog, entry: &Entry) {
        let line = match config.encoding {
            AccessLogEncoding::Text => entry.text(),
            AccessLogEncoding::Json => serde_json::to_string(entry).map(|s| s + "\n").unwrap_or_default(),
        };
        if self.tx.try_send((config.path.clone(), line)).is_err() {
            self.metrics.access_log_dropped.inc();
        }
    }
}

async fn writer(mut rx: mpsc::Receiver<(PathBuf, String)>) {
    let mut files: HashMap<PathBuf, tokio::fs::File> = HashMap::new();
    while let Some((path, line)) = rx.recv().await {
        if !files.contains_key(&path) {
            match tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await {
                Ok(f) => {
                    files.insert(path.clone(), f);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "access log not writable");
                    continue;
                }
            }
        }
        if let Some(f) = files.get_mut(&path)
            && f.write_all(line.as_bytes()).await.is_err()
        {
            // Reopen next time (the file may have been rotated away).
            files.remove(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_follow_envoys_default_field_order() {
        let e = Entry {
            start_time: "2026-11-21T10:00:00Z".into(),
            method: "GET".into(),
            path: "/reviews/1".into(),
            protocol: "HTTP/1.1".into(),
            response_code: 200,
            response_flags: "-".into(),
            bytes_received: 0,
            bytes_sent: 12,
            duration: 3,
            user_agent: Some("curl/8".into()),
            request_id: Some("abc".into()),
            authority: Some("reviews:9080".into()),
            upstream_host: Some("10.0.0.1:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080|v1|reviews".into()),
            downstream_remote_address: Some("10.0.0.2:5555".parse().unwrap()),
            route_name: Some("default".into()),
            ..Default::default()
        };
        assert_eq!(
            e.text(),
            "[2026-11-21T10:00:00Z] \"GET /reviews/1 HTTP/1.1\" 200 - 0 12 3 \"-\" \"curl/8\" \"abc\" \"reviews:9080\" \
             \"10.0.0.1:9080\" outbound|9080|v1|reviews - 10.0.0.2:5555 default\n"
        );
    }
}
