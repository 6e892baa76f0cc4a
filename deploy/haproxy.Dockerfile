# The load balancer of docker-compose.yml: Debian's HAProxy (2.6 in bookworm) on the same base
# image as clipserve, so the stack builds where no registry but Debian's packages is
# reachable. Its settings are deploy/haproxy.cfg, copied here and mounted over by compose.
#
#   docker build -f deploy/haproxy.Dockerfile -t clipserve-balancer deploy
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# curl: the HEALTHCHECK. The package creates the unprivileged `haproxy` user.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy curl \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
# Never root: port 8080 needs no privilege, and the configuration needs no chroot, pid file or
# socket, so nothing is written at run time (the container runs with a read-only root).
USER haproxy
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/balancer-health"]
# SIGUSR1: stop accepting, let requests in flight finish (hard-stop-after bounds it).
STOPSIGNAL SIGUSR1
# -db: foreground, logs to stdout; exec form, so HAProxy is PID 1 and gets the signal.
CMD ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
