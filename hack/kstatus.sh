#!/usr/bin/env bash
# Builds hack/kstatus (the status GitOps tools compute for an object, with the real libraries:
# sigs.k8s.io/cli-utils kstatus and Flux's fork, and Argo CD's health.lua run with gopher-lua,
# pinned in hack/kstatus/go.mod) into a cache and prints the binary's path (hack/go-tool.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/go-tool.sh" kstatus "$here/kstatus" .
