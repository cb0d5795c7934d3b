# syntax=docker/dockerfile:1
# ghcr.io/example/container-tracer-node: tracer-node, and the runtime hook with its hooks.d
# files, which the DaemonSet's init container installs onto the host.
# Build from the repository root: docker build -f deploy/docker/tracer-node.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tracer-node -p runtime-hook \
 && install -D -m 0755 target/release/tracer-node /out/tracer-node \
 && install -D -m 0755 target/release/runtime-hook /out/runtime-hook

# Debian slim, not distroless: the init container needs a shell, install, sed and mv. The hook
# runs on the host, so it is built against the same glibc generation as the hosts it lands on
# (bookworm's 2.36; hosts with an older glibc need a static build).
FROM debian:bookworm-slim
COPY --from=build /out/tracer-node /usr/local/bin/tracer-node
COPY --from=build /out/runtime-hook /usr/local/bin/runtime-hook
COPY deploy/hooks.d/ /usr/share/container-tracer/hooks.d/
# Root with three capabilities (SYS_ADMIN, DAC_OVERRIDE, SYS_PTRACE), granted by the DaemonSet.
USER 0
ENTRYPOINT ["/usr/local/bin/tracer-node"]
