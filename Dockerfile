# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
COPY netns-tests ./netns-tests
COPY examples ./examples
RUN cargo build --release --locked --bin ambassador

FROM debian:bookworm-slim
RUN useradd --system --create-home --home-dir /home/ambassador --uid 10001 ambassador
COPY --from=build /src/target/release/ambassador /usr/local/bin/ambassador
USER ambassador
ENV XDG_CONFIG_HOME=/home/ambassador/.config
# mDNS is link-local multicast: run with `--network host` so announcements reach the LAN
# (a bridged container network would keep them inside the Docker bridge).
ENTRYPOINT ["/usr/local/bin/ambassador"]
CMD ["--help"]
