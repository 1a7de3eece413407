#!/usr/bin/env bash
# `make run FEDERATION=1`: two local clusters with real nodes on separate networks ("east" and
# "west": their pods reach only each other's LoadBalancer addresses), federated by Skein, and
# Istio's multi-cluster version-routing scenario on them with no hand-written `.global`
# object and no shared CA: reviews v1 runs in cluster1, v2 and v3 in cluster2; cluster2 exports
# reviews (a label), each cluster registers the other (skeinctl create-remote-secret), and a
# VirtualService in cluster1 sends the user jason to reviews.default.global (cluster2, through
# its east-west gateway on 15443) and everyone else to the local v1. Shows what the operator
# generated, the peers' status, requests through cluster1's ingress gateway, and a pod calling
# reviews.default.global by name (local first, cluster2 when cluster1's reviews is gone).
#
# The operators run as processes on this machine (not as pods): each reaches the other
# cluster's apiserver at the 127.0.0.1 address its remote Secret names. On real clusters the
# operator runs in-cluster and the Secret names an address the other cluster can reach
# (skeinctl create-remote-secret --server).
#
# SKEIN_RUN_EXIT_WHEN_READY=1 stops once the traffic was shown (CI's smoke test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

SKEIN_IMAGE_PROFILE=${SKEIN_IMAGE_PROFILE:-dev} "$here/images.sh" >/dev/null
cargo build -q -p skeinctl -p skein-operator
skeinctl="$root/target/debug/skeinctl"
bin=$("$here/tools.sh")
logs=$(mktemp -d /tmp/skein-federation.XXXX)

declare -A kc pid
cleanup() {
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping the operators and clusters..."
  for c in cluster1 cluster2; do
    [ -n "${pid[$c]:-}" ] && kill "${pid[$c]}" 2>/dev/null || true
    "$here/cluster.sh" down "fed-$c" || true
  done
  echo "stopped (operator logs: $logs)."
}
trap cleanup INT TERM EXIT

kc[cluster1]=$(SKEIN_NODE=real SKEIN_NETWORK=east "$here/cluster.sh" up fed-cluster1)
kc[cluster2]=$(SKEIN_NODE=real SKEIN_NETWORK=west "$here/cluster.sh" up fed-cluster2)
k() { local c=$1; shift; "$bin/kubectl" --kubeconfig "${kc[$c]}" "$@"; }
fail() {
  echo "$1" >&2
  for c in cluster1 cluster2; do k "$c" get pods -A -o wide >&2 || true; tail -20 "$logs/operator-$c.log" >&2 || true; done
  exit 1
}

echo "== the operator and a MeshControlPlane in each cluster"
port=18480
for c in cluster1 cluster2; do
  k "$c" apply --server-side -k config/crd >/dev/null
  # What the operator's install brings besides the CRD: the ClusterRoles it binds the control
  # plane (and peers' readers) to, and the mesh namespace, which the operator never creates.
  k "$c" apply --server-side -f config/rbac/role.yaml >/dev/null
  k "$c" create namespace istio-system >/dev/null
  KUBECONFIG=${kc[$c]} "$root/target/debug/skein-operator" --leader-elect=false \
    --metrics-addr "127.0.0.1:$port" --image-registry skein.local/skein >"$logs/operator-$c.log" 2>&1 &
  pid[$c]=$!
  port=$((port + 1))
done
k cluster1 wait --for=condition=Established crd/meshcontrolplanes.mesh.skein.dev --timeout=60s >/dev/null
k cluster2 wait --for=condition=Established crd/meshcontrolplanes.mesh.skein.dev --timeout=60s >/dev/null
k cluster1 apply -f - >/dev/null <<'YAML'
apiVersion: mesh.skein.dev/v1alpha1
kind: MeshControlPlane
metadata: {name: default}
spec:
  tag: dev
  multiCluster: {clusterName: cluster1, network: east}
YAML
k cluster2 apply -f - >/dev/null <<'YAML'
apiVersion: mesh.skein.dev/v1alpha1
kind: MeshControlPlane
metadata: {name: default}
spec:
  tag: dev
  multiCluster: {clusterName: cluster2, network: west}
  components: {eastWestGateway: {enabled: true}}
YAML
for c in cluster1 cluster2; do
  deadline=$((SECONDS + 240))
  until [ "$(k "$c" get mcp default -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; do
    [ $SECONDS -lt $deadline ] || fail "$c: not Ready after 240s"
    sleep 1
  done
done
k cluster2 get pods,services -n istio-system

echo
echo "== each cluster registers the other (skeinctl create-remote-secret | kubectl apply)"
"$skeinctl" --kubeconfig "${kc[cluster2]}" create-remote-secret | k cluster1 apply -f -
"$skeinctl" --kubeconfig "${kc[cluster1]}" create-remote-secret | k cluster2 apply -f -
for c in cluster1 cluster2; do
  deadline=$((SECONDS + 60))
  until [ "$(k "$c" get configmap istio-ca-root-cert -n default -o jsonpath='{.data.root-cert\.pem}' | grep -c 'BEGIN CERTIFICATE')" = 2 ]; do
    [ $SECONDS -lt $deadline ] || fail "$c: the peer's root did not reach the trust bundle"
    sleep 1
  done
done

echo
echo "== Bookinfo: reviews v1 in cluster1; reviews v2, v3 and ratings in cluster2 (exported)"
for c in cluster1 cluster2; do
  k "$c" label namespace default istio-injection=enabled >/dev/null
  k "$c" apply -n default -f config/samples/bookinfo/bookinfo.yaml >/dev/null
done
k cluster1 delete deployment reviews-v2 reviews-v3 ratings-v1 -n default >/dev/null
k cluster2 delete deployment productpage-v1 details-v1 reviews-v1 -n default >/dev/null
k cluster2 label service reviews ratings -n default mesh.skein.dev/export=true >/dev/null
k cluster2 apply -f config/samples/federation/cluster2-reviews.yaml >/dev/null
k cluster1 apply -n default -f config/samples/bookinfo/bookinfo-gateway.yaml >/dev/null
k cluster1 apply -f config/samples/federation/cluster1-reviews.yaml >/dev/null
k cluster1 apply -f config/samples/federation/global-client.yaml >/dev/null
for c in cluster1 cluster2; do
  k "$c" wait --for=condition=Available deployment --all -n default --timeout=180s >/dev/null ||
    fail "$c: Bookinfo did not become available"
done

echo
echo "== what the operator in cluster1 generated (kubectl get serviceentries,destinationrules -n istio-system)"
k cluster1 get serviceentries,destinationrules -n istio-system
echo
echo "== cluster1's view of its peer (status.remoteClusters)"
k cluster1 get mcp default -o jsonpath='{range .status.remoteClusters[*]}{.name}: {.conditions[0].type}={.conditions[0].status} ({.conditions[0].reason}), network {.network}, gateway {.gatewayAddresses}, {.exportedServices} exported, trust bundle {.trustBundleFingerprint}{"\n"}{end}'

lb=$(k cluster1 get service skein-ingressgateway -n istio-system -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
summary() {
  curl -sf -m 10 ${1:+-H "end-user: $1"} "http://$lb/productpage" | python3 -c '
import json, sys
d = json.load(sys.stdin)
r = d["calls"]["reviews"]
if r["status"] != 200:
    print("productpage -> reviews: HTTP", r["status"]); sys.exit(0)
b = r["body"]
print("productpage (cluster1) -> reviews " + b["version"] + "   (reviews saw caller " + (b.get("xfcc") or "none").split("URI=")[-1] + ")")'
}
deadline=$((SECONDS + 60))
until summary jason 2>/dev/null | grep -q 'reviews v[23]'; do
  [ $SECONDS -lt $deadline ] || fail "jason never reached cluster2's reviews: $(summary jason 2>&1)"
  sleep 1
done
echo
echo "== requests through cluster1's ingress gateway, http://$lb/productpage"
for _ in 1 2 3; do echo "anonymous:       $(summary "")"; done
for _ in 1 2 3 4 5 6; do echo "end-user: jason: $(summary jason)"; done
case "$(summary "")" in *"reviews v1"*) ;; *) fail "anonymous requests did not stay on cluster1's reviews v1";; esac

# A pod that names reviews.default.global itself: the name resolves through its sidecar (no
# CoreDNS edit); the nearest reviews answers (cluster1's v1), cluster2's when v1 is gone.
client=$(k cluster1 get pod -n default -l app=global-client -o jsonpath='{.items[0].status.podIP}')
global() {
  curl -sf -m 10 "http://$client:9080/" | python3 -c '
import json, sys
r = json.load(sys.stdin)["calls"]["reviews.default.global"]
print("reviews " + r["body"]["version"] if r["status"] == 200 else "HTTP %d" % r["status"])'
}
await_global() { # $1: pattern, $2: what
  local deadline=$((SECONDS + 90))
  until global 2>/dev/null | grep -Eq "$1"; do
    [ $SECONDS -lt $deadline ] || fail "global-client: $2 never seen: $(global 2>&1)"
    sleep 1
  done
}
echo
echo "== a pod in cluster1 calling http://reviews.default.global:9080 (config/samples/federation/global-client.yaml)"
await_global 'reviews v1' "cluster1's reviews v1"
for _ in 1 2; do echo "global-client -> $(global)   (cluster1's own, the nearest)"; done
k cluster1 scale deployment reviews-v1 -n default --replicas=0 >/dev/null
await_global 'reviews v[23]' "failover to cluster2"
for _ in 1 2 3; do echo "global-client -> $(global)   (reviews-v1 scaled to 0 in cluster1: cluster2 answers)"; done
k cluster1 scale deployment reviews-v1 -n default --replicas=1 >/dev/null
await_global 'reviews v1' "the return to cluster1's reviews v1"
echo "global-client -> $(global)   (reviews-v1 back: cluster1 answers again)"
# ratings runs in cluster2 only and has no subsets: no DestinationRule of its own, the generated
# *.global one (ISTIO_MUTUAL) covers it.
ratings() {
  curl -sf -m 10 "http://$client:9080/" | python3 -c '
import json, sys
r = json.load(sys.stdin)["calls"]["ratings.default.global"]
b = r["body"]
print("ratings " + b["version"] + "   (ratings saw caller " + (b.get("xfcc") or "none").split("URI=")[-1] + ")" if r["status"] == 200 else "HTTP %d" % r["status"])'
}
deadline=$((SECONDS + 60))
until ratings 2>/dev/null | grep -q 'ratings v1'; do
  [ $SECONDS -lt $deadline ] || fail "global-client: ratings.default.global never answered: $(ratings 2>&1)"
  sleep 1
done
echo "global-client -> $(ratings)   (ratings.default.global: cluster2 only)"

echo
echo "Two federated clusters are running. Try:"
echo "  kubectl --kubeconfig ${kc[cluster1]} get serviceentries -A"
echo "  kubectl --kubeconfig ${kc[cluster1]} get mcp default -o yaml    # status.remoteClusters"
echo "  curl -H 'end-user: jason' http://$lb/productpage"
echo "  curl http://$client:9080/    # global-client calling reviews.default.global"
[ "${SKEIN_RUN_EXIT_WHEN_READY:-}" = 1 ] && exit 0
echo "Press Ctrl-C to stop."
while true; do sleep 3600; done
