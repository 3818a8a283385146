# Switchyard's container image: the Rust toolchain image compiles the release binary, a slim
# Debian runs it as an unprivileged user with its sled store in the volume /data.
#
#   docker build -t switchyard .
#   docker run -p 8080:8080 -v switchyard-data:/data -e SWITCHYARD_ADMIN_KEY=sy_admin_demo switchyard
#
# The base images are build arguments so that a machine without Docker Hub can substitute
# local equivalents (tests/container_check.sh does, with a debootstrapped Debian and the
# host's Rust toolchain); the defaults are the public images.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target dirs are BuildKit cache mounts: a rebuild after a source change
# recompiles the crate, not its dependencies. The binary is copied out of the cache mount
# because mounts are not part of the image. Debug info is stripped (the release profile keeps
# line tables for local profiling): 123 MB → 23 MB; backtraces still name the functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin switchyard \
    && cp target/release/switchyard /usr/local/bin/switchyard

FROM ${RUNTIME_IMAGE}
# A fixed uid/gid, so a bind-mounted data dir can be chowned to it ahead of time
# (`chown 10001:10001 DIR`); a named volume takes the ownership of /data below by itself.
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin switchyard \
    && mkdir -p /data /etc/switchyard \
    && chown 10001:10001 /data
COPY --from=build /usr/local/bin/switchyard /usr/local/bin/switchyard
COPY deploy/switchyard.toml /etc/switchyard/config.toml
ENV SWITCHYARD_CONFIG=/etc/switchyard/config.toml
USER 10001:10001
VOLUME /data
EXPOSE 8080
# No curl in the slim image: bash's /dev/tcp sends the request, healthy on a 200 from /readyz
# (store writable, providers configured; 503 otherwise).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r version status _ <&3 && [ \"$status\" = 200 ]"]
# The flags win over the config file, so a mounted config written for a host (listen =
# "127.0.0.1:8080", data_dir = "./data") still serves on the published port and writes to the
# volume. Arguments after the image name are appended: `docker run IMAGE check-config PATH`
# validates a file, `docker run IMAGE --help` lists the environment variables.
ENTRYPOINT ["switchyard", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
