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


# The parts each multipart form documents; any other part is refused.
FORM_PARTS = {
    "/predict": {"entries", "image", "text"},
    "/v1/embed/image": {"image"},
}


def vanishes(value) -> bool:
    """True for a value the multipart encoder sends as no part at all: an empty list (a list
    goes out as one part per item; `null` and `{}` go out as the parts "null" and "{}")."""
    return isinstance(value, list) and not value


@schemathesis.hook
def filter_case(context, case):
    """Drops multipart cases whose form the multipart encoder cannot send as generated.

    A multipart form part is bytes: a generated `null`, number or list for /predict's `text`
    goes out as the text `null`, `5` or repeated parts, so the server sees a text (and serves
    it) or a missing part (and refuses it) whatever the case meant. Likewise an undocumented
    field whose value is an empty list (a negative case: "additionalProperties") goes out as no
    part at all, on any form, so the request on the wire is the valid form it was mutated from,
    and serving it is right (seen on /predict once in ~5,000 cases, and on /v1/embed/image once
    in ~6,600: a valid upload reported as "schema-violating request accepted"). The document
    cannot say "a part that spells null"; such cases test the encoder, not the server. String
    texts, undocumented parts that are sent, the `entries` part and the image parts are
    generated and checked as usual.
    """
    operation = context.operation
    if operation is None or not isinstance(case.body, dict):
        return True
    parts = FORM_PARTS.get(operation.path)
    if parts is None or case.media_type != "multipart/form-data":
        return True
    if any(vanishes(v) for k, v in case.body.items() if k not in parts):
        return False
    if operation.path != "/predict":
        return True
    return "text" not in case.body or isinstance(case.body["text"], str)
