#!/usr/bin/env bash
# One isolated local Kubernetes cluster per NAME: etcd, kube-apiserver (own CA and certs, on a
# free port), kube-controller-manager (garbage collection, Deployments), kube-scheduler, and a node:
#   SKEIN_NODE=real (default): a real node in its own network namespace (hack/node.sh):
#     containerd, kubelet, kube-proxy, CoreDNS, a CNI bridge, LoadBalancer addresses; the images
#     in target/images (hack/images.sh) are imported, so pods really run.
#   SKEIN_NODE=kwok: one fake kwok node, so Pods become Running/Ready without any process
#     (benchmarks with thousands of pods, tests that only need the objects).
#
#   hack/cluster.sh up NAME     start it; writes $dir/NAME/kubeconfig
#   hack/cluster.sh down NAME   stop it and remove its state
#   hack/cluster.sh kubeconfig NAME   print the kubeconfig path
#   hack/cluster.sh stop-apiserver NAME / start-apiserver NAME   (failure tests)
#
# $dir is SKEIN_CLUSTERS_DIR, default .skein/clusters in the repository. Several clusters can run
# at once; each owns only the processes whose pids it recorded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
clusters="${SKEIN_CLUSTERS_DIR:-$root/.skein/clusters}"
node_kind=${SKEIN_NODE:-real}
case "$node_kind" in real|kwok) ;; *) echo "SKEIN_NODE must be real or kwok, not $node_kind" >&2; exit 2;; esac

usage() { echo "usage: $0 up|down|kubeconfig|stop-apiserver|start-apiserver NAME" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1 name=$2
case "$name" in *[!a-z0-9-]*|"") echo "cluster name must match [a-z0-9-]+" >&2; exit 2;; esac
dir="$clusters/$name"
# shellcheck source=hack/node.sh
. "$here/node.sh"

free_ports() { # N free loopback TCP ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start NAME CMD...: run a component in its own session so it outlives this script.
start() {
  local comp=$1; shift
  setsid "$@" >"$dir/logs/$comp.log" 2>&1 < /dev/null &
  echo $! >"$dir/pids/$comp"
}

stop() { # stop COMPONENT...: TERM all of them at once, KILL what is left after 3s
  local pids=() f
  for comp in "$@"; do
    f="$dir/pids/$comp"
    [ -f "$f" ] || continue
    pids+=("$(cat "$f")"); rm -f "$f"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 30); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster $name: $what not ready after ${secs}s; last log lines:" >&2
      tail -n 20 "$dir"/logs/*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

certs() {
  local c="$dir/pki"; mkdir -p "$c"
  local subj="/O=skein-test/CN"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "$c/ca.key" -out "$c/ca.crt" -subj "$subj=skein-test-ca-$name" 2>/dev/null
  # leaf NAME SUBJECT [SAN]
  leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$c/$1.key" -out "$c/$1.csr" -subj "$2" 2>/dev/null
    local ext="$c/$1.ext"
    echo "basicConstraints=CA:FALSE" >"$ext"
    [ -n "${3:-}" ] && echo "subjectAltName=$3" >>"$ext"
    openssl x509 -req -in "$c/$1.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
      -days 3650 -extfile "$ext" -out "$c/$1.crt" 2>/dev/null
  }
  # A real node's components and pods reach the apiserver over the node link and through the
  # `kubernetes` Service (its first Service address).
  local extra=""
  [ -f "$dir/slot" ] && extra=",IP:$host_ip,IP:198.19.$((16 * slot)).1"
  leaf apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local$extra"
  leaf admin "/O=system:masters/CN=skein-admin"
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
}

kubeconfig() {
  local c="$dir/pki"
  cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: https://127.0.0.1:$(cat "$dir/port.apiserver")
    certificate-authority: $c/ca.crt
users:
- name: admin
  user:
    client-certificate: $c/admin.crt
    client-key: $c/admin.key
contexts:
- name: $name
  context: {cluster: $name, user: admin}
current-context: $name
KC
}

start_apiserver() {
  local c="$dir/pki"
  # kwok clusters: loopback only, no `kubernetes` Endpoints (nothing in the cluster dials it).
  # Real nodes: every address (the node reaches it over its link), advertised on the link.
  local net=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
    --service-cluster-ip-range=198.19.0.0/16)
  if [ -f "$dir/slot" ]; then
    node_vars "$(cat "$dir/slot")"
    net=(--bind-address=0.0.0.0 --advertise-address="$host_ip" --service-cluster-ip-range="$svc_cidr"
      --kubelet-client-certificate="$c/admin.crt" --kubelet-client-key="$c/admin.key"
      --kubelet-preferred-address-types=InternalIP)
  fi
  start kube-apiserver "$bin/kube-apiserver" "${net[@]}" \
    --etcd-servers="http://127.0.0.1:$(cat "$dir/port.etcd")" \
    --secure-port="$(cat "$dir/port.apiserver")" \
    --cert-dir="$c" --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" \
    --client-ca-file="$c/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$c/sa.pub" --service-account-signing-key-file="$c/sa.key" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-priority-and-fairness=false --profiling=false
  wait_for kube-apiserver 90 curl -sf --cacert "$c/ca.crt" --cert "$c/admin.crt" --key "$c/admin.key" \
    "https://127.0.0.1:$(cat "$dir/port.apiserver")/readyz"
}

up() {
  if [ -f "$dir/kubeconfig" ] && kill -0 "$(cat "$dir/pids/kube-apiserver" 2>/dev/null)" 2>/dev/null &&
    "$bin/kubectl" --kubeconfig="$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "$dir/kubeconfig"; return 0
  fi
  if [ -d "$dir" ]; then down; fi
  mkdir -p "$dir/logs" "$dir/pids" "$dir/etcd"
  read -r p_etcd p_peer p_api p_kcm p_sched p_kwok < <(free_ports 6)
  echo "$p_etcd" >"$dir/port.etcd"; echo "$p_api" >"$dir/port.apiserver"
  if [ "$node_kind" = real ]; then
    node_prereqs
    claim_slot
    node_vars "$(cat "$dir/slot")"
    node_net_up
  fi
  certs
  start etcd "$bin/etcd" --name "$name" --data-dir "$dir/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$p_etcd" --advertise-client-urls "http://127.0.0.1:$p_etcd" \
    --listen-peer-urls "http://127.0.0.1:$p_peer" --initial-advertise-peer-urls "http://127.0.0.1:$p_peer" \
    --initial-cluster "$name=http://127.0.0.1:$p_peer" --listen-metrics-urls ""
  wait_for etcd 30 curl -sf "http://127.0.0.1:$p_etcd/health"
  start_apiserver
  kubeconfig
  local c="$dir/pki"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$dir/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$p_kcm" \
    --service-account-private-key-file="$c/sa.key" --root-ca-file="$c/ca.crt" \
    --use-service-account-credentials=false \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl' \
    --concurrent-gc-syncs=5 --node-monitor-grace-period=600s
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$dir/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$p_sched"
  local k=("$bin/kubectl" --kubeconfig="$dir/kubeconfig")
  if [ "$node_kind" = real ]; then
    node_up
    wait_for "default ServiceAccount" 60 "${k[@]}" get serviceaccount default -n default
    echo "$dir/kubeconfig"
    return 0
  fi
  start kwok "$bin/kwok" \
    --kubeconfig="$dir/kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --server-address="127.0.0.1:$p_kwok" --cidr=198.18.0.1/16 --node-ip=198.18.255.254 \
    --node-lease-duration-seconds=40
  "${k[@]}" apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-$name-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-$name-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
NODE
  wait_for "kwok node" 60 "${k[@]}" wait --for=condition=Ready "node/kwok-$name-0" --timeout=1s
  wait_for "default ServiceAccount" 60 "${k[@]}" get serviceaccount default -n default
  echo "$dir/kubeconfig"
}

down() {
  [ -d "$dir" ] || return 0
  # Best effort: whatever of the node cannot be removed is said, and the rest still goes.
  node_down || echo "cluster $name: the node was not removed completely" >&2
  stop kwok kube-scheduler kube-controller-manager kube-apiserver etcd
  rm -rf "$dir"
}

case "$cmd" in
  up) bin=$("$here/tools.sh"); up ;;
  down) down ;;
  kubeconfig) echo "$dir/kubeconfig" ;;
  stop-apiserver) stop kube-apiserver ;;
  start-apiserver) bin=$("$here/tools.sh"); start_apiserver ;;
  *) usage ;;
esac
