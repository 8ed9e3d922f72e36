# The agent image referenced by manifests/daemonset.yaml.
#   docker build -t ghcr.io/meshtune/meshtune-agent:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p meshtune-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/meshtune-agent /usr/local/bin/meshtune-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshtune-agent"]
