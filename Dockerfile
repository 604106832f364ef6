# wxgate: a reverse-proxy sidecar for WeChat Mini Program backends.
#
#   docker build -t wxgate .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/config.toml:/etc/wxgate/config.toml:ro" \
#     -e WXGATE_WEIXIN__SECRET=... -e WXGATE_UPSTREAM__URL=http://backend:3000 \
#     wxgate

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin wxgate \
    && cp target/release/wxgate /wxgate

# distroless/cc: glibc and nothing else, no shell; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /wxgate /usr/local/bin/wxgate
COPY config.toml /etc/wxgate/config.toml
# Inside a container the admin port must be reachable by probes and Prometheus
# on the pod network; do not publish it to the internet.
ENV WXGATE_SERVER__LISTEN=0.0.0.0:8080 \
    WXGATE_SERVER__ADMIN_LISTEN=0.0.0.0:9901
USER 65532:65532
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/wxgate", "healthcheck", "--url", "http://127.0.0.1:9901/readyz"]
# Mount your config over /etc/wxgate/config.toml; pass the AppSecret as WXGATE_WEIXIN__SECRET.
ENTRYPOINT ["/usr/local/bin/wxgate"]
CMD ["--config", "/etc/wxgate/config.toml"]
