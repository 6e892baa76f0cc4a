#!/usr/bin/env bash
# Tests the container deployment on this machine, end to end, with podman:
#
#   1. sets up podman (deploy/setup-podman.sh; SKIP_PODMAN_SETUP=1 to skip),
#   2. builds the release binary on the host and the image from it (Dockerfile, target
#      runtime-prebuilt) and the balancer image (deploy/haproxy.Dockerfile),
#   3. starts the topology of docker-compose.yml: replicas clipserve-1 and clipserve-2 (read-only
#      root, no capabilities, CPU and memory limits, the test model mounted read-only, a cache
#      volume, the shared network alias `clipserve`) behind HAProxy with deploy/haproxy.cfg
#      (finds the replicas by DNS, checks GET /ready every second, retries elsewhere), on a
#      podman network; the balancer is published on 127.0.0.1:$PORT only,
#   4. smoke: texts and fixture photos (raw, multipart, JSON base64) through the balancer,
#      request ids, both replicas used, healthcheck, non-root and read-only root,
#   5. faults under load (deploy/loadgen.py, bounded): `kill` (SIGKILL a replica, then start it
#      again), `stall` (SIGSTOP a replica past the proxy timeout, then SIGCONT), `restart`
#      (rolling restart: SIGTERM each replica in turn, wait until it serves again),
#   6. prints a summary table, removes everything it created, and exits 1 if any client
#      request failed.
#
# Usage: deploy/test-stack.sh [smoke] [kill] [stall] [restart]     (default: all of them)
# Environment: PORT (18080), CLIENTS (6 concurrent load clients), STALL_TIMEOUT (5: the
# balancer's `timeout server` in seconds for this test; the shipped haproxy.cfg has 35),
# CARGO_TARGET_DIR, SKIP_CARGO=1 (image from the binary already in deploy/.build), SKIP_BUILD=1
# (reuse the images), KEEP=1 (leave the stack running).
# Needs root (podman), cargo, curl and python3. Not part of CI: it takes minutes (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-18080}
CLIENTS=${CLIENTS:-6}
STALL_TIMEOUT=${STALL_TIMEOUT:-5}
P=clipserve-stack-test
NET=$P
IMAGE=localhost/clipserve:stack-test
LB_IMAGE=localhost/clipserve-balancer:stack-test
WORK=$(mktemp -d)
BASE=http://127.0.0.1:$PORT
FAULTS=("$@")
[ ${#FAULTS[@]} -gt 0 ] || FAULTS=(smoke kill stall restart)
SUMMARY=()
FAILED=0
STARTED=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

cleanup() {
    local code=$?
    if [ "${KEEP:-0}" = 1 ]; then
        log "KEEP=1: the stack stays up on $BASE (podman rm -f $P-1 $P-2 $P-lb to remove)"
    else
        podman rm -f -t 0 "$P-lb" "$P-1" "$P-2" >/dev/null 2>&1 || true
        podman network rm -f "$NET" >/dev/null 2>&1 || true
        podman volume rm -f "$P-cache" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$code"
}
trap cleanup EXIT

for tool in podman curl python3; do
    command -v "$tool" >/dev/null || [ "$tool" = podman ] || die "$tool is needed"
done

# ---- 1. podman
if [ "${SKIP_PODMAN_SETUP:-0}" != 1 ]; then
    log "setting up podman"
    sh deploy/setup-podman.sh
fi

# ---- 2. binary and images
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if [ "${SKIP_CARGO:-0}" != 1 ]; then
        log "building the release binary"
        cargo build --release --locked
        mkdir -p deploy/.build
        cp "${CARGO_TARGET_DIR:-target}/release/clipserve" deploy/.build/clipserve
    fi
    [ -x deploy/.build/clipserve ] || die "no binary at deploy/.build/clipserve"
    log "building $IMAGE (target runtime-prebuilt) and $LB_IMAGE"
    podman build -q --format docker --target runtime-prebuilt \
        --build-arg PREBUILT_BINARY=deploy/.build/clipserve -t "$IMAGE" . >/dev/null
    podman build -q --format docker -f deploy/haproxy.Dockerfile -t "$LB_IMAGE" deploy >/dev/null
fi

# ---- 3. the stack
podman rm -f -t 0 "$P-lb" "$P-1" "$P-2" >/dev/null 2>&1 || true
podman network rm -f "$NET" >/dev/null 2>&1 || true
# A run that was killed before its cleanup leaves these behind.
podman volume rm -f "$P-cache" >/dev/null 2>&1 || true
podman network create "$NET" >/dev/null
podman volume create "$P-cache" >/dev/null
# Resource limits need cgroup controllers; where the runtime cannot apply them, run without.
LIMITS=(--cpus 1 --memory 1g)
if ! podman run --rm "${LIMITS[@]}" "$IMAGE" --version >/dev/null 2>&1; then
    log "note: this host cannot apply --cpus/--memory; replicas run without limits"
    LIMITS=()
fi

start_replica() {
    local n=$1
    # As docker-compose.yml, with this test's shorter timeouts: a request finishes or fails
    # within STALL_TIMEOUT - 1 s, so the balancer's STALL_TIMEOUT means "stalled". The alias
    # `clipserve` is the name the balancer resolves: it answers with every replica's address.
    podman run -d --name "$P-$n" --network "$NET" --network-alias "clipserve-$n" \
        --network-alias clipserve \
        --read-only --cap-drop ALL --security-opt no-new-privileges "${LIMITS[@]}" \
        -v "$ROOT/tests/fixtures/models:/models:ro" -v "$P-cache:/cache" \
        -e CLIPSERVE_MODEL=/models/tiny -e CLIPSERVE_LOG_FORMAT=json \
        -e CLIPSERVE_SERVER_REQUEST_TIMEOUT_MS=$(((STALL_TIMEOUT - 1) * 1000)) \
        -e CLIPSERVE_SERVER_SHUTDOWN_GRACE_MS=10000 \
        --health-interval disable "$IMAGE" >/dev/null
}

ip_of() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$P-$1"; }

# A Linux bridge whose MAC address was never set takes the lowest MAC among its ports, so it
# changes when a container (a port) comes or goes. The containers' ARP caches still hold the
# old one, and what they send to the bridge's own address (the network's DNS server, and the
# answers to clients coming through the published port) is flooded to the other containers
# instead, until the entry expires (about 25 s here; never, while TCP traffic keeps it
# confirmed). Netavark 1.4 (Debian 12's podman) leaves it unset; Docker sets it. Setting it to
# its current value makes it stay.
pin_bridge_mac() {
    local dev
    dev=$(podman network inspect -f '{{.NetworkInterface}}' "$NET")
    [ -e "/sys/class/net/$dev" ] || die "no bridge $dev for network $NET"
    ip link set dev "$dev" address "$(cat "/sys/class/net/$dev/address")"
}

# Runs the image's HEALTHCHECK (clipserve healthcheck: GET /ready) until it passes.
wait_healthy() {
    local n=$1 i
    for i in $(seq 1 240); do
        podman healthcheck run "$P-$n" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    podman logs --tail 20 "$P-$n" >&2 || true
    die "replica $n never became healthy"
}

# Waits until the balancer has answered a request from replica n's current address (in a log
# line written after this call: an address may be reused by a later container).
wait_routed() {
    local n=$1 ip i skip
    ip=$(ip_of "$n")
    skip=$(podman logs "$P-lb" 2>/dev/null | wc -l)
    for i in $(seq 1 120); do
        curl -s -o /dev/null -H 'content-type: application/json' \
            -d '{"texts":["routing probe"]}' "$BASE/v1/embed/text" || true
        podman logs "$P-lb" 2>/dev/null | tail -n +"$((skip + 1))" >"$WORK/lb.log" || true
        grep -q "upstream=$ip:8080 status=200 " "$WORK/lb.log" && return 0
        sleep 0.5
    done
    lb_states >&2 || true
    die "the balancer never routed to replica $n at $ip"
}

# The balancer's view of its server slots (HAProxy's status page, on the container's loopback).
lb_states() {
    podman exec "$P-lb" curl -s '127.0.0.1:8404/;csv' |
        awk -F, '$1 == "replicas" && $2 != "BACKEND" && $18 !~ /^MAINT/ { print "  " $2, $18, $74 }'
}

log "starting replicas and the balancer"
start_replica 1
pin_bridge_mac
start_replica 2
wait_healthy 1
wait_healthy 2
sed -e "s/^\( *timeout server\) [0-9]*s/\1 ${STALL_TIMEOUT}s/" deploy/haproxy.cfg >"$WORK/haproxy.cfg"
grep -q "timeout server ${STALL_TIMEOUT}s" "$WORK/haproxy.cfg" || die "no timeout server in deploy/haproxy.cfg"
# As docker-compose.yml: read-only root, no capabilities (HAProxy runs as its own user).
podman run -d --name "$P-lb" --network "$NET" -p "127.0.0.1:$PORT:8080" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$WORK/haproxy.cfg:/etc/haproxy/haproxy.cfg:ro" --health-interval disable "$LB_IMAGE" >/dev/null
for i in $(seq 1 60); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/ready")" = 200 ] && break
    [ "$i" = 60 ] && die "the balancer never answered /ready with 200"
    sleep 0.5
done
wait_routed 1
wait_routed 2
log "stack up on $BASE (replicas at $(ip_of 1) and $(ip_of 2)); the balancer's slots:"
lb_states >&2

# ---- 4. smoke
PHOTOS=tests/fixtures/photos
# Checks a JSON answer: N unit-length embeddings.
check_embeddings() {
    python3 -c '
import json, math, sys
n = int(sys.argv[1]); doc = json.load(sys.stdin); e = doc["embeddings"]
assert len(e) == n, f"{len(e)} embeddings, wanted {n}"
assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in e), "not unit length"
print(len(e), "x", doc["dimensions"], "from", doc["model"])' "$1"
}

lb_lines() { podman logs "$P-lb" 2>/dev/null | grep -c ' upstream=[0-9]' || true; }

smoke() {
    local t0 out id lines used b64 n0 n
    t0=$(date +%s)
    n0=$(lb_lines)
    log "smoke: texts"
    curl -sf "$BASE/v1/embed/text" -H 'content-type: application/json' \
        -d '{"texts":["a photo of a cat","una foto de un gato","猫の写真"]}' | check_embeddings 3
    log "smoke: a raw JPEG body, a PNG body, two multipart parts, JSON base64"
    curl -sf "$BASE/v1/embed/image" -H 'content-type: image/jpeg' \
        --data-binary "@$PHOTOS/pillow_hopper.jpg" | check_embeddings 1
    curl -sf "$BASE/v1/embed/image" -H 'content-type: image/png' \
        --data-binary "@$PHOTOS/skimage_chelsea.png" | check_embeddings 1
    curl -sf "$BASE/v1/embed/image" -F "image=@$PHOTOS/skimage_coffee.png" \
        -F "image=@$PHOTOS/skimage_rocket.jpg" | check_embeddings 2
    b64=$(base64 -w0 "$PHOTOS/pillow_flower.jpg")
    printf '{"images":["%s"]}' "$b64" >"$WORK/b64.json"
    curl -sf "$BASE/v1/embed/image" -H 'content-type: application/json' \
        --data-binary "@$WORK/b64.json" | check_embeddings 1
    log "smoke: the request id reaches the replica's JSON log and comes back"
    id="stack-test-$RANDOM$RANDOM"
    out=$(curl -sf -D - -o /dev/null -H "x-request-id: $id" -H 'content-type: application/json' \
        -d '{"texts":["request id"]}' "$BASE/v1/embed/text")
    grep -qi "^x-request-id: $id" <<<"$out" || die "x-request-id not echoed"
    sleep 0.5
    lines=$( (podman logs "$P-1"; podman logs "$P-2") 2>&1 | grep -c "\"request_id\":\"$id\"" || true)
    [ "$lines" -ge 1 ] || die "request id $id not in the replicas' logs"
    log "smoke: 20 requests spread over both replicas"
    for i in $(seq 1 20); do
        curl -sf -o /dev/null "$BASE/v1/embed/text" -H 'content-type: application/json' \
            -d "{\"texts\":[\"spread $i\"]}"
    done
    used=$(podman logs --tail 20 "$P-lb" 2>/dev/null | grep -o 'upstream=[0-9.]*:8080' | sort -u | wc -l)
    [ "$used" = 2 ] || die "the last 20 requests used $used replica(s)"
    log "smoke: non-root, read-only root, healthcheck, errors pass through as JSON"
    [ "$(podman exec "$P-1" id -u)" = 10001 ] || die "the server does not run as uid 10001"
    if podman exec "$P-1" touch /probe 2>/dev/null; then die "the root file system is writable"; fi
    podman exec "$P-1" clipserve healthcheck || die "clipserve healthcheck failed"
    if podman exec "$P-1" clipserve healthcheck --url http://127.0.0.1:8080/nope 2>/dev/null; then
        die "clipserve healthcheck passed on a 404"
    fi
    out=$(curl -s -w ' %{http_code}' "$BASE/v1/embed/text" -H 'content-type: application/json' -d '{"texts":')
    grep -q '"error"' <<<"$out" && grep -q ' 400$' <<<"$out" || die "bad JSON gave: $out"
    n=$(($(lb_lines) - n0))
    SUMMARY+=("$(printf '%-8s %6ss %8s %8s %8s %8s %8s %9s %9s %9s' smoke $(($(date +%s) - t0)) "$n" "$n" 0 - - - - -)")
}

# ---- 5. faults under load
# Starts the load, waits, runs the fault ($2...), waits, stops the load; adds a summary row.
LOAD_PID=
start_load() {
    rm -f "$WORK/stop"
    LB_LINES=$(podman logs "$P-lb" 2>/dev/null | wc -l)
    python3 deploy/loadgen.py --url "$BASE" --photos "$PHOTOS" --clients "$CLIENTS" \
        --stop-file "$WORK/stop" --max-seconds 240 >"$WORK/load.json" &
    LOAD_PID=$!
}

stop_load() {
    local name=$1 t0=$2 retried
    touch "$WORK/stop"
    wait "$LOAD_PID"
    podman logs "$P-lb" 2>/dev/null | tail -n +"$((LB_LINES + 1))" >"$WORK/lb-fault.log" || true
    retried=$(grep -cE ' retries=\+?[1-9]' "$WORK/lb-fault.log" || true)
    # What the balancer saw: replicas leaving and joining, addresses changing.
    grep -E '^(Server|replicas/)' "$WORK/lb-fault.log" | sed 's/^/  balancer: /' | cut -c1-150 >&2 || true
    python3 - "$name" "$(($(date +%s) - t0))" "$retried" "$WORK/load.json" >>"$WORK/rows" <<'PY'
import json, sys
name, secs, retried, path = sys.argv[1:]
s = json.load(open(path))
print(f"{name:<8} {secs:>6}s {s['total']:>8} {s['ok']:>8} {s['failed']:>8} {retried:>8} "
      f"{s['stale_keepalive_resends']:>8} {s['p50_ms']:>7}ms {s['p99_ms']:>7}ms {s['max_ms']:>7}ms")
if s["failed"]:
    print(f"         failures: {s['failures']}", file=sys.stderr)
PY
    SUMMARY+=("$(tail -1 "$WORK/rows")")
    FAILED=$((FAILED + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$WORK/load.json")))
    log "$name: $(cat "$WORK/load.json")"
}

fault_kill() {
    local t0
    t0=$(date +%s)
    log "kill: SIGKILL replica 1 under load, start it again"
    start_load
    sleep 3
    podman kill -s KILL "$P-1" >/dev/null
    sleep 5
    podman start "$P-1" >/dev/null
    wait_healthy 1
    wait_routed 1
    sleep 2
    stop_load kill "$t0"
}

fault_stall() {
    local t0
    t0=$(date +%s)
    log "stall: SIGSTOP replica 2 for $((STALL_TIMEOUT + 5)) s (server timeout ${STALL_TIMEOUT} s), then SIGCONT"
    start_load
    sleep 3
    podman kill -s STOP "$P-2" >/dev/null
    sleep $((STALL_TIMEOUT + 5))
    podman kill -s CONT "$P-2" >/dev/null
    wait_healthy 2
    sleep 3
    stop_load stall "$t0"
}

fault_restart() {
    local t0 n code
    t0=$(date +%s)
    log "restart: SIGTERM each replica in turn under load (drain, exit 0, start, ready)"
    start_load
    sleep 3
    for n in 1 2; do
        podman stop -t 15 "$P-$n" >/dev/null
        code=$(podman inspect -f '{{.State.ExitCode}}' "$P-$n")
        [ "$code" = 0 ] || die "replica $n exited with $code after SIGTERM"
        podman start "$P-$n" >/dev/null
        wait_healthy "$n"
        wait_routed "$n"
        sleep 2
    done
    stop_load restart "$t0"
}

for f in "${FAULTS[@]}"; do
    case $f in
        smoke) smoke ;;
        kill) fault_kill ;;
        stall) fault_stall ;;
        restart) fault_restart ;;
        *) die "unknown step $f (smoke, kill, stall, restart)" ;;
    esac
done

# ---- 6. summary
echo
echo "clipserve stack test: 2 replicas + HAProxy, $CLIENTS load clients, server timeout ${STALL_TIMEOUT}s"
printf '%-8s %7s %8s %8s %8s %8s %8s %9s %9s %9s\n' step time requests ok failed retried resent p50 p99 max
for row in "${SUMMARY[@]}"; do echo "$row"; done
echo "retried: requests HAProxy sent again, to another replica, after a failed connect, a"
echo "         connection closed with no answer, no answer within the server timeout, or a 503"
echo "resent: requests the client sent again because the balancer had closed an idle keep-alive"
echo "        connection (a client-side reconnect, not a failed request)"
echo "total: $(($(date +%s) - STARTED)) s"
[ "$FAILED" = 0 ] || die "$FAILED client request(s) failed"
log "PASS: no client request failed"
