#!/bin/sh
# Runs nginx in the foreground on a copy of /etc/nginx/nginx.conf whose upstream `server NAME:PORT`
# lines carry the replicas' current addresses, and reloads nginx when those change.
#
# Why: open-source nginx before 1.27.3 resolves upstream names once, at start (and refuses a
# configuration with a name that does not resolve). In compose and podman networks a replica
# that restarts comes back on a new address, and its name does not resolve while it is down.
# So every few seconds this looks the names up; a name with no answer keeps its last known
# addresses (nginx's passive checks skip it while it is down), a name with several answers
# (a scaled service) becomes one `server` line per address. When the result changes, nginx
# reloads gracefully: in-flight requests finish on the old workers.
set -eu
template=/etc/nginx/nginx.conf
state=${BALANCER_STATE_DIR:-/run/nginx-balancer}
interval=${RESOLVE_INTERVAL_SECONDS:-2}
mkdir -p "$state"
conf=$state/nginx.conf
names=$(awk '$1 == "server" && $2 ~ /^[A-Za-z][A-Za-z0-9._-]*:[0-9]+/ { split($2, hp, ":"); print hp[1] }' "$template" | sort -u)

# Writes "name addr,addr" per upstream name to $1, falling back to the last known addresses.
resolve() {
    : >"$1.new"
    for name in $names; do
        addrs=$(getent ahostsv4 "$name" 2>/dev/null | awk '{ print $1 }' | sort -u | paste -sd, -)
        if [ -z "$addrs" ] && [ -f "$1" ]; then
            addrs=$(awk -v n="$name" '$1 == n { print $2 }' "$1")
        fi
        echo "$name ${addrs:-}" >>"$1.new"
    done
    mv "$1.new" "$1"
}

# Renders the template with each upstream name replaced by its addresses.
render() {
    awk 'NR == FNR { addrs[$1] = $2; next }
         $1 == "server" && $2 ~ /^[A-Za-z][A-Za-z0-9._-]*:[0-9]+/ {
             split($2, hp, ":"); name = hp[1]; port = hp[2]
             if (addrs[name] != "") {
                 indent = substr($0, 1, index($0, "server") - 1)
                 rest = substr($0, index($0, $2) + length($2))
                 n = split(addrs[name], a, ",")
                 for (i = 1; i <= n; i++) print indent "server " a[i] ":" port rest
                 next
             }
         }
         { print }' "$state/addresses" "$template" >"$conf"
}

resolve "$state/addresses"
render
nginx -c "$conf" -g 'daemon off;' &
pid=$!
# SIGQUIT is nginx's graceful stop (the image's STOPSIGNAL); SIGTERM is its fast stop.
trap 'kill -QUIT "$pid" 2>/dev/null' QUIT
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
last=$(cat "$state/addresses")
while kill -0 "$pid" 2>/dev/null; do
    sleep "$interval" &
    wait $! || true
    resolve "$state/addresses"
    now=$(cat "$state/addresses")
    if [ "$now" != "$last" ]; then
        render
        if nginx -t -q -c "$conf" 2>/dev/null; then
            echo "nginx-entrypoint: upstream addresses now $(echo "$now" | paste -sd' ' -); reloading" >&2
            nginx -c "$conf" -s reload
            last=$now
        fi
    fi
done
wait "$pid"
