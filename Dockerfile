# wxgate: a reverse-proxy sidecar for WeChat Mini Program backends.
#
#   docker build -t wxgate --build-arg WXGATE_BUILD_COMMIT="$(git rev-parse --short HEAD)" .
#   docker run --rm -p 8080:8080 \
#     -e WXGATE_UPSTREAM__URL=http://backend:3000 \
#     -e WXGATE_WEIXIN__APPID=wx0123456789abcdef \
#     -e WXGATE_WEIXIN__SECRET="$WX_SECRET" \
#     wxgate
#
# The config shipped at /etc/wxgate/config.toml leaves upstream.url and weixin.appid unset on purpose: the
# container refuses to start until they and the secret are given, through the environment as above or in
# your own config mounted over it (-v "$PWD/config.toml:/etc/wxgate/config.toml:ro"; keep the secret in
# the environment).
#
# Build arguments, all optional:
#   BUILDER_IMAGE, RUNTIME_IMAGE  the base images, fully qualified so that podman and buildah need no
#       short-name resolution. Where docker.io or gcr.io is slow or unreachable (mainland China), point
#       them at a mirror that carries these tags. Examples, not endorsements:
#         --build-arg BUILDER_IMAGE=docker.m.daocloud.io/library/rust:1.95-slim-bookworm
#         --build-arg RUNTIME_IMAGE=gcr.m.daocloud.io/distroless/cc-debian12:nonroot
#       Keep the builder on Debian 12 (bookworm): a binary linked against a newer glibc (trixie) does not
#       run on distroless cc-debian12.
#   CARGO_REGISTRY  a crates.io mirror's sparse index, with or without the "sparse+" prefix (empty:
#       crates.io itself). Examples, not endorsements; the URLs below are the sparse indexes the
#       mirrors documented at the time of writing, see each mirror's help page for the current one:
#         rsproxy.cn  sparse+https://rsproxy.cn/index/
#         USTC        sparse+https://mirrors.ustc.edu.cn/crates.io-index/
#         TUNA        sparse+https://mirrors.tuna.tsinghua.edu.cn/crates.io-index/
#         SJTUG       sparse+https://mirrors.sjtug.sjtu.edu.cn/crates.io-index/
#   WXGATE_BUILD_COMMIT  the commit `wxgate --version` and the image's revision label report (the build
#       context has no .git): --build-arg WXGATE_BUILD_COMMIT="$(git rev-parse --short HEAD)"
#   WXGATE_VERSION  the image's version label; kept equal to Cargo.toml's version (.ci/run checks).
#   SOURCE_URL      the repository's URL, for the org.opencontainers.image.source label.
#   CARGO_PROFILE_RELEASE_STRIP  "debuginfo" (default: the release profile's line tables go, symbol
#       names stay for backtraces; about 10 MB instead of 47 MB), "symbols" (about 1 MB less, no
#       names in backtraces) or "none".
#
# Podman and Buildah build OCI images by default, and the OCI image format has no HEALTHCHECK: they drop
# it with a warning. Build with `podman build --format docker .` (or `buildah build --format docker .`)
# to keep it.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src

# Cargo source replacement when a mirror is given; a no-op otherwise.
ARG CARGO_REGISTRY=
RUN if [ -n "$CARGO_REGISTRY" ]; then \
        case "$CARGO_REGISTRY" in \
            sparse+*) index="$CARGO_REGISTRY" ;; \
            *) index="sparse+$CARGO_REGISTRY" ;; \
        esac \
        && mkdir -p "${CARGO_HOME:-$HOME/.cargo}" \
        && printf '[source.crates-io]\nreplace-with = "mirror"\n\n[source.mirror]\nregistry = "%s"\n' "$index" \
            > "${CARGO_HOME:-$HOME/.cargo}/config.toml"; \
    fi

# The dependencies alone, built against stub sources: this layer is reused until Cargo.toml, Cargo.lock
# or build.rs change, so that a source change does not rebuild every crate. The manifest's [[bench]]
# targets must exist for cargo to read it. The stub's wxgate artifacts and fingerprints are removed
# afterwards: COPY keeps the sources' modification times, which can be older than the stub's build, and
# cargo would then take the stub binary for up to date.
ARG CARGO_PROFILE_RELEASE_STRIP=debuginfo
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/decrypt.rs \
    && echo 'fn main() {}' > benches/headers.rs \
    && cargo build --release --locked --bin wxgate \
    && rm -rf src benches target/release/wxgate target/release/wxgate.d \
        target/release/.fingerprint/wxgate-* target/release/build/wxgate-* \
        target/release/deps/wxgate-* target/release/deps/libwxgate-*

COPY src ./src
COPY benches ./benches
# Declared here, after the dependency layer, so that a new commit does not invalidate it; build.rs
# reads it from the environment.
ARG WXGATE_BUILD_COMMIT=unknown
RUN cargo build --release --locked --bin wxgate

# distroless/cc: glibc and nothing else, no shell; runs as uid 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/wxgate /usr/local/bin/wxgate
COPY config.toml /etc/wxgate/config.toml
# Inside a container the admin port must be reachable by probes and Prometheus
# on the pod network; do not publish it to the internet.
ENV WXGATE_SERVER__LISTEN=0.0.0.0:8080 \
    WXGATE_SERVER__ADMIN_LISTEN=0.0.0.0:9901
USER 65532:65532
EXPOSE 8080 9901
# Dropped by podman/buildah unless built with --format docker (see the top of this file).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/wxgate", "healthcheck", "--url", "http://127.0.0.1:9901/readyz"]

ARG WXGATE_VERSION=0.1.0
ARG WXGATE_BUILD_COMMIT=unknown
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="wxgate" \
      org.opencontainers.image.description="A reverse-proxy sidecar that does WeChat Mini Program login and phone-number decryption for a backend" \
      org.opencontainers.image.version="${WXGATE_VERSION}" \
      org.opencontainers.image.revision="${WXGATE_BUILD_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# Set upstream.url, weixin.appid and the AppSecret (WXGATE_WEIXIN__SECRET) through the environment, or
# mount your config over /etc/wxgate/config.toml.
ENTRYPOINT ["/usr/local/bin/wxgate"]
CMD ["--config", "/etc/wxgate/config.toml"]
