#!/bin/sh
# Makes podman usable for deploy/test-stack.sh on a Debian 12 host, as root, with no container
# registry reachable (only Debian's package mirror): installs podman, buildah and runc, sets
# the storage driver (vfs), runtime (runc; crun fails under cgroup v1 hybrid), cgroup manager
# (cgroupfs), event logger (file) and default ulimits (<= 20000: no CAP_SYS_RESOURCE), then
# builds a base image from Debian's packages with mmdebstrap and tags it
# docker.io/library/debian:bookworm-slim, so `FROM debian:bookworm-slim` resolves locally.
#
# It rewrites /etc/containers/storage.conf and containers.conf: meant for a throwaway test
# host. On a machine where `podman run debian:bookworm-slim true` already works, skip it
# (SKIP_PODMAN_SETUP=1 deploy/test-stack.sh).
set -e
if [ "$(id -u)" != 0 ]; then
  echo "setup-podman.sh: run as root (it installs packages and writes /etc/containers)" >&2
  exit 1
fi
if [ ! -f /var/lib/apt/lists/lock ] || [ -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap uidmap >/dev/null
mkdir -p /etc/containers
cat > /etc/containers/storage.conf <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
if ! podman image exists docker.io/library/debian:bookworm-slim; then
  tmp=$(mktemp -d)
  # No mirror named: mmdebstrap uses Debian's default mirror and adds updates and security.
  mmdebstrap --variant=minbase --include=ca-certificates bookworm "$tmp/base.tar" >/dev/null 2>&1
  podman import "$tmp/base.tar" docker.io/library/debian:bookworm-slim >/dev/null
  rm -rf "$tmp"
fi
echo "podman ready; base image docker.io/library/debian:bookworm-slim present"
