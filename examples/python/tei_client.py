"""Checks clipserve's TEI-style `POST /embed` with huggingface_hub's InferenceClient, the client
text-embeddings-inference users already have, and `GET /v1/models` with the openai client.

    python examples/python/tei_client.py --url http://127.0.0.1:8080

Each check prints PASS or FAIL; the exit status is the number of failures (0: all passed).
"""

import argparse
import json
import math
import os
import sys
import urllib.request

import openai
from huggingface_hub import InferenceClient

TEXTS = ["a photo of a cat", "una foto de un gato", "猫の写真"]


def native_texts(url: str, texts: list[str], api_key: str | None) -> list[list[float]]:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        url + "/v1/embed/text", data=json.dumps({"texts": texts}).encode(), headers=headers
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["embeddings"]


def cosine(a, b) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("CLIPSERVE_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    url = args.url.rstrip("/")
    api_key = os.environ.get("CLIPSERVE_API_KEY") or None
    native = native_texts(url, TEXTS, api_key)
    # TEI's own route: InferenceClient posts {"inputs": ...} to the URL it is given.
    tei = InferenceClient(model=url + "/embed", token=api_key)
    failures = 0

    def check(name, fn):
        nonlocal failures
        try:
            print(f"PASS {name}: {fn()}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            failures += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")

    def one_text():
        v = tei.feature_extraction(TEXTS[0])
        rows = v.tolist()
        assert len(rows) == 1 and len(rows[0]) == len(native[0]), f"shape {v.shape}"
        c = cosine(rows[0], native[0])
        assert c >= 0.99999, f"cosine {c} with /v1/embed/text"
        return f"shape {tuple(v.shape)}, cosine {c:.7f} with /v1/embed/text"

    def a_list():
        rows = tei.feature_extraction(TEXTS).tolist()
        assert len(rows) == len(TEXTS), f"{len(rows)} rows for {len(TEXTS)} texts"
        cs = [cosine(a, b) for a, b in zip(rows, native)]
        assert min(cs) >= 0.99999, f"cosines {cs}"
        return f"{len(rows)} rows in order, lowest cosine {min(cs):.7f}"

    def models_list():
        client = openai.OpenAI(base_url=url + "/v1", api_key=api_key or "unused", max_retries=0)
        ids = [m.id for m in client.models.list().data]
        info = json.load(urllib.request.urlopen(url + "/info", timeout=30))
        served = info["model"]["name"] if isinstance(info.get("model"), dict) else info.get("model")
        assert ids and served in ids, f"{ids} does not list the served {served!r}"
        return f"models {ids}"

    check("huggingface_hub InferenceClient.feature_extraction: one text", one_text)
    check("huggingface_hub InferenceClient.feature_extraction: a list", a_list)
    check("openai client.models.list()", models_list)
    print("ALL CHECKS PASSED" if failures == 0 else f"FAILED {failures}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
