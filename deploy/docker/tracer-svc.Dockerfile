# syntax=docker/dockerfile:1
# ghcr.io/example/container-tracer-svc: the cluster-wide API. Non-root, no shell.
# Build from the repository root: docker build -f deploy/docker/tracer-svc.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tracer-svc \
 && install -D -m 0755 target/release/tracer-svc /out/tracer-svc

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tracer-svc /usr/local/bin/tracer-svc
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tracer-svc"]
