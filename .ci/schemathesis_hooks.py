"""Schemathesis hooks for .ci/schemathesis.sh: image fields get real images.

Whether bytes decode as an image is a rule no JSON Schema keyword states, so the document marks
image fields by format instead: `binary` (an upload: a multipart part, a raw body) and `image`
(a JSON string holding an image as base64 or as a `data:` URI). Values for both are drawn from
the committed fixture photos; every other field is generated from the document alone.
"""

import base64
import os
from pathlib import Path

import schemathesis
from hypothesis import strategies as st

PHOTOS = Path(os.environ.get("SCHEMATHESIS_PHOTOS", Path(__file__).parent.parent / "tests/fixtures/photos"))

# Small photos of each format the server reads (a broken one would be a schema-valid request
# the server rightly refuses).
FILES = {
    "pillow_hopper.jpg": "image/jpeg",
    "pillow_hopper_orientation_6.jpg": "image/jpeg",
    "pillow_orientation_rectangle.jpg": "image/jpeg",
    "pillow_hopper.webp": "image/webp",
    "pillow_hopper.gif": "image/gif",
    "pillow_hopper_gray.jpg": "image/jpeg",
    "skimage_horse.png": "image/png",
}
IMAGES = [((PHOTOS / name).read_bytes(), mime) for name, mime in FILES.items()]


def as_text(image: tuple[bytes, str], data_uri: bool) -> str:
    data, mime = image
    encoded = base64.b64encode(data).decode()
    return f"data:{mime};base64,{encoded}" if data_uri else encoded


schemathesis.openapi.format("binary", st.sampled_from([data for data, _ in IMAGES]))
schemathesis.openapi.format(
    "image", st.builds(as_text, st.sampled_from(IMAGES), st.booleans())
)
