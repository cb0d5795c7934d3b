# syntax=docker/dockerfile:1
# ghcr.io/example/container-tracer-webhook: the admission webhook. Non-root, no shell.
# Build from the repository root: docker build -f deploy/docker/webhook.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p webhook \
 && install -D -m 0755 target/release/webhook /out/webhook

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/webhook /usr/local/bin/webhook
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/webhook"]
