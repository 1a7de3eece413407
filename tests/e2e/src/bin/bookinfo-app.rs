//! A stand-in for a Bookinfo service in e2e tests: answers every request with a JSON report
//! of who it is (service, version), the client certificate header its sidecar added, and the
//! answers of the services it calls in turn (forwarding `end-user`, as Bookinfo does).
//! `GET /count` reports how many requests it served (mirroring shows up there).
//! `GET /fault?status=503` makes every later request (but these two) answer that status, as a
//! broken but still listed backend would; `/fault?status=0` ends it.
//!
//! `bookinfo-app <service> <version> <listen addr> [<name>=<host:port> ...]`: each call goes to
//! the given address (an IP, or a name resolved by the pod's DNS) with `Host: <name>:<port>`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct App {
    service: String,
    version: String,
    calls: Vec<(String, String)>,
    served: AtomicU64,
    /// Status every request gets while non-zero.
    fault: std::sync::atomic::AtomicU16,
}

async fn call(name: &str, addr: &str, end_user: Option<&str>) -> Value {
    let port = addr.rsplit_once(':').map_or("80", |(_, p)| p);
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get("/").header("host", format!("{name}:{port}"));
        if let Some(u) = end_user {
            req = req.header("end-user", u);
        }
        let resp = sender.send_request(req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?).await;
        let resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let body =
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        Ok::<_, String>(json!({"status": status, "body": body}))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"status": 0, "error": e}),
        Err(_) => json!({"status": 0, "error": "timeout"}),
    }
}

async fn handle(app: Arc<App>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/count" {
        let n = app.served.load(Ordering::Relaxed);
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    if req.uri().path() == "/fault" {
        let status = req.uri().query().and_then(|q| q.strip_prefix("status=")).and_then(|s| s.parse().ok());
        let Some(status) = status.filter(|s: &u16| *s == 0 || (200..600).contains(s)) else {
            let mut bad = Response::new(Full::new(Bytes::from("want /fault?status=<0 or 200..599>\n")));
            *bad.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(bad);
        };
        app.fault.store(status, Ordering::Relaxed);
        return Ok(Response::new(Full::new(Bytes::from(format!("fault {status}\n")))));
    }
    let fault = app.fault.load(Ordering::Relaxed);
    if fault != 0 {
        let mut resp = Response::new(Full::new(Bytes::from("fault injected by the test\n")));
        *resp.status_mut() = hyper::StatusCode::from_u16(fault).unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
        return Ok(resp);
    }
    app.served.fetch_add(1, Ordering::Relaxed);
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let end_user = header("end-user");
    let mut calls = serde_json::Map::new();
    for (name, addr) in &app.calls {
        calls.insert(name.clone(), call(name, addr, end_user.as_deref()).await);
    }
    let body = json!({
        "service": app.service,
        "version": app.version,
        "host": header("host"),
        "xfcc": header("x-forwarded-client-cert"),
        "calls": calls,
    });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [service, version, listen, calls @ ..] = &args[..] else {
        eprintln!("usage: bookinfo-app <service> <version> <listen addr> [<name>=<host:port> ...]");
        std::process::exit(2);
    };
    let calls = calls
        .iter()
        .map(|c| {
            let (n, a) = c.split_once('=').expect("call is <name>=<host:port>");
            (n.to_string(), a.to_string())
        })
        .collect();
    let app = Arc::new(App {
        service: service.clone(),
        version: version.clone(),
        calls,
        served: AtomicU64::new(0),
        fault: std::sync::atomic::AtomicU16::new(0),
    });
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await.expect("bind");
    eprintln!("{service} {version} listening on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
