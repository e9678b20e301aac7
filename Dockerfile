# syntax=docker/dockerfile:1
# The egress-gateway image: the release binary on a distroless base, running as UID 65532.
#   docker build -t REGISTRY/egress-gateway:0.1.0 .
# The builder and the runtime image share one Debian release (bookworm / debian12), so the binary
# finds the glibc it was linked against.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binary is copied out of the cache
# mount so that the next stage can use it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p egress-gateway --locked \
 && install -D -m 0755 target/release/egress-gateway /out/egress-gateway

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/egress-gateway /usr/local/bin/egress-gateway
# The chart's user: numeric, so that runAsNonRoot can verify it.
USER 65532:65532
# 3128: the connect listener of the chart's default config; 9901: the admin server.
EXPOSE 3128 9901
ENTRYPOINT ["/usr/local/bin/egress-gateway"]
CMD ["run", "--config", "/etc/egress/config/gateway.yaml"]
