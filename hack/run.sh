#!/usr/bin/env bash
# `make run`: a local Skein — a real local cluster (hack/cluster.sh), the CRDs, the operator
# running on this machine against it, and the sample MeshControlPlane. Shows it become Ready,
# then runs the control plane it installed as a local process (the local cluster's kwok pods
# run no images) with the CA and mesh config the operator wrote, applies a sample
# VirtualService and shows the control plane's verdict on it. Keeps running until Ctrl-C,
# which stops everything.
#
# SKEIN_RUN_EXIT_WHEN_READY=1 stops as soon as the sample is Ready (used by CI as a smoke test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
name=${SKEIN_RUN_CLUSTER:-local}
sample=${SKEIN_RUN_SAMPLE:-config/samples/minimal.yaml}

cargo build -q -p skein-operator -p skein-controlplane --bins
bin=$("$here/tools.sh")
kubeconfig=$("$here/cluster.sh" up "$name")
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

op_pid=""
cp_pid=""
cleanup() {
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping the control plane, the operator and cluster '$name'..."
  [ -n "$cp_pid" ] && kill "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null || true
  [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null && wait "$op_pid" 2>/dev/null || true
  "$here/cluster.sh" down "$name"
  echo "stopped."
}
trap cleanup INT TERM EXIT

k apply --server-side -k config/crd >/dev/null
# `kubectl wait` errors if it looks before the apiserver wrote any condition: poll instead.
for _ in $(seq 1 300); do
  [ "$(k get crd meshcontrolplanes.mesh.skein.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ] && break
  sleep 0.2
done
log="$root/.skein/operator-$name.log"
KUBECONFIG="$kubeconfig" "$root/target/debug/skein-operator" --metrics-addr 127.0.0.1:0 >"$log" 2>&1 &
op_pid=$!
echo "operator running (pid $op_pid), log: $log"
k apply -f "$sample"

echo "waiting for the MeshControlPlane to become Ready..."
deadline=$((SECONDS + 120))
until [ "$(k get mcp -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status}')" = True ]; do
  [ $SECONDS -lt $deadline ] || { echo "not Ready after 120s; operator log:"; tail -n 50 "$log"; exit 1; }
  sleep 1
done
k get mcp
echo
ns=$(k get mcp -o jsonpath='{.items[0].spec.namespace}')
k get deployments,services -n "$ns"
echo

# The control plane, as the operator configured it: its mesh config and its CA Secret.
state="$root/.skein/run-$name"
mkdir -p "$state/webhook"
k get configmap skein-mesh -n "$ns" -o jsonpath='{.data.mesh}' >"$state/mesh.yaml"
k get secret skein-webhook-tls -n "$ns" -o jsonpath='{.data.tls\.crt}' | base64 -d >"$state/webhook/tls.crt"
k get secret skein-webhook-tls -n "$ns" -o jsonpath='{.data.tls\.key}' | base64 -d >"$state/webhook/tls.key"
read -r p_grpc p_plain p_mon p_hook < <(python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
ca_secret=$(k get deployment skein-controlplane -n "$ns" -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -o -- '--ca-secret=[^"]*' | cut -d= -f2)
cp_log="$root/.skein/controlplane-$name.log"
KUBECONFIG="$kubeconfig" "$root/target/debug/skein-controlplane" discovery --namespace "$ns" \
  --mesh-config "$state/mesh.yaml" --ca-secret "$ca_secret" --webhook-tls-dir "$state/webhook" \
  --grpc-addr "127.0.0.1:$p_grpc" --plaintext-grpc-addr "127.0.0.1:$p_plain" \
  --monitoring-addr "127.0.0.1:$p_mon" --webhook-addr "127.0.0.1:$p_hook" >"$cp_log" 2>&1 &
cp_pid=$!
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$p_mon/ready" >/dev/null; do
  kill -0 "$cp_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || { echo "control plane not ready; log:"; tail -n 30 "$cp_log"; exit 1; }
  sleep 0.5
done
echo "control plane serving: gRPC 127.0.0.1:$p_grpc, metrics http://127.0.0.1:$p_mon/metrics, log: $cp_log"

# Istio resources as users write them; the control plane judges each one.
k apply -f config/samples/bookinfo-reviews.yaml
deadline=$((SECONDS + 30))
until [ -n "$(k get virtualservice reviews -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}')" ]; do
  [ $SECONDS -lt $deadline ] || { echo "no verdict on the VirtualService; log:"; tail -n 30 "$cp_log"; exit 1; }
  sleep 0.5
done
k get virtualservices,destinationrules -o custom-columns='KIND:.kind,NAME:.metadata.name,ACCEPTED:.status.conditions[0].status,MESSAGE:.status.conditions[0].message'
# The sample is valid Istio YAML: anything but Accepted=True on every object is a failure.
rejected=$(k get virtualservices,destinationrules -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.status.conditions[?(@.type=="Accepted")].status}{"\n"}{end}' | grep -v '=True$' || true)
if [ -n "$rejected" ]; then
  echo "sample not accepted: $rejected; log:"; tail -n 30 "$cp_log"; exit 1
fi
echo
echo "Skein is running. Try:  export KUBECONFIG=$kubeconfig; kubectl get mcp -o yaml"
[ "${SKEIN_RUN_EXIT_WHEN_READY:-}" = 1 ] && exit 0
echo "Press Ctrl-C to stop."
wait "$op_pid"
