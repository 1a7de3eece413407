# A real node for a local cluster, sourced by hack/cluster.sh (uses its $name, $dir, $bin and its
# start/stop/wait_for helpers). The node is a network namespace, the way kind makes a node a
# container: containerd (own root, state and socket), kubelet, kube-proxy (iptables) and CoreDNS
# run in it, pods sit on a CNI bridge inside it, and a veth links it to the host, where the
# apiserver listens. Two clusters' kube-proxies and CNI bridges never share iptables chains.
#
# Addresses of slot N (0..13), all inside 198.18.0.0/15 (reserved for benchmarks, not private):
#   pods      198.18.(16N).0/24        (cluster CIDR 198.18.(16N).0/20)
#   Services  198.19.(16N).0/24        DNS answers from the node address below
#   LBs       198.19.(16N+1).0/24      LoadBalancer addresses the harness hands out
#   link      198.19.(240+N).0/30      .1 the host (apiserver), .2 the node
# The host routes the pod, Service and LoadBalancer ranges of the slot to the node.
#
# Networks: clusters on different networks (SKEIN_NETWORK; default the cluster's own name, so
# each cluster is alone) reach only each other's LoadBalancer addresses, never pod or Service
# addresses: the host's FORWARD chain sends node-to-node traffic through SKEIN-ISOLATE, which
# accepts LoadBalancer ranges, replies, and clusters that share a network, and drops the rest.

slots_dir=/run/skein/slots

node_prereqs() {
  local missing=()
  [ "$(id -u)" = 0 ] || { echo "cluster $name: a real node needs root (or SKEIN_NODE=kwok)" >&2; return 1; }
  for t in containerd containerd-shim-runc-v2 runc ctr ip nsenter iptables umoci; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  for p in bridge host-local loopback portmap; do [ -x "/usr/lib/cni/$p" ] || missing+=("cni:$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "cluster $name: a real node needs ${missing[*]} (Debian: containerd runc containernetworking-plugins iproute2 util-linux iptables umoci)" >&2
    return 1
  fi
}

# claim_slot: the lowest free slot, claimed atomically (mkdir); a slot whose cluster directory is
# gone belongs to a killed run and is taken over.
claim_slot() {
  mkdir -p "$slots_dir"
  local n owner
  for n in $(seq 0 13); do
    if [ -d "$slots_dir/$n" ]; then
      owner=$(cat "$slots_dir/$n/owner" 2>/dev/null || true)
      [ -n "$owner" ] && [ -d "$owner" ] && continue
      node_net_down "$n"
      rm -rf "$slots_dir/$n"
    fi
    if mkdir "$slots_dir/$n" 2>/dev/null; then
      echo "$dir" >"$slots_dir/$n/owner"
      echo "$n" >"$dir/slot"
      return 0
    fi
  done
  echo "cluster $name: all 14 node slots are in use" >&2
  return 1
}

node_vars() { # sets the addresses of slot $1
  local n=$1
  slot=$n netns="skein-node-$n" veth="sknode$n"
  host_ip="198.19.$((240 + n)).1" node_ip="198.19.$((240 + n)).2"
  pod_cidr="198.18.$((16 * n)).0/24" cluster_cidr="198.18.$((16 * n)).0/20"
  svc_cidr="198.19.$((16 * n)).0/24" lb_prefix="198.19.$((16 * n + 1))"
  run_dir="/run/skein/node-$n"
}

node_net_up() {
  ip netns add "$netns"
  ip link add "$veth" type veth peer name eth0 netns "$netns"
  ip addr add "$host_ip/30" dev "$veth"
  ip link set "$veth" up
  ip -n "$netns" link set lo up
  ip -n "$netns" addr add "$node_ip/30" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" route add default via "$host_ip"
  ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=1
  sysctl -qw net.ipv4.ip_forward=1
  ip route add "198.18.$((16 * slot)).0/20" via "$node_ip"
  ip route add "198.19.$((16 * slot)).0/23" via "$node_ip"
  echo "${SKEIN_NETWORK:-$name}" >"$dir/network"
  with_net_lock isolation_up
}

# Clusters start and stop concurrently; their rules in the shared chain change one at a time.
with_net_lock() { (flock 9 && "$@") 9>/run/skein/net.lock; }

ipt() { iptables -w 5 "$@"; }

isolation_up() {
  if ! ipt -n -L SKEIN-ISOLATE >/dev/null 2>&1; then
    ipt -N SKEIN-ISOLATE
    ipt -A SKEIN-ISOLATE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ipt -A SKEIN-ISOLATE -j DROP
  fi
  ipt -C FORWARD -i sknode+ -o sknode+ -j SKEIN-ISOLATE 2>/dev/null ||
    ipt -I FORWARD 1 -i sknode+ -o sknode+ -j SKEIN-ISOLATE
  ipt -I SKEIN-ISOLATE 1 -o "$veth" -d "$lb_prefix.0/24" -j ACCEPT
  local network other peer
  network=$(cat "$dir/network")
  for other in "$slots_dir"/*/owner; do
    peer=$(cat "$other" 2>/dev/null) || continue
    [ "$peer" != "$dir" ] && [ -f "$peer/network" ] && [ -f "$peer/slot" ] || continue
    [ "$(cat "$peer/network")" = "$network" ] || continue
    ipt -I SKEIN-ISOLATE 1 -i "$veth" -o "sknode$(cat "$peer/slot")" -j ACCEPT
    ipt -I SKEIN-ISOLATE 1 -i "sknode$(cat "$peer/slot")" -o "$veth" -j ACCEPT
  done
}

isolation_down() { # isolation_down N: the rules naming slot N's link; the chain with the last one
  local link="sknode$1" rules rule
  # The chain may be gone already (another cluster removed it): nothing to do then.
  rules=$(ipt -S SKEIN-ISOLATE 2>/dev/null | grep -E -- "-[io] $link( |$)" || true)
  while read -r rule; do
    [ -n "$rule" ] || continue
    # shellcheck disable=SC2086 # a rule is words
    ipt ${rule/#-A /-D } || true
  done <<<"$rules"
  if ! ipt -S SKEIN-ISOLATE 2>/dev/null | grep -q sknode; then
    ipt -D FORWARD -i sknode+ -o sknode+ -j SKEIN-ISOLATE 2>/dev/null || true
    ipt -F SKEIN-ISOLATE 2>/dev/null || true
    ipt -X SKEIN-ISOLATE 2>/dev/null || true
  fi
}

# node_net_down N: everything of slot N outside the cluster directory: the running pods
# (through runc, which works when containerd is already gone), mounts, the namespace, the veth.
node_net_down() {
  local n=$1 id
  local rd="/run/skein/node-$n"
  if [ -d "$rd/runc/k8s.io" ]; then
    for id in $(ls "$rd/runc/k8s.io"); do
      runc --root "$rd/runc/k8s.io" kill "$id" KILL >/dev/null 2>&1 || true
      runc --root "$rd/runc/k8s.io" delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  pkill -f "containerd-shim-runc-v2 .*-address $rd/containerd.sock" 2>/dev/null || true
  # Pod network namespaces (containerd's cni-*): the ones whose veth peers are on this node.
  { ip -n "skein-node-$n" -o link show type veth 2>/dev/null | grep -o 'link-netns [^ ]*' || true; } | while read -r _ pod_ns; do
    ip netns del "$pod_ns" 2>/dev/null || true
  done
  { findmnt -rn -o TARGET | grep -E "^($rd|${2:-/nonexistent})(/|$)" || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  ip netns del "skein-node-$n" 2>/dev/null || true
  ip link del "sknode$n" 2>/dev/null || true
  with_net_lock isolation_down "$n"
  rm -rf "$rd"
}

containerd_config() {
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$run_dir"
  cat >"$dir/containerd/config.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$run_dir/state"
[grpc]
  address = "$run_dir/containerd.sock"
[ttrpc]
  address = "$run_dir/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "skein.local/pause:1"
  # The sandbox may not lower oom scores here; without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$run_dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
TOML
  cat >"$dir/cni/net.d/10-skein.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "skein-$name", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
            "ranges": [[{"subnet": "$pod_cidr", "gateway": "198.18.$((16 * slot)).1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
JSON
}

node_kubeconfig() { # the node's components reach the apiserver over the veth
  sed "s|https://127.0.0.1:|https://$host_ip:|" "$dir/kubeconfig" >"$dir/node.kubeconfig"
}

kubelet_config() {
  mkdir -p "$dir/kubelet"
  echo "nameserver $node_ip" >"$dir/resolv.conf"
  cat >"$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
containerRuntimeEndpoint: unix://$run_dir/containerd.sock
# What this machine needs (checked when real nodes were first tried here): cgroupfs on cgroup
# v1, no swap check, no QoS cgroup tree and no allocatable enforcement.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
clusterDNS: [$node_ip]
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
serializeImagePulls: false
# The upgrade benchmark surges 100 workloads at once (old and new pods side by side); the pod
# range is a /24.
maxPods: 250
# Test machines run near full disks; evict only when really short.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
volumePluginDir: $dir/kubelet/volume-plugins
YAML
  cat >"$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/node.kubeconfig}
hostnameOverride: $name-node
mode: iptables
clusterCIDR: $cluster_cidr
# Leave the conntrack sysctls alone: they are not all settable from a node's namespace.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
YAML
  cat >"$dir/Corefile" <<CORE
.:53 {
    bind $node_ip
    errors
    ready 127.0.0.1:8181
    health 127.0.0.1:8080
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $dir/node.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
CORE
}

# pause_image: the sandbox image, from the static pause program (nothing can be pulled).
pause_image() {
  local out="$bin/../pause-oci.tar"
  [ -f "$out" ] && { echo "$out"; return 0; }
  local work; work=$(mktemp -d)
  mkdir -p "$work/rootfs"
  cp "$bin/pause" "$work/rootfs/pause"
  umoci init --layout "$work/layout" >/dev/null
  umoci new --image "$work/layout:1" >/dev/null
  umoci insert --image "$work/layout:1" "$work/rootfs" / >/dev/null
  umoci config --image "$work/layout:1" --config.user 65535:65535 --config.entrypoint /pause >/dev/null
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" -cf "$out.partial" . && mv "$out.partial" "$out"
  rm -rf "$work"
  echo "$out"
}

ctr_() { ctr --address "$run_dir/containerd.sock" --namespace k8s.io "$@"; }

# import_images: the pause image and every image hack/images.sh built (target/images).
import_images() {
  ctr_ images import --base-name skein.local/pause "$(pause_image)" >/dev/null
  local images="$root/target/images" registry tag t
  [ -f "$images/REF" ] || return 0
  read -r registry tag <"$images/REF"
  for t in "$images"/*.tar; do
    ctr_ images import --base-name "$registry/$(basename "$t" .tar)" "$t" >/dev/null
  done
}

in_node() { nsenter --net="/run/netns/$netns" "$@"; }

# node_up: the node's processes (node_prereqs, claim_slot and node_net_up ran before the
# apiserver started, which listens on the node link).
node_up() {
  containerd_config
  node_kubeconfig
  kubelet_config
  local enter=(nsenter --net="/run/netns/$netns")
  start containerd "${enter[@]}" containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 ctr_ version
  import_images
  start kubelet "${enter[@]}" "$bin/kubelet" --config="$dir/kubelet/config.yaml" \
    --kubeconfig="$dir/node.kubeconfig" --hostname-override="$name-node" --node-ip="$node_ip" \
    --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki"
  start kube-proxy "${enter[@]}" "$bin/kube-proxy" --config="$dir/kube-proxy.yaml"
  start coredns "${enter[@]}" "$bin/coredns" -conf "$dir/Corefile"
  start loadbalancer "$here/loadbalancer.sh" "$dir/kubeconfig" "$lb_prefix" "$bin/kubectl"
  local k=("$bin/kubectl" --kubeconfig="$dir/kubeconfig")
  wait_for "node $name-node" 90 "${k[@]}" wait --for=condition=Ready "node/$name-node" --timeout=1s
  wait_for coredns 30 in_node curl -sf http://127.0.0.1:8181/ready
}

node_down() {
  [ -f "$dir/slot" ] || return 0
  node_vars "$(cat "$dir/slot")"
  stop loadbalancer coredns kube-proxy kubelet
  node_net_down "$slot" "$dir"
  stop containerd
  # The kubelet's pod logs live in the host-wide /var/log/pods (<ns>_<pod>_<uid>).
  local uid
  for uid in $(ls "$dir/kubelet/pods" 2>/dev/null); do rm -rf /var/log/pods/*_"$uid"; done
  rm -rf "$slots_dir/$slot"
}
