#!/usr/bin/env bash
# `make run`: Skein as users run it, on this machine. Builds the images (hack/images.sh), starts a
# local cluster with a real node (hack/cluster.sh: containerd, kubelet, kube-proxy, CoreDNS),
# installs the operator from its image (`kubectl apply -k config/local`), applies the sample
# MeshControlPlane and waits for Ready (real pods), deploys Bookinfo in an injected namespace
# with Istio's routing YAML, and shows requests through the ingress gateway's LoadBalancer
# address: everyone gets reviews v1, the user jason gets v2; then every proxy's sync state
# (skeinctl proxy-status). Keeps running until Ctrl-C, which stops everything.
#
# SKEIN_RUN_EXIT_WHEN_READY=1 stops once the traffic was shown (CI's smoke test).
# SKEIN_IMAGE_PROFILE=release builds optimized images (default dev: quicker, shared with tests).
# SKEIN_RUN_FEDERATION=1 (`make run FEDERATION=1`) runs hack/run-federation.sh instead: two
# federated clusters.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${SKEIN_RUN_FEDERATION:-}" = 1 ]; then exec "$here/run-federation.sh"; fi
root=$(cd "$here/.." && pwd)
cd "$root"
name=${SKEIN_RUN_CLUSTER:-local}
sample=${SKEIN_RUN_SAMPLE:-config/samples/local.yaml}

SKEIN_IMAGE_PROFILE=${SKEIN_IMAGE_PROFILE:-dev} "$here/images.sh" >/dev/null
# skeinctl, to show the mesh's proxies as `istioctl proxy-status` would.
cargo build -q -p skeinctl
skeinctl="$root/target/debug/skeinctl"
bin=$("$here/tools.sh")
kubeconfig=$(SKEIN_NODE=real "$here/cluster.sh" up "$name")
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

cleanup() {
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping cluster '$name' (and everything running on it)..."
  "$here/cluster.sh" down "$name"
  echo "stopped."
}
trap cleanup INT TERM EXIT

fail() {
  echo "$1" >&2
  k get pods -A -o wide >&2 || true
  k logs -n skein-operator deploy/skein-operator --tail=30 >&2 || true
  exit 1
}

echo "== the operator, from its image (kubectl apply -k config/local)"
k apply -k config/local >/dev/null
k rollout status deployment/skein-operator -n skein-operator --timeout=120s >/dev/null ||
  fail "the operator did not start"
k get pods -n skein-operator

echo
echo "== the sample MeshControlPlane ($sample)"
k apply -f "$sample" >/dev/null
deadline=$((SECONDS + 180))
until [ "$(k get mcp -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status}')" = True ]; do
  [ $SECONDS -lt $deadline ] || fail "not Ready after 180s: $(k get mcp -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].message}')"
  sleep 1
done
k get mcp
ns=$(k get mcp -o jsonpath='{.items[0].spec.namespace}')
k get pods,services -n "$ns"

echo
echo "== Bookinfo in namespace bookinfo (istio-injection=enabled), Istio's routing YAML"
k create namespace bookinfo >/dev/null
k label namespace bookinfo istio-injection=enabled >/dev/null
k apply -n bookinfo -f config/samples/bookinfo/bookinfo.yaml >/dev/null
for f in bookinfo-gateway destination-rule-all virtual-service-all-v1 virtual-service-reviews-test-v2; do
  k apply -n bookinfo -f "config/samples/bookinfo/$f.yaml" >/dev/null
done
k wait --for=condition=Available deployment --all -n bookinfo --timeout=180s >/dev/null ||
  fail "Bookinfo did not become available"
k get pods -n bookinfo

lb=$(k get service skein-ingressgateway -n "$ns" -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
[ -n "$lb" ] || fail "the ingress gateway has no LoadBalancer address"
# summary USER: one request through the gateway, as "productpage v1 -> reviews vN (-> ratings)".
summary() {
  curl -sf -m 10 ${1:+-H "end-user: $1"} "http://$lb/productpage" | python3 -c '
import json, sys
d = json.load(sys.stdin)
r = d["calls"]["reviews"]["body"]
hops = [d["service"] + " " + d["version"], "reviews " + r["version"]]
if "ratings" in r["calls"]:
    hops.append("ratings " + r["calls"]["ratings"]["body"]["version"])
print(" -> ".join(hops) + "   (mTLS: productpage saw " + d["xfcc"].split("URI=")[1] + ")")'
}
deadline=$((SECONDS + 60))
until summary "" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || fail "no answer from Bookinfo through http://$lb/productpage"
  sleep 1
done
echo
echo "== traffic through the ingress gateway, http://$lb/productpage"
for _ in 1 2 3; do echo "anonymous:       $(summary "")"; done
for _ in 1 2 3; do echo "end-user: jason: $(summary jason)"; done
case "$(summary jason)" in *"reviews v2"*) ;; *) fail "jason was not routed to reviews v2";; esac
case "$(summary "")" in *"reviews v1"*) ;; *) fail "anonymous requests did not go to reviews v1";; esac

echo
echo "== the mesh's proxies and the config they run (skeinctl proxy-status)"
deadline=$((SECONDS + 30))
until "$skeinctl" --kubeconfig "$kubeconfig" proxy-status >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || break
  sleep 1
done
"$skeinctl" --kubeconfig "$kubeconfig" proxy-status || fail "not every proxy runs the config it was sent"

echo
echo "Skein is running. Try:"
echo "  export KUBECONFIG=$kubeconfig"
echo "  kubectl get mcp -o yaml; kubectl get pods -A"
echo "  curl -H 'end-user: jason' http://$lb/productpage"
echo "  $skeinctl --kubeconfig $kubeconfig proxy-config routes <pod>.bookinfo"
echo "  $skeinctl --kubeconfig $kubeconfig analyze -n bookinfo"
[ "${SKEIN_RUN_EXIT_WHEN_READY:-}" = 1 ] && exit 0
echo "Press Ctrl-C to stop."
while true; do sleep 3600; done
