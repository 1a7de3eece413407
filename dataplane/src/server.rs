//! Listeners: the configured HTTP listeners (opened and closed as the config changes) and the
//! admin endpoints (`/healthz/ready`, `/stats/prometheus`, `/config_dump`).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use skein_api::proxy::{Listener, ListenerProtocol};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    http::{Body, Proxy},
    metrics::Metrics,
    store::Store,
    tcp,
};

/// Largest request head (request line and headers) accepted; a larger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// Time a client has to send a complete request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| proxy.clone().handle(req, port, peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Keeps the open listeners equal to the configured ones.
pub struct Listeners {
    proxy: Arc<Proxy>,
    store: Store,
    metrics: Metrics,
    open: HashMap<String, (Listener, JoinHandle<()>)>,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(proxy: Arc<Proxy>, store: Store, metrics: Metrics) -> Self {
        Self { proxy, store, metrics, open: HashMap::new() }
    }

    /// Opens new listeners and closes removed or moved ones. A listener that cannot bind is
    /// reported and skipped; the others still serve.
    pub async fn sync(&mut self, wanted: &[Listener]) -> Vec<String> {
        let mut errors = Vec::new();
        self.open.retain(|name, (addr, task)| {
            // `addr` is the whole listener as opened: any change reopens it.
            let keep = wanted.iter().any(|l| l == &*addr);
            if !keep {
                task.abort();
                info!(listener = %name, "closed listener");
            }
            keep
        });
        for l in wanted {
            if self.open.contains_key(&l.name) {
                continue;
            }
            match TcpListener::bind(l.address).await {
                Ok(sock) => {
                    let addr = sock.local_addr().unwrap_or(l.address);
                    info!(listener = %l.name, %addr, "listening");
                    let task = match (l.protocol, &l.cluster) {
                        (ListenerProtocol::Tcp, Some(c)) => tokio::spawn(tcp::serve(
                            sock,
                            tcp::Mode::Cluster(c.clone()),
                            self.store.clone(),
                            self.metrics.clone(),
                        )),
                        (ListenerProtocol::AutoPassthrough, _) => tokio::spawn(tcp::serve(
                            sock,
                            tcp::Mode::SniPassthrough,
                            self.store.clone(),
                            self.metrics.clone(),
                        )),
                        _ => tokio::spawn(serve_http(sock, self.proxy.clone())),
                    };
                    self.open.insert(l.name.clone(), (l.clone(), task));
                }
                Err(e) => errors.push(format!("listeners[{}]: bind {}: {e}", l.name, l.address)),
            }
        }
        errors
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, (_, task)) in self.open.drain() {
            task.abort();
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Serves the admin endpoints on `listener` until aborted.
pub async fn serve_admin(listener: TcpListener, store: Store, metrics: Metrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = match req.uri().path() {
                    "/healthz/ready" | "/ready" => text(StatusCode::OK, "ready\n".into()),
                    "/stats/prometheus" | "/metrics" => text(StatusCode::OK, metrics.render()),
                    "/config_dump" => {
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
