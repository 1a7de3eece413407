use prost::Message;

use super::*;

/// Every field of the model set at least once, so a field dropped by a conversion shows.
const EVERYTHING: &str = r#"
version: "7"
outboundTrafficPolicy: REGISTRY_ONLY
identity: {certChain: /etc/certs/chain.pem, privateKey: /etc/certs/key.pem, rootCert: /etc/certs/root.pem}
accessLog: {path: /dev/stdout, encoding: JSON}
nameTable: [{host: reviews.default.global, addresses: ["240.0.0.7", "fd00::7"]}]
listeners:
  - name: outbound
    address: "0.0.0.0:15001"
    protocol: AUTO
    capture: OUTBOUND
  - name: inbound
    address: "0.0.0.0:15006"
    protocol: AUTO
    capture: INBOUND
    peerAuthentication: STRICT
    authorization:
      - name: default/deny-admin
        action: DENY
        rules:
          - from: [{source: {principals: ["a"], notPrincipals: ["b"], namespaces: ["c"], notNamespaces: ["d"], ipBlocks: ["10.0.0.0/8"], notIpBlocks: ["10.1.0.0/16"]}}]
            to: [{operation: {hosts: ["h"], notHosts: ["i"], ports: ["80"], notPorts: ["81"], methods: ["GET"], notMethods: ["PUT"], paths: ["/a*"], notPaths: ["/b"]}}]
            when: [{key: "request.headers[x]", values: ["1"], notValues: ["2"]}]
  - name: https
    address: "0.0.0.0:8443"
    serverTls:
      credentials: [{hosts: ["*.example.com"], certChain: /c.pem, privateKey: /k.pem}]
      caCertificates: /ca.pem
  - name: passthrough
    address: "0.0.0.0:9443"
    protocol: TLS
    tlsRoutes: [{sniHosts: ["db.example.com"], cluster: db}]
  - {name: db, address: "127.0.0.1:3306", protocol: TCP, cluster: db}
  - {name: eastwest, address: "0.0.0.0:15443", protocol: AUTO_PASSTHROUGH, passthroughHosts: ["*.local", reviews.default.svc.cluster.local]}
virtualHosts:
  - name: reviews
    domains: [reviews]
    routes:
      - name: jason
        match: [{uri: {prefix: /r}, method: {exact: GET}, headers: {end-user: {regex: "ja.*"}}, port: 9080}]
        route: [{cluster: db, weight: 30}, {cluster: web, weight: 70}]
        rewrite: {uri: /x, authority: y}
        timeout: 1500ms
        retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}
        fault: {delay: {fixedDelay: 2s, percentage: 50}, abort: {httpStatus: 503, percentage: 10}}
        mirror: web
        mirrorPercentage: 25
      - name: moved
        redirect: {uri: /new, authority: other, redirectCode: 302}
clusters:
  - name: db
    endpoints: ["10.0.0.1:3306", "[fd00::1]:3306"]
    connectTimeout: 250ms
    loadBalancer: {consistentHash: {httpCookie: {name: user}}}
    connectionPool: {maxConnections: 1, http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRetries: 4, maxRequestsPerConnection: 5}
    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/db/sa/db"], sni: db.local}
    http2: true
    serviceAddresses: ["10.96.0.10:3306"]
    failover: [["192.0.2.20:15443"], ["192.0.2.30:15443", "192.0.2.31:15443"]]
  - {name: web, endpoints: ["10.0.0.2:80"], loadBalancer: {simple: LEAST_REQUEST}, tls: {mode: SIMPLE}}
"#;

fn everything() -> ProxyConfig {
    let c: ProxyConfig = serde_yaml::from_str(EVERYTHING).unwrap();
    c.validate().unwrap();
    c
}

fn decode(bytes: &[u8]) -> Result<ProxyConfig, InvalidConfig> {
    ProxyConfig::try_from(pb::ProxyConfig::decode(bytes).unwrap())
}

#[test]
fn every_field_survives_encoding_to_protobuf_bytes_and_back() {
    let c = everything();
    let bytes = pb::ProxyConfig::from(&c).encode_to_vec();
    assert_eq!(decode(&bytes).unwrap(), c);
}

#[test]
fn defaults_survive_the_round_trip() {
    let c: ProxyConfig = serde_yaml::from_str(
        "listeners: [{name: l, address: '127.0.0.1:1'}]\nclusters: [{name: c}]\nvirtualHosts: [{name: v, domains: ['*'], routes: [{route: [{cluster: c}]}]}]",
    )
    .unwrap();
    assert_eq!(decode(&pb::ProxyConfig::from(&c).encode_to_vec()).unwrap(), c);
}

#[test]
fn an_empty_message_decodes_to_the_default_config() {
    assert_eq!(decode(&[]).unwrap(), ProxyConfig::default());
}

fn wire_err(mutate: impl FnOnce(&mut pb::ProxyConfig)) -> String {
    let mut m = pb::ProxyConfig::from(&everything());
    mutate(&mut m);
    ProxyConfig::try_from(m).unwrap_err().to_string()
}

#[test]
fn malformed_wire_fields_are_rejected_naming_the_field() {
    let e = wire_err(|m| m.clusters[0].endpoints[1] = "nope".into());
    assert_eq!(e, r#"clusters[db].endpoints[1]: "nope" is not an ip:port address"#);
    let e = wire_err(|m| m.listeners[0].address = "10.0.0.1".into());
    assert!(e.starts_with("listeners[outbound].address:"), "{e}");
    let e = wire_err(|m| m.listeners[1].peer_authentication = 42);
    assert_eq!(e, "listeners[inbound].peerAuthentication: unknown enum value 42");
    let e = wire_err(|m| m.virtual_hosts[0].routes[0].r#match[0].uri = Some(pb::StringMatch { match_type: None }));
    assert!(e.starts_with("virtualHosts[reviews].routes[0].match[0].uri: a string match needs"), "{e}");
    let e = wire_err(|m| m.virtual_hosts[0].routes[0].r#match[0].port = Some(70000));
    assert_eq!(e, "virtualHosts[reviews].routes[0].match[0].port: 70000 is not a port");
    let e =
        wire_err(|m| m.virtual_hosts[0].routes[0].fault.as_mut().unwrap().delay.as_mut().unwrap().fixed_delay = None);
    assert_eq!(e, "virtualHosts[reviews].routes[0].fault.delay.fixedDelay: required");
    let e = wire_err(|m| {
        m.virtual_hosts[0].routes[0].timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 });
    });
    assert!(e.starts_with("virtualHosts[reviews].routes[0].timeout: invalid duration"), "{e}");
    let e = wire_err(|m| m.clusters[1].tls.as_mut().unwrap().mode = 9);
    assert_eq!(e, "clusters[web].tls.mode: unknown enum value 9");
}
