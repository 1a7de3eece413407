#!/usr/bin/env bash
# What a cloud's load-balancer controller does, for a local cluster with a real node: every
# Service of type LoadBalancer gets an address from PREFIX.0/24 in status.loadBalancer.ingress.
# The host routes that range to the node, where kube-proxy serves it, so the Service is reached
# from "outside" the cluster the way a cloud load balancer would reach it.
#
#   hack/loadbalancer.sh KUBECONFIG PREFIX KUBECTL     (runs until killed; hack/node.sh starts it)
set -uo pipefail
kubeconfig=$1 prefix=$2 kubectl=$3
k() { "$kubectl" --kubeconfig="$kubeconfig" "$@"; }
while true; do
  # namespace/name/assigned-ip of every LoadBalancer Service (ip empty when not yet assigned).
  list=$(k get services -A -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.namespace}/{.metadata.name}/{.status.loadBalancer.ingress[0].ip}{"\n"}{end}' 2>/dev/null) || { sleep 1; continue; }
  used=" $(echo "$list" | awk -F/ '$3!=""{printf "%s ", $3}')"
  while IFS=/ read -r ns svc ip; do
    [ -n "$svc" ] && [ -z "$ip" ] || continue
    for i in $(seq 10 250); do
      case "$used" in *" $prefix.$i "*) continue;; esac
      k patch service "$svc" -n "$ns" --subresource=status --type=merge \
        -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$prefix.$i\",\"ipMode\":\"VIP\"}]}}}" >/dev/null &&
        used="$used$prefix.$i "
      break
    done
  done <<<"$list"
  sleep 1
done
