# Skein developer entry points. Each target calls one-purpose scripts in hack/.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: all build images run test test-unit test-e2e lint fmt generate verify-generate bench bench-federation bench-operator bench-proxy bench-controlplane bench-circuit-breaking bench-upgrade tools clean fuzz attack

all: build

build:
	$(CARGO) build --workspace --bins

## Generate CRD YAML, the operator's RBAC, the argocd-cm snippet, the OLM catalog and bundle, and
## the Helm chart's CRD and RBAC templates from the Rust code (never edit those files by hand).
generate:
	$(CARGO) run -q -p skein-operator --bin crdgen -- config charts/skein-operator

## Fail when the committed generated files differ from what the code generates.
verify-generate:
	@rm -rf target/gen-check && $(CARGO) run -q -p skein-operator --bin crdgen -- target/gen-check/config target/gen-check/chart
	@for f in $$(cd target/gen-check/config && find . -name '*.yaml'); do \
	  diff -u config/$$f target/gen-check/config/$$f || { echo "config/$$f is stale: run 'make generate' and commit"; exit 1; }; \
	done
	@for f in $$(cd target/gen-check/chart && find . -name '*.yaml'); do \
	  diff -u charts/skein-operator/$$f target/gen-check/chart/$$f || { echo "charts/skein-operator/$$f is stale: run 'make generate' and commit"; exit 1; }; \
	done
	@# The chart lints and renders (helm from hack/helm.sh).
	"$$(hack/helm.sh)" lint --strict charts/skein-operator
	"$$(hack/helm.sh)" template skein charts/skein-operator -n skein-operator --kube-version 1.34.4 > /dev/null
	@# The OLM catalog validates and the bundle renders (opm from hack/opm.sh).
	"$$(hack/opm.sh)" validate config/olm/catalog
	"$$(hack/opm.sh)" render config/olm/bundle -o yaml > /dev/null

## OCI images (skein-operator, skein-controlplane, skein-proxy, bookinfo-app) from release
## binaries, with umoci (no container daemon): target/images/*.tar, named skein.local/skein/NAME:dev
## unless SKEIN_IMAGE_REGISTRY / SKEIN_IMAGE_TAG say otherwise.
images:
	hack/images.sh

## Build the pinned Kubernetes components (etcd, kube-apiserver, ...) from Go modules.
tools:
	@hack/tools.sh

## Local demo: a local cluster with a real node, the operator from its image, the sample mesh and
## Bookinfo with traffic through the ingress gateway. Ctrl-C stops it all.
## `make run FEDERATION=1`: two federated local clusters (real nodes, separate networks) and
## cross-cluster Bookinfo traffic instead (hack/run-federation.sh).
run: tools
	SKEIN_RUN_FEDERATION=$(FEDERATION) hack/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The fuzz crate is outside the workspace (cargo fuzz builds it with nightly): check that its
	@# targets still compile against the crates they fuzz, on stable, sharing the build cache.
	$(CARGO) check --manifest-path fuzz/Cargo.toml --target-dir target --bins

## Unit and in-process integration tests of every crate (the proxy's tests/ included); the e2e
## crate needs real clusters and runs in test-e2e.
test-unit:
	SKEIN_FORTIO=$$(hack/fortio.sh) $(CARGO) test --workspace --exclude skein-e2e
	@# Argo CD's health check for MeshControlPlane, run over its test cases as Argo CD runs it.
	"$$(hack/kstatus.sh)" -argocd-tests config/argocd/resource_customizations/mesh.skein.dev/MeshControlPlane
	@[ "$${SKEIN_SKIP_NETNS:-}" != 1 ] || echo "NOTE: SKEIN_SKIP_NETNS=1: the proxy's transparent-capture netns test was skipped, not run"

test-e2e: tools
	$(CARGO) build -p skein-operator -p skein-controlplane -p skein-proxy -p skeinctl --bins
	@# The real-node tests run the images of this build (the test build's binaries, stripped).
	SKEIN_IMAGE_PROFILE=dev hack/images.sh
	SKEIN_KSTATUS=$$(hack/kstatus.sh) SKEIN_HELM=$$(hack/helm.sh) $(CARGO) test -p skein-e2e -- --test-threads=2

## Everything CI runs: lint, generated-file drift, unit and e2e tests.
test: lint verify-generate test-unit test-e2e

## Benchmarks (not tests): operator apply->children and apply->Ready times against a baseline, RSS;
## the proxy against a direct connection and HAProxy (see bench-proxy).
bench: bench-operator bench-proxy bench-controlplane bench-circuit-breaking bench-federation bench-upgrade

bench-operator: tools
	$(CARGO) build --release -p skein-operator --bin skein-operator
	SKEIN_OPERATOR_BIN=$(CURDIR)/target/release/skein-operator $(CARGO) bench -p skein-e2e --bench operator

## Federation: exported Service -> .global ServiceEntry in a peer (p50/p99) against a plain watch,
## cold-start import of SKEIN_BENCH_COLD Services, operator memory/CPU, writes in steady state.
bench-federation: tools
	$(CARGO) build --release -p skein-operator --bin skein-operator
	$(CARGO) build -p skeinctl
	SKEIN_OPERATOR_BIN=$(CURDIR)/target/release/skein-operator $(CARGO) bench -p skein-e2e --bench federation

## Control plane: N services x M simulated proxies, push times, endpoint change latency, memory.
bench-controlplane: tools
	$(CARGO) build --release -p skein-controlplane --bin skein-controlplane
	SKEIN_E2E_PUSH_CHUNK=32768 SKEIN_E2E_CP_LOG=info,skein_controlplane::watch=debug SKEIN_CONTROLPLANE_BIN=$(CURDIR)/target/release/skein-controlplane $(CARGO) bench -p skein-e2e --bench controlplane

## Upgrades on a real node: MeshControlPlane version change -> every injected workload on the new
## revision, for SKEIN_BENCH_WORKLOADS Deployments (default 10,100), against `kubectl rollout
## restart` of the same Deployments in the same run.
bench-upgrade: tools
	$(CARGO) build -p skein-operator -p skein-controlplane -p skein-proxy --bins
	SKEIN_IMAGE_PROFILE=dev hack/images.sh
	$(CARGO) bench -p skein-e2e --bench upgrade

## The proxy attack suite in full (dataplane/tests/attack.rs; make test runs its short version):
## unfinished bodies, idle/TLS/slowloris connections against the caps, slow bodies and readers,
## rapid reset over time, config faults, malformed requests, per-connection cost vs HAProxy.
attack:
	@command -v haproxy >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy)
	SKEIN_ATTACK=full $(CARGO) test --release -p skein-proxy --test attack -- --nocapture --test-threads=1

## Proxy latency/throughput/CPU/RSS vs a direct connection and Debian's HAProxy (installed if missing).
bench-proxy:
	@command -v haproxy >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy)
	$(CARGO) bench -p skein-proxy --bench proxy

## Istio's circuit-breaking task (fortio -c 2 -n 20 and -c 3 -n 30 through two release-built
## sidecars with the task's DestinationRule), 200 runs of each: the 503 split next to Envoy's.
bench-circuit-breaking:
	SKEIN_FORTIO=$$(hack/fortio.sh) SKEIN_CB_RUNS=200 $(CARGO) test --release -p skein-proxy --test circuit_breaking -- --nocapture

## Fuzz every parser of untrusted bytes for FUZZ_SECONDS each (needs the nightly toolchain and
## cargo-fuzz). Seeds in fuzz/corpus are copied, so runs never rewrite the committed corpus.
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := sni_peek dns_answer proxy_config proxy_config_wire http_request admission_review
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  rm -rf target/fuzz-corpus/$$t && mkdir -p target/fuzz-corpus/$$t && cp fuzz/corpus/$$t/* target/fuzz-corpus/$$t/ && \
	  (cd fuzz && cargo +nightly fuzz run $$t ../target/fuzz-corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done

clean:
	-for d in .skein/clusters/*/; do [ -d "$$d" ] && hack/cluster.sh down "$$(basename "$$d")"; done
	-for d in target/e2e-clusters/*/; do [ -d "$$d" ] && SKEIN_CLUSTERS_DIR=target/e2e-clusters hack/cluster.sh down "$$(basename "$$d")"; done
	$(CARGO) clean
