//! Istio's locality failover task, the proxies' part, with `skein-proxy` processes: a client
//! sidecar whose helloworld cluster has the four priority levels the control plane computes
//! for `sleep` in region1/zone1 (its translation tests check that order), helloworld's four
//! sidecars in front of their apps, and the task's way to make a locality fail — `POST
//! /drain_listeners` on that locality's sidecar (`skein-proxy request POST drain_listeners`,
//! as `curl -X POST 127.0.0.1:15000/drain_listeners` on Envoy). Traffic must stay in the
//! nearest locality while it answers and move down one level per drained one.

mod common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
    time::Duration,
};

use common::{
    free_port,
    process::{Proc, eventually, get, start_proxy},
};

/// An app answering every request with `Hello version: <version>`, as Istio's helloworld does.
fn hello_app(version: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                // One request per connection: read its head, answer, close.
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("Hello version: {version}\n");
                let _ =
                    write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    port
}

/// `skein-proxy request <method> <path>` against the admin on `admin`: (exit success, output).
fn admin(admin: u16, method: &str, path: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skein-proxy"))
        .args(["request", method, path, "--admin-addr", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The version that answered one request through the client's sidecar, or `None`.
fn hello(port: u16) -> Option<String> {
    let (status, body) = get(port, "helloworld.sample:5000", "/hello")?;
    (status == 200).then(|| body.trim().trim_start_matches("Hello version: ").to_string())
}

#[test]
fn traffic_fails_over_locality_by_locality_as_each_is_drained() {
    let dir = std::env::temp_dir().join(format!("skein-locality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let localities = ["region1.zone1", "region1.zone2", "region2.zone3", "region3.zone4"];
    // helloworld's sidecars: an inbound listener each, in front of its app.
    let mut sidecars = Vec::new();
    for (i, version) in localities.into_iter().enumerate() {
        let app = hello_app(version);
        let (inbound, admin_port) = (free_port(), free_port());
        let config = dir.join(format!("helloworld-{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listeners: [{{name: inbound, address: '127.0.0.1:{inbound}'}}]\nvirtualHosts: [{{name: in, domains: ['*'], routes: [{{route: [{{cluster: app}}]}}]}}]\nclusters: [{{name: app, endpoints: ['127.0.0.1:{app}']}}]\n"
            ),
        )
        .unwrap();
        let proc = start_proxy(&config, [admin_port, free_port(), free_port()], &[]);
        sidecars.push((proc, inbound, admin_port));
    }
    // The client's sidecar: the cluster the control plane translates the task's
    // DestinationRule into for sleep in region1/zone1 — one level per locality, nearest first,
    // outlier detection as written (consecutive5xxErrors 1, interval 1s, baseEjectionTime 1m),
    // one request per connection. maxEjectionPercent is 100 here: with Envoy's default (10%)
    // only the first locality could be ejected, and in the task the later ones leave because
    // the drained pods go unready and drop out of the endpoints (the real-cluster part, which
    // the proxy's readiness below covers).
    let at = |i: usize| format!("'127.0.0.1:{}'", sidecars[i].1);
    let cluster = "outbound|5000||helloworld.sample.svc.cluster.local";
    let outbound = free_port();
    let client = dir.join("sleep.yaml");
    std::fs::write(
        &client,
        format!(
            "listeners: [{{name: outbound, address: '127.0.0.1:{outbound}'}}]\nvirtualHosts: [{{name: helloworld, domains: ['*'], routes: [{{route: [{{cluster: '{cluster}'}}]}}]}}]\nclusters: [{{name: '{cluster}', endpoints: [{}], failover: [[{}], [{}], [{}]], connectionPool: {{maxRequestsPerConnection: 1}}, outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}}}}]\n",
            at(0),
            at(1),
            at(2),
            at(3)
        ),
    )
    .unwrap();
    let client_admin = free_port();
    let _client = start_proxy(&client, [client_admin, free_port(), free_port()], &[]);
    eventually("helloworld through the client's sidecar", Duration::from_secs(20), || hello(outbound).is_some());

    // Istio's admin rules: draining is a POST, and an unknown option is refused.
    let (ok, out) = admin(sidecars[0].2, "GET", "drain_listeners");
    assert!(!ok && out.contains("405"), "GET must not drain: {out}");
    let (ok, out) = admin(sidecars[0].2, "POST", "drain_listeners?everything");
    assert!(!ok && out.contains("400") && out.contains("everything"), "{out}");

    for (i, version) in localities.into_iter().enumerate() {
        // Traffic stays in the nearest locality that answers.
        for _ in 0..10 {
            assert_eq!(hello(outbound).as_deref(), Some(version), "level {i}");
        }
        if i + 1 == localities.len() {
            break;
        }
        let (sidecar_admin, inbound) = (sidecars[i].2, sidecars[i].1);
        let status = |admin_port: u16| get(admin_port, "localhost", "/healthz/ready").map(|r| r.0);
        assert_eq!(status(sidecar_admin), Some(200));
        let (ok, out) = admin(sidecar_admin, "POST", "drain_listeners");
        assert!(ok, "drain_listeners: {out}");
        // The drained sidecar refuses connections and reports not ready (so Kubernetes takes
        // the pod out of the endpoints, as it does with Envoy's readiness listener closed).
        eventually("listener closed", Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", inbound)).is_err()
        });
        assert_eq!(status(sidecar_admin), Some(503));
        // The first call may fail (it is what ejects the endpoint); then the next locality.
        let next = localities[i + 1];
        eventually(next, Duration::from_secs(10), || hello(outbound).as_deref() == Some(next));
    }
    // Ejections are visible as Envoy names them.
    let (_, stats) = admin(client_admin, "GET", "stats/prometheus");
    assert!(
        stats.contains(&format!("envoy_cluster_outlier_detection_ejections_active{{cluster_name=\"{cluster}\"}} 3")),
        "{stats}"
    );
}

#[test]
fn inbound_only_drain_keeps_outbound_listeners_and_readiness() {
    let dir = std::env::temp_dir().join(format!("skein-locality-inbound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = hello_app("v1");
    let (inbound, outbound, admin_port) = (free_port(), free_port(), free_port());
    let config = dir.join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: virtualInbound, address: '127.0.0.1:{inbound}', capture: INBOUND, protocol: AUTO}}, {{name: out, address: '127.0.0.1:{outbound}'}}]\nvirtualHosts: [{{name: in, domains: ['*'], routes: [{{route: [{{cluster: app}}]}}]}}]\nclusters: [{{name: app, endpoints: ['127.0.0.1:{app}']}}]\n"
        ),
    )
    .unwrap();
    let _p: Proc = start_proxy(&config, [admin_port, free_port(), free_port()], &[]);
    eventually("outbound listener", Duration::from_secs(20), || get(outbound, "app", "/").is_some_and(|r| r.0 == 200));
    let (ok, out) = admin(admin_port, "POST", "drain_listeners?inboundonly");
    assert!(ok, "{out}");
    eventually("inbound closed", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", inbound)).is_err()
    });
    assert_eq!(get(outbound, "app", "/").map(|r| r.0), Some(200), "outbound still serves");
    assert_eq!(get(admin_port, "localhost", "/healthz/ready").map(|r| r.0), Some(200), "still ready");
}
