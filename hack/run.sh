#!/usr/bin/env bash
# `make run`: a local Skein — a real local cluster (hack/cluster.sh), the CRDs, the operator
# running on this machine against it, and the sample MeshControlPlane. Shows it become Ready,
# then keeps running until Ctrl-C, which stops the operator and the cluster.
#
# SKEIN_RUN_EXIT_WHEN_READY=1 stops as soon as the sample is Ready (used by CI as a smoke test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
name=${SKEIN_RUN_CLUSTER:-local}
sample=${SKEIN_RUN_SAMPLE:-config/samples/minimal.yaml}

cargo build -q -p skein-operator --bin skein-operator
bin=$("$here/tools.sh")
kubeconfig=$("$here/cluster.sh" up "$name")
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

op_pid=""
cleanup() {
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping the operator and cluster '$name'..."
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
k get deployments,services -n "$(k get mcp -o jsonpath='{.items[0].spec.namespace}')"
echo
echo "Skein is running. Try:  export KUBECONFIG=$kubeconfig; kubectl get mcp -o yaml"
[ "${SKEIN_RUN_EXIT_WHEN_READY:-}" = 1 ] && exit 0
echo "Press Ctrl-C to stop."
wait "$op_pid"
