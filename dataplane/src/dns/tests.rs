use std::net::SocketAddr;

use hickory_proto::op::Message;

use super::{server::Upstream, *};

fn table() -> NameTable {
    NameTable::new(&[
        NameEntry { host: "reviews.default.global".into(), addresses: vec!["240.0.0.3".parse().unwrap()] },
        NameEntry {
            host: "dual.default.global".into(),
            addresses: vec!["240.0.0.4".parse().unwrap(), "fd00::4".parse().unwrap()],
        },
    ])
}

const SEARCH: &[&str] = &["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];

fn search() -> Vec<String> {
    SEARCH.iter().map(|s| s.to_string()).collect()
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn reply(d: Decision) -> Message {
    match d {
        Decision::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("not answered: {other:?}"),
    }
}

fn answers(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| format!("{} {}", r.name, r.data)).collect()
}

#[test]
fn a_mesh_host_is_answered_with_its_virtual_ip() {
    let m = reply(answer(&query("reviews.default.global.", RecordType::A), &table(), &search()));
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(answers(&m), vec!["reviews.default.global. 240.0.0.3"]);
    assert_eq!(m.answers[0].ttl, TTL);
    // Case does not matter in DNS names.
    let m = reply(answer(&query("Reviews.Default.GLOBAL.", RecordType::A), &table(), &search()));
    assert_eq!(answers(&m).len(), 1);
}

#[test]
fn the_search_path_form_gets_a_cname_to_the_host_and_its_address() {
    let m =
        reply(answer(&query("reviews.default.global.default.svc.cluster.local.", RecordType::A), &table(), &search()));
    assert_eq!(
        answers(&m),
        vec![
            "reviews.default.global.default.svc.cluster.local. reviews.default.global.",
            "reviews.default.global. 240.0.0.3"
        ]
    );
    // A suffix the pod does not search is not stripped.
    assert_eq!(
        answer(&query("reviews.default.global.example.com.", RecordType::A), &table(), &search()),
        Decision::Forward
    );
}

#[test]
fn the_other_address_family_of_a_mesh_host_is_an_empty_answer_not_a_forward() {
    let m = reply(answer(&query("reviews.default.global.", RecordType::AAAA), &table(), &search()));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = reply(answer(&query("dual.default.global.", RecordType::AAAA), &table(), &search()));
    assert_eq!(answers(&m), vec!["dual.default.global. fd00::4"]);
}

#[test]
fn everything_else_is_forwarded_and_garbage_gets_formerr() {
    for (name, t) in [("example.com.", RecordType::A), ("reviews.default.global.", RecordType::TXT)] {
        assert_eq!(answer(&query(name, t), &table(), &search()), Decision::Forward, "{name} {t}");
    }
    // Truncated message: FORMERR with the id it carried.
    let q = query("reviews.default.global.", RecordType::A);
    let m = reply(answer(&q[..q.len() - 3], &table(), &search()));
    assert_eq!((m.metadata.id, m.metadata.response_code), (4242, ResponseCode::FormErr));
    assert_eq!(answer(&[7], &table(), &search()), Decision::Drop);
    assert_eq!(answer(&[], &NameTable::default(), &[]), Decision::Drop);
}

#[test]
fn resolv_conf_gives_nameservers_and_search_suffixes() {
    let u = Upstream::parse(
        b"search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
    )
    .unwrap();
    assert_eq!(u.nameservers, vec!["10.96.0.10:53".parse::<SocketAddr>().unwrap()]);
    assert_eq!(u.search, search());
    assert_eq!(Upstream::parse(b"search a\n").unwrap_err(), "resolv.conf: no nameserver");
}

/// The server answers mesh hosts itself, relays everything else to the nameserver (a socket of
/// this test on loopback) over UDP and TCP, and answers SERVFAIL when the nameserver is silent.
#[tokio::test]
async fn the_server_answers_mesh_hosts_and_forwards_the_rest_over_udp_and_tcp() {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, UdpSocket},
    };
    // The "cluster DNS": answers every query with one A record 192.0.2.1, on UDP and TCP.
    let upstream_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = upstream_udp.local_addr().unwrap().port();
    let upstream_tcp = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let fake = |q: &[u8]| {
        let req = Message::from_vec(q).unwrap();
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.add_query(req.queries[0].clone());
        m.add_answer(Record::from_rdata(req.queries[0].name().clone(), 5, RData::A(A([192, 0, 2, 1].into()))));
        m.to_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = upstream_udp.recv_from(&mut buf).await {
            let _ = upstream_udp.send_to(&fake(&buf[..n]), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut c, _)) = upstream_tcp.accept().await {
            let len = c.read_u16().await.unwrap() as usize;
            let mut q = vec![0; len];
            c.read_exact(&mut q).await.unwrap();
            let r = fake(&q);
            c.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
            c.write_all(&r).await.unwrap();
        }
    });

    let store = crate::store::Store::new(skein_api::proxy::ProxyConfig {
        name_table: vec![NameEntry {
            host: "reviews.default.global".into(),
            addresses: vec!["240.0.0.3".parse().unwrap()],
        }],
        ..Default::default()
    })
    .unwrap();
    let up = Upstream { nameservers: vec![SocketAddr::from(([127, 0, 0, 1], port))], search: search() };
    let server = server::Server::bind("127.0.0.1:0".parse().unwrap(), up).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(store));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |name: &'static str| {
        let client = &client;
        async move {
            client.send_to(&query(name, RecordType::A), addr).await.unwrap();
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf)).await.unwrap().unwrap();
            Message::from_vec(&buf[..n]).unwrap()
        }
    };
    assert_eq!(answers(&ask("reviews.default.global.").await), vec!["reviews.default.global. 240.0.0.3"]);
    assert_eq!(answers(&ask("example.com.").await), vec!["example.com. 192.0.2.1"]);

    // TCP: a mesh host and a forwarded name on one connection.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (name, want) in [("reviews.default.global.", "240.0.0.3"), ("example.org.", "192.0.2.1")] {
        let q = query(name, RecordType::A);
        c.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        c.write_all(&q).await.unwrap();
        let len = c.read_u16().await.unwrap() as usize;
        let mut r = vec![0; len];
        c.read_exact(&mut r).await.unwrap();
        assert_eq!(answers(&Message::from_vec(&r).unwrap()), vec![format!("{name} {want}")]);
    }
}

#[tokio::test]
async fn a_silent_nameserver_gets_the_client_servfail() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ns = silent.local_addr().unwrap();
    let started = std::time::Instant::now();
    let reply = server::forward_udp_for_test(&[ns], &query("example.com.", RecordType::A)).await;
    assert!(reply.is_none());
    assert!(started.elapsed() < Duration::from_secs(4), "bounded by the upstream timeout");
    let fail = Message::from_vec(&server_failure(&query("example.com.", RecordType::A)).unwrap()).unwrap();
    assert_eq!((fail.metadata.id, fail.metadata.response_code), (4242, ResponseCode::ServFail));
}

use std::time::Duration;
