#!/usr/bin/env python3
"""A plain `requests` client for clipserve's own API: embed texts, upload images, compare
images with texts, and classify images zero-shot.

    python client.py --url http://127.0.0.1:8080 [image.jpg ...]

Errors come back as {"error": {"type", "message", "index"?}}; this client prints them and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import sys
from pathlib import Path

import requests

PHOTOS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "photos"
DEFAULT_IMAGES = [PHOTOS / "pillow_hopper.jpg", PHOTOS / "skimage_chelsea.png"]


class ClipServe:
    """The few calls most applications need, on one `requests.Session`."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if not response.ok:
            try:
                error = response.json()["error"]
                detail = f"{error['type']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                detail = response.text[:200]
            raise RuntimeError(f"{method} {path} -> {response.status_code} {detail}")
        return response.json()

    def info(self) -> dict:
        return self._call("GET", "/info")

    def embed_texts(self, texts: list[str]) -> list[list[float]]:
        return self._call("POST", "/v1/embed/text", json={"texts": texts})["embeddings"]

    def embed_image_files(self, paths: list[Path]) -> list[list[float]]:
        """Uploads files as multipart parts named `image`: no base64 overhead."""
        handles = [p.open("rb") for p in paths]
        try:
            files = [
                ("image", (p.name, h, mimetypes.guess_type(p.name)[0] or "application/octet-stream"))
                for p, h in zip(paths, handles)
            ]
            return self._call("POST", "/v1/embed/image", files=files)["embeddings"]
        finally:
            for h in handles:
                h.close()

    def similarity(self, images: list[Path], texts: list[str]) -> dict:
        body = {"images": [data_uri(p) for p in images], "texts": texts}
        return self._call("POST", "/v1/similarity", json=body)

    def classify(self, images: list[Path], labels: list[str], template: str | None = None) -> list:
        body: dict = {"images": [data_uri(p) for p in images], "labels": labels}
        if template:
            body["template"] = template
        return self._call("POST", "/v1/classify", json=body)["results"]


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def preview(vector: list[float]) -> str:
    return "[" + ", ".join(f"{x:+.4f}" for x in vector[:4]) + ", ...]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_url = os.environ.get("CLIPSERVE_URL", "http://127.0.0.1:8080").rstrip("/")
    parser.add_argument(
        "--url",
        default=default_url.removesuffix("/v1"),
        help="the server's root URL (default: $CLIPSERVE_URL without /v1, or :8080)",
    )
    parser.add_argument("images", nargs="*", type=Path, default=DEFAULT_IMAGES)
    args = parser.parse_args()
    server = ClipServe(args.url, os.environ.get("CLIPSERVE_SERVER_API_KEY"))
    names = [p.name for p in args.images]
    texts = ["a photo of a man", "ein Foto einer Katze", "une photo d'une fusée"]
    try:
        info = server.info()
        print(f"server: {info['model']}, {info['dimensions']} dims, version {info['version']}")

        for text, vector in zip(texts, server.embed_texts(texts)):
            print(f"text  {text!r:28} -> {len(vector)} dims {preview(vector)}")

        for name, vector in zip(names, server.embed_image_files(args.images)):
            print(f"image {name!r:28} -> {len(vector)} dims {preview(vector)}")

        scores = server.similarity(args.images, texts)
        for name, row, probs in zip(names, scores["scores"], scores["probabilities"]):
            best = max(range(len(texts)), key=lambda j: probs[j])
            cells = "  ".join(f"{s:+.3f}" for s in row)
            print(f"similarity {name}: {cells}  best {texts[best]!r} (p={probs[best]:.2f})")

        labels = ["person", "cat", "rocket", "flower"]
        for name, result in zip(names, server.classify(args.images, labels)):
            top = ", ".join(f"{s['label']} {s['probability']:.2f}" for s in result["labels"][:3])
            print(f"classify {name}: {top}")
    except (RuntimeError, requests.RequestException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
