# clipserve container image.
#
#   docker build -t clipserve .                      # builds from source (needs crates.io)
#   docker build --target runtime-prebuilt -t clipserve \
#     --build-arg PREBUILT_BINARY=target/release/clipserve .   # copies a binary built on the host
#
# The second form is for machines that cannot pull a Rust image (deploy/test-stack.sh uses it):
# build with `cargo build --release --locked` on a glibc-compatible host (Debian 12 or older
# glibc) first. Both end in the same runtime stage layout:
#
#   /usr/local/bin/clipserve   the binary, run as user `clipserve` (uid 10001), never root
#   /models                    volume: a model folder (mount read-only; CLIPSERVE_MODEL=/models)
#   /cache                     volume: hub download cache (HF_HOME=/cache, so /cache/hub)
#
# Nothing else is written at run time, so the container runs with `--read-only`; no tmpfs is
# needed unless the cache is not a volume. HEALTHCHECK uses `clipserve healthcheck` (GET
# /ready on loopback), as the image has no curl.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- builder: compile from source (the default path, for anyone with network access).
# Bookworm on both sides, so the binary's glibc matches the runtime's.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/clipserve /clipserve

# ---- runtime-base: what every runtime image has, whatever made the binary
FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates: hub downloads verify TLS against the system store too.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --gid 10001 clipserve \
    && useradd --uid 10001 --gid clipserve --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin clipserve \
    && mkdir -p /models /cache \
    && chown clipserve:clipserve /models /cache
# Settings are the built-in defaults (config/default.toml) changed by CLIPSERVE_* variables; to
# use a file instead, mount it and set CLIPSERVE_CONFIG to its path.
ENV CLIPSERVE_ADDR=0.0.0.0:8080 \
    HF_HOME=/cache
VOLUME ["/models", "/cache"]
EXPOSE 8080
USER 10001:10001
WORKDIR /
# start-period covers model loading and warm-up (a first start that downloads the model may
# take longer: the container is "starting", not "unhealthy", until /ready first answers 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["clipserve", "healthcheck"]
# Exec form: clipserve is PID 1 and gets SIGTERM itself, then drains (server.shutdown_grace_ms).
ENTRYPOINT ["clipserve"]
CMD ["serve"]

# ---- runtime-prebuilt: a binary from the build context (no Rust image needed)
FROM runtime-base AS runtime-prebuilt
ARG PREBUILT_BINARY=target/release/clipserve
COPY ${PREBUILT_BINARY} /usr/local/bin/clipserve

# ---- runtime (the default target): the binary from the builder stage
FROM runtime-base AS runtime
COPY --from=builder /clipserve /usr/local/bin/clipserve
