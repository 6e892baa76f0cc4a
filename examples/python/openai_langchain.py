#!/usr/bin/env python3
"""clipserve's `POST /v1/embeddings` through the official `openai` client and LangChain.

Every check asserts what a client relies on: vector lengths, unit norm, base64 == float,
`dimensions` truncation, token usage, LangChain == openai for the same text, images through the
same route (`"modality": "image"`), and errors raised as `openai.BadRequestError` with a
message that says what to fix. Prints one PASS/FAIL line per check; exits 1 if any fails.

    python openai_langchain.py --base-url http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import struct
import sys
import traceback
import urllib.request
from pathlib import Path
from typing import Callable

import openai
from langchain_openai import OpenAIEmbeddings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = ROOT / "tests" / "fixtures" / "photos" / "pillow_hopper.jpg"
# The server accepts any model name and answers with the one it serves.
MODEL = "xlm-roberta-base-ViT-B-32"
DIMS = 512
# One sentence in several languages and scripts: the text tower is multilingual.
DOCUMENTS = [
    "A photo of a cat sleeping on a sofa.",
    "Ein Foto einer Katze, die auf einem Sofa schläft.",
    "Une photo d'un chat qui dort sur un canapé.",
    "Фотография кошки, спящей на диване.",
    "ソファで眠る猫の写真。",
    "一只猫在沙发上睡觉的照片。",
    "صورة قطة نائمة على أريكة.",
    "",
]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def assert_unit(v: list[float], length: int, what: str) -> None:
    assert len(v) == length, f"{what}: {len(v)} components, expected {length}"
    assert all(math.isfinite(x) for x in v), f"{what}: non-finite component"
    assert abs(norm(v) - 1.0) < 1e-4, f"{what}: norm {norm(v):.6f}, expected 1"


def assert_same(a: list[float], b: list[float], what: str) -> float:
    c = cosine(a, b)
    assert c > 0.99999, f"{what}: cosine {c:.7f}, expected > 0.99999"
    return c


def decode_base64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    assert len(raw) % 4 == 0, f"base64 payload of {len(raw)} bytes is not whole f32s"
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class Checks:
    """Runs named checks, prints PASS/FAIL per check, and counts failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def run(self, name: str, check: Callable[[], str]) -> None:
        try:
            detail = check()
        except Exception as e:  # noqa: BLE001 - any failure is reported, then counted
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            if not isinstance(e, (AssertionError, openai.OpenAIError)):
                traceback.print_exc()
            return
        self.passed += 1
        print(f"PASS {name}: {detail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-url",
        default=os.environ.get("CLIPSERVE_URL", "http://127.0.0.1:8080/v1"),
        help="the server's /v1 URL (default: $CLIPSERVE_URL or http://127.0.0.1:8080/v1)",
    )
    parser.add_argument("--model", default=MODEL, help="model name to send (any is accepted)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="a JPEG to embed")
    args = parser.parse_args()
    base_url = args.base_url.rstrip("/")
    # The API key, when the server requires one (server.api_key); anything otherwise.
    api_key = os.environ.get("CLIPSERVE_SERVER_API_KEY") or "unused"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    model = args.model
    image_b64 = base64.b64encode(args.image.read_bytes()).decode()
    data_uri = f"data:image/jpeg;base64,{image_b64}"
    checks = Checks()
    # Filled by earlier checks, compared against by later ones.
    seen: dict[str, list[float]] = {}

    def single_string() -> str:
        r = client.embeddings.create(model=model, input=DOCUMENTS[0], encoding_format="float")
        assert r.object == "list" and len(r.data) == 1, f"{len(r.data)} embeddings for 1 input"
        assert r.data[0].index == 0 and r.data[0].object == "embedding"
        assert r.model, "the answer names no model"
        assert_unit(r.data[0].embedding, DIMS, "embedding")
        assert r.usage.prompt_tokens > 0, f"prompt_tokens {r.usage.prompt_tokens}"
        assert r.usage.total_tokens == r.usage.prompt_tokens
        seen["cat"] = r.data[0].embedding
        return (
            f"{DIMS} dims, norm {norm(r.data[0].embedding):.6f}, "
            f"prompt_tokens {r.usage.prompt_tokens}, model {r.model!r}"
        )

    def list_in_order() -> str:
        r = client.embeddings.create(model=model, input=DOCUMENTS, encoding_format="float")
        assert [d.index for d in r.data] == list(range(len(DOCUMENTS))), "indices out of order"
        vectors = [d.embedding for d in r.data]
        for i, v in enumerate(vectors):
            assert_unit(v, DIMS, f"input[{i}]")
        assert_same(vectors[0], seen["cat"], "input[0] in a batch vs alone")
        # Each item's vector is its own: embedded alone it comes out the same.
        last = client.embeddings.create(model=model, input=DOCUMENTS[-2], encoding_format="float")
        assert_same(vectors[-2], last.data[0].embedding, f"input[{len(DOCUMENTS) - 2}] vs alone")
        distinct = {tuple(round(x, 5) for x in v) for v in vectors}
        assert len(distinct) == len(vectors), "different texts gave identical vectors"
        assert r.usage.prompt_tokens > len(DOCUMENTS), f"prompt_tokens {r.usage.prompt_tokens}"
        seen.update({f"doc{i}": v for i, v in enumerate(vectors)})
        return f"{len(vectors)} texts in {len(DOCUMENTS)} slots, in order, unit norm"

    def base64_matches_float() -> str:
        b = client.embeddings.create(model=model, input=DOCUMENTS[:3], encoding_format="base64")
        worst = 0.0
        for i, d in enumerate(b.data):
            assert isinstance(d.embedding, str), f"base64 answer {i} is {type(d.embedding)}"
            floats = decode_base64(d.embedding)
            assert len(floats) == DIMS, f"base64 answer {i}: {len(floats)} floats"
            worst = max(worst, max(abs(x - y) for x, y in zip(floats, seen[f"doc{i}"])))
        assert worst <= 1e-6, f"base64 and float differ by {worst:g}"
        # Without encoding_format the client asks for base64 itself and decodes it.
        d = client.embeddings.create(model=model, input=DOCUMENTS[0])
        default = d.data[0].embedding
        assert isinstance(default, list), f"default format gave {type(default)}"
        gap = max(abs(x - y) for x, y in zip(default, seen["cat"]))
        assert gap <= 1e-6, f"client-decoded default differs from float by {gap:g}"
        return f"max |base64 - float| = {worst:g}; client's default decoding matches too"

    def dimensions_128() -> str:
        r = client.embeddings.create(
            model=model, input=DOCUMENTS[0], dimensions=128, encoding_format="float"
        )
        v = r.data[0].embedding
        assert_unit(v, 128, "dimensions=128")
        head = seen["cat"][:128]
        expected = [x / norm(head) for x in head]
        gap = max(abs(x - y) for x, y in zip(v, expected))
        assert gap < 1e-5, f"not the renormalized first 128 components (gap {gap:g})"
        return f"128 dims, unit norm, = first 128 of the full vector renormalized (gap {gap:g})"

    def dimensions_zero_refused() -> str:
        try:
            client.embeddings.create(model=model, input="x", dimensions=0)
        except openai.BadRequestError as e:
            assert e.status_code == 400, f"status {e.status_code}"
            assert "dimensions" in e.message and str(DIMS) in e.message, e.message
            assert e.param == "dimensions", f"param {e.param!r}"
            return f"BadRequestError 400: {e.message}"
        raise AssertionError("dimensions=0 was accepted")

    def token_ids_refused() -> str:
        try:
            client.embeddings.create(model=model, input=[[9906, 1917]])
        except openai.BadRequestError as e:
            assert "check_embedding_ctx_length=False" in e.message, e.message
            return f"BadRequestError 400 names the LangChain fix (param {e.param!r})"
        raise AssertionError("token ids were accepted")

    def langchain_matches_openai() -> str:
        lc = OpenAIEmbeddings(
            model=model, base_url=base_url, api_key=api_key, check_embedding_ctx_length=False
        )
        query = lc.embed_query(DOCUMENTS[0])
        assert_unit(query, DIMS, "embed_query")
        worst = assert_same(query, seen["cat"], "embed_query vs openai")
        docs = lc.embed_documents(DOCUMENTS)
        assert len(docs) == len(DOCUMENTS), f"{len(docs)} vectors for {len(DOCUMENTS)} texts"
        for i, v in enumerate(docs):
            assert_unit(v, DIMS, f"embed_documents[{i}]")
            worst = min(worst, assert_same(v, seen[f"doc{i}"], f"embed_documents[{i}] vs openai"))
        short = OpenAIEmbeddings(
            model=model,
            base_url=base_url,
            api_key=api_key,
            check_embedding_ctx_length=False,
            dimensions=128,
        ).embed_query(DOCUMENTS[0])
        assert_unit(short, 128, "LangChain dimensions=128")
        return f"embed_query + {len(docs)} documents equal openai's (min cosine {worst:.7f})"

    def image_via_modality() -> str:
        r = client.embeddings.create(
            model=model,
            input=[data_uri, image_b64],
            encoding_format="float",
            extra_body={"modality": "image"},
        )
        assert len(r.data) == 2, f"{len(r.data)} embeddings for 2 images"
        uri_vec, bare_vec = (d.embedding for d in r.data)
        assert_unit(uri_vec, DIMS, "image")
        assert_same(uri_vec, bare_vec, "data URI vs bare base64")
        assert r.usage.prompt_tokens == 0, f"images counted {r.usage.prompt_tokens} tokens"
        # The same pipeline as the native route: the same vector.
        native = native_post(base_url + "/embed/image", {"images": [data_uri]}, api_key)
        c = assert_same(uri_vec, native["embeddings"][0], "/v1/embeddings vs /v1/embed/image")
        text = cosine(uri_vec, seen["cat"])
        return f"{args.image.name}: {DIMS} dims, = /v1/embed/image (cosine {c:.7f}); vs text {text:+.4f}"

    def image_url_refused() -> str:
        try:
            client.embeddings.create(
                model=model, input="https://example.com/cat.jpg", extra_body={"modality": "image"}
            )
        except openai.BadRequestError as e:
            assert "data URI" in e.message, e.message
            return f"BadRequestError 400: {e.message[:70]}..."
        raise AssertionError("an image URL was accepted")

    checks.run("openai: one string", single_string)
    checks.run("openai: list of texts, several languages", list_in_order)
    checks.run("openai: base64 == float", base64_matches_float)
    checks.run("openai: dimensions=128", dimensions_128)
    checks.run("openai: dimensions=0 -> BadRequestError", dimensions_zero_refused)
    checks.run("openai: token ids -> BadRequestError", token_ids_refused)
    checks.run("langchain: OpenAIEmbeddings == openai", langchain_matches_openai)
    checks.run("openai: image via modality=image", image_via_modality)
    checks.run("openai: image URL -> BadRequestError", image_url_refused)
    total = checks.passed + len(checks.failed)
    if checks.failed:
        print(f"FAILED {len(checks.failed)} of {total}: {', '.join(checks.failed)}")
        return 1
    print(f"ALL {total} CHECKS PASSED against {base_url}")
    return 0


def native_post(url: str, body: dict, api_key: str) -> dict:
    """POSTs JSON to one of clipserve's own routes (stdlib only) and returns the answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


if __name__ == "__main__":
    sys.exit(main())
