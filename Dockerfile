# Skein's images, for building where a container engine and a registry exist. `make images`
# builds the same images without a daemon (umoci); both lay out each image's root with
# hack/rootfs.sh, so the file layout is the same: the binary, the libraries it links, CA
# certificates, /etc/passwd and /etc/group entries, and (proxy only) iptables-restore. Nothing
# else: no shell, no package manager.
#
#   docker build --target skein-proxy --build-arg VERSION=0.1.0 -t REGISTRY/skein-proxy:TAG .
#
# Targets: skein-operator, skein-controlplane, skein-proxy, bookinfo-app (the e2e test app).
ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends binutils ca-certificates iptables \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p skein-operator -p skein-controlplane -p skein-proxy -p skein-e2e \
      --bin skein-operator --bin skein-controlplane --bin skein-proxy --bin bookinfo-app \
    && for i in skein-operator skein-controlplane skein-proxy bookinfo-app; do \
         hack/rootfs.sh "$i" "target/release/$i" "/rootfs/$i"; \
       done

FROM scratch AS skein-operator
ARG VERSION=dev
LABEL org.opencontainers.image.title=skein-operator org.opencontainers.image.version=${VERSION} org.opencontainers.image.licenses=Apache-2.0
COPY --from=build /rootfs/skein-operator/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skein-operator"]

FROM scratch AS skein-controlplane
ARG VERSION=dev
LABEL org.opencontainers.image.title=skein-controlplane org.opencontainers.image.version=${VERSION} org.opencontainers.image.licenses=Apache-2.0
COPY --from=build /rootfs/skein-controlplane/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skein-controlplane"]

# Sidecar (`run`), gateways (`run --proxy-type=router`) and the init step (`init-iptables`, which
# the injected init container runs as root with NET_ADMIN).
FROM scratch AS skein-proxy
ARG VERSION=dev
LABEL org.opencontainers.image.title=skein-proxy org.opencontainers.image.version=${VERSION} org.opencontainers.image.licenses=Apache-2.0
COPY --from=build /rootfs/skein-proxy/ /
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/skein-proxy"]

FROM scratch AS bookinfo-app
ARG VERSION=dev
LABEL org.opencontainers.image.title=bookinfo-app org.opencontainers.image.version=${VERSION} org.opencontainers.image.licenses=Apache-2.0
COPY --from=build /rootfs/bookinfo-app/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bookinfo-app"]
