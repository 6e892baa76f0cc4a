#!/usr/bin/env python3
"""Bounded load through the balancer for deploy/test-stack.sh (standard library only).

Runs CLIENTS threads, each sending embedding requests back to back over its own keep-alive
connection (texts, and fixture photos as raw bodies, multipart and JSON base64), until the
stop file exists or --max-seconds pass. A request counts as ok only when it answered 200 with
one finite, unit-length embedding per input. A request whose reused keep-alive connection
turns out to be closed is sent once more on a new connection, as HTTP clients do for
idempotent requests; those resends are counted apart. Prints one JSON summary line.

  loadgen.py --url http://127.0.0.1:18080 --photos tests/fixtures/photos --stop-file /tmp/x
"""

import argparse
import base64
import http.client
import json
import math
import os
import threading
import time
import urllib.parse
import uuid


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="balancer base URL (loopback)")
    p.add_argument("--photos", required=True, help="folder of fixture photos")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--stop-file", required=True, help="stop once this file exists")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hard bound on the run")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout")
    return p.parse_args()


def requests(photos):
    """An endless cycle of (label, path, headers, body, items) requests."""
    images = [open(os.path.join(photos, n), "rb").read() for n in photos_names(photos)]
    texts = ["a photo of a cat", "una foto de un gato", "猫の写真", "ein Foto eines Hundes"]
    i = 0
    while True:
        i += 1
        img = images[i % len(images)]
        kind = i % 4
        if kind == 0:
            body = json.dumps({"texts": texts[: 1 + i % len(texts)]}).encode()
            yield "text", "/v1/embed/text", {"content-type": "application/json"}, body, 1 + i % len(texts)
        elif kind == 1:
            yield "image-raw", "/v1/embed/image", {"content-type": "image/jpeg"}, img, 1
        elif kind == 2:
            boundary = uuid.uuid4().hex
            body = (
                f"--{boundary}\r\ncontent-disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                f"content-type: image/jpeg\r\n\r\n"
            ).encode() + img + f"\r\n--{boundary}--\r\n".encode()
            yield "image-multipart", "/v1/embed/image", {
                "content-type": f"multipart/form-data; boundary={boundary}"
            }, body, 1
        else:
            body = json.dumps({"images": [base64.b64encode(img).decode()] * 2}).encode()
            yield "image-json", "/v1/embed/image", {"content-type": "application/json"}, body, 2


def photos_names(photos):
    names = sorted(n for n in os.listdir(photos) if n.startswith("pillow_hopper") and n.endswith(".jpg"))
    if not names:
        raise SystemExit(f"no pillow_hopper*.jpg in {photos}")
    return names


def valid(body, items):
    try:
        doc = json.loads(body)
        vectors = doc["embeddings"]
    except (ValueError, KeyError, TypeError):
        return False
    if len(vectors) != items:
        return False
    for v in vectors:
        if not v or not all(math.isfinite(x) for x in v):
            return False
        if abs(math.sqrt(sum(x * x for x in v)) - 1.0) > 1e-3:
            return False
    return True


# Errors of a reused keep-alive connection that the peer closed while it was idle: the race
# every HTTP/1.1 client meets (when the balancer closes an idle client connection).
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def client(args, host, port, stats, lock, deadline):
    gen = requests(args.photos)
    conn = None
    while time.monotonic() < deadline and not os.path.exists(args.stop_file):
        label, path, headers, body, items = next(gen)
        started = time.monotonic()
        outcome = "ok"
        stale_retry = False
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    response = conn.getresponse()
                    break
                except STALE:
                    conn.close()
                    conn = None
                    # Like common HTTP clients, resend an idempotent request once on a fresh
                    # connection when a reused one turned out to be closed; counted apart.
                    if not reused or stale_retry:
                        raise
                    stale_retry = True
            data = response.read()
            if response.status != 200:
                outcome = f"status {response.status}"
            elif not valid(data, items):
                outcome = "bad body"
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            outcome = f"error {type(e).__name__}"
            if conn is not None:
                conn.close()
            conn = None
        elapsed = time.monotonic() - started
        with lock:
            stats["total"] += 1
            stats["stale_keepalive_resends"] += int(stale_retry)
            stats["latencies"].append(elapsed)
            stats["by_kind"][label] = stats["by_kind"].get(label, 0) + 1
            if outcome == "ok":
                stats["ok"] += 1
            else:
                stats["failed"] += 1
                stats["failures"][outcome] = stats["failures"].get(outcome, 0) + 1


def main():
    args = parse_args()
    url = urllib.parse.urlparse(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loadgen only targets loopback")
    stats = {
        "total": 0,
        "ok": 0,
        "failed": 0,
        "failures": {},
        "by_kind": {},
        "latencies": [],
        "stale_keepalive_resends": 0,
    }
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.max_seconds
    threads = [
        threading.Thread(target=client, args=(args, url.hostname, url.port, stats, lock, deadline))
        for _ in range(args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(stats.pop("latencies"))

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    stats.update(
        seconds=round(time.monotonic() - started, 1),
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        max_ms=round(lat[-1] * 1000, 1) if lat else None,
    )
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
