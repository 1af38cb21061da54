# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
#
#   docker build -t ambassador .
#
# Offline (no registry), from base images of your own and a binary built beforehand: BUILD_BASE
# then needs only a shell, RUNTIME_BASE a shell and `useradd`, and PREBUILT names the binary in
# the build context (outside target/, which .dockerignore leaves out):
#
#   cargo build --release && mkdir -p dist && cp target/release/ambassador dist/
#   docker build --build-arg BUILD_BASE=mybase --build-arg RUNTIME_BASE=mybase \
#     --build-arg PREBUILT=dist/ambassador -t ambassador .
#
# Both BuildKit and the legacy builder (which builds every stage) take this file as it is.
ARG BUILD_BASE=rust:1-slim-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${BUILD_BASE} AS build
# A binary in the build context to use instead of compiling; empty: compile.
ARG PREBUILT=
WORKDIR /src
COPY . .
# Compiling needs protoc and its well-known types: etcd-client compiles etcd's protobuf files.
RUN if [ -n "$PREBUILT" ]; then \
      mkdir -p target/release && cp "$PREBUILT" target/release/ambassador; \
    else \
      apt-get update -qq && \
      apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev && \
      cargo build --release --locked --bin ambassador; \
    fi

FROM ${RUNTIME_BASE}
RUN useradd --system --create-home --home-dir /home/ambassador --uid 10001 ambassador
COPY --from=build /src/target/release/ambassador /usr/local/bin/ambassador
USER ambassador
ENV XDG_CONFIG_HOME=/home/ambassador/.config
# mDNS is link-local multicast: on a LAN run with `--network host` so announcements reach it; between
# containers, put the ambassadors on one user-defined network (see the README's Docker section).
ENTRYPOINT ["/usr/local/bin/ambassador"]
CMD ["--help"]
