# A stand-in for rust:1-bookworm where Docker Hub cannot be reached (tests/container_check.sh):
# a debootstrapped Debian bookworm, the C toolchain rustc links with (and make, which
# jemalloc's build runs), and the host's own Rust toolchain (its bin/ and lib/, copied into the
# build context under rust/) installed in /usr/local like the official image's. CARGO_HOME
# matches the official image's, so the Dockerfile's registry cache mount is the same path in
# both. The host's CA bundle replaces Debian's, so cargo trusts what the host trusts (e.g. a
# TLS-inspecting proxy to crates.io).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       gcc make libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY rust/ /usr/local/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV CARGO_HOME=/usr/local/cargo
ENV PATH=/usr/local/cargo/bin:$PATH
RUN rustc --version && cargo --version
