# The load balancer of docker-compose.yml: Debian's nginx on the same base image as clipserve,
# so the stack builds where no registry but Debian's packages is reachable. Its settings are
# deploy/nginx.conf, mounted at /etc/nginx/nginx.conf.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# curl: the HEALTHCHECK.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx curl \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx.conf /etc/nginx/nginx.conf
# Reloads nginx when a replica comes back on a new address (see the script).
COPY nginx-entrypoint.sh /usr/local/bin/nginx-entrypoint
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/balancer-health"]
STOPSIGNAL SIGQUIT
CMD ["nginx-entrypoint"]
