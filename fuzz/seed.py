#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets: fuzz/corpus/<target>/.

Deterministic (run it again and `git diff` shows nothing) and small (about 150 KB in all).
Images are the test photos downscaled, written in every format the server decodes; the other
seeds are written here byte by byte. Needs Pillow:

    python3 -m venv /tmp/fuzz-venv && /tmp/fuzz-venv/bin/pip install pillow
    /tmp/fuzz-venv/bin/python fuzz/seed.py

Seeds only: fuzzing writes the inputs it finds into another directory (see
docs/reliability.md), so what is committed stays these files.

corpus/image_decode/   tiny images: JPEG (baseline, progressive, grey, CMYK, EXIF orientation
                       6), PNG (RGB, RGBA, palette, grey, 16-bit), GIF (one and three frames),
                       WebP (lossy, lossless), BMP, TIFF (raw, LZW, deflate); plus
                       the small files of tests/fixtures/bad (bombs, truncated, 1 pixel)
corpus/request_json/   valid and invalid bodies of every JSON route
corpus/text_tokenize/  the texts of tests/fixtures/reference/texts.json (many scripts) and
                       hand-made ones: HTML entities, mojibake, control characters, emoji,
                       combining marks, right-to-left, a text far past 77 tokens, bad UTF-8
corpus/multipart/      first line = the boundary (or a whole `multipart/...` content type),
                       the rest = the body: valid uploads of one to five parts, files under
                       other names, a text part, and broken framing
"""

import base64
import io
import json
import re
import shutil
from pathlib import Path

from PIL import Image

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
BAD = ROOT / "tests" / "fixtures" / "bad"
OUT = FUZZ / "corpus"


def photo(name: str, size=(32, 24)) -> Image.Image:
    img = Image.open(PHOTOS / name)
    img.load()
    return img.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def encode(img: Image.Image, fmt: str, **opts) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def images() -> dict[str, bytes]:
    hopper = photo("pillow_hopper.jpg")
    coffee = photo("skimage_coffee.png", (24, 16))
    out = {
        "hopper.jpg": encode(hopper, "JPEG", quality=80),
        "hopper_progressive.jpg": encode(hopper, "JPEG", quality=70, progressive=True),
        "hopper_grey.jpg": encode(hopper.convert("L"), "JPEG", quality=80),
        "hopper_cmyk.jpg": encode(hopper.convert("CMYK"), "JPEG", quality=80),
        "hopper.png": encode(hopper, "PNG", optimize=True),
        "coffee_rgba.png": encode(coffee.convert("RGBA"), "PNG"),
        "coffee_palette.png": encode(coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "coffee_grey.png": encode(coffee.convert("L"), "PNG"),
        "coffee_grey16.png": encode(coffee.convert("L").convert("I;16"), "PNG"),
        "hopper.gif": encode(hopper.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "GIF"),
        "hopper_lossy.webp": encode(hopper, "WEBP", quality=60),
        "hopper_lossless.webp": encode(coffee, "WEBP", lossless=True),
        "hopper.bmp": encode(coffee, "BMP"),
        "hopper.tif": encode(coffee, "TIFF"),
        "hopper_lzw.tif": encode(coffee, "TIFF", compression="tiff_lzw"),
        "hopper_deflate.tif": encode(coffee.convert("L"), "TIFF", compression="tiff_adobe_deflate"),
    }
    # EXIF orientation 6 (rotate 90): the decoder applies it under ExifPolicy::Apply.
    exif = Image.Exif()
    exif[0x0112] = 6
    out["hopper_orientation_6.jpg"] = encode(hopper, "JPEG", quality=70, exif=exif.tobytes())
    # Three frames: only the first is decoded.
    frames = [hopper.rotate(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=8) for a in (0, 90, 180)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["hopper_3_frames.gif"] = buf.getvalue()
    for name in [
        "bomb.bmp", "bomb.gif", "bomb.jpg", "bomb.png", "bomb.tiff", "bomb.webp",
        "empty.bin", "one_pixel.png", "truncated.gif", "truncated.png",
    ]:
        out[name] = (BAD / name).read_bytes()
    return out


def request_bodies(png: bytes) -> dict[str, bytes]:
    b64 = base64.b64encode(png).decode()
    uri = "data:image/png;base64," + b64
    bodies = {
        "texts.json": {"texts": ["a photo of a cat", "una foto de un gato"]},
        "texts_empty.json": {"texts": []},
        "texts_unknown_field.json": {"texts": ["x"], "truncate": True},
        "texts_wrong_type.json": {"texts": "a photo of a cat"},
        "images_base64.json": {"images": [b64]},
        "images_data_uri.json": {"images": [uri, b64[:40] + "\n" + b64[40:]]},
        "images_bad_base64.json": {"images": [b64, "@@@@", "data:image/png,raw"]},
        "images_url.json": {"images": ["https://example.com/cat.jpg"]},
        "similarity.json": {"texts": ["a cat"], "images": [uri]},
        "similarity_texts_b.json": {"texts": ["a cat"], "texts_b": ["un chat", "ein Hund"]},
        "classify.json": {"images": [b64], "labels": ["cat", "dog"], "template": "a photo of a {}"},
        "classify_no_labels.json": {"images": [b64]},
        "openai_text.json": {"input": "a photo of a cat", "model": "clip", "encoding_format": "base64"},
        "openai_image.json": {"input": [uri], "modality": "image", "dimensions": 256},
        "openai_token_ids.json": {"input": [[0, 10, 2]], "user": "u"},
    }
    out = {name: json.dumps(body, ensure_ascii=False).encode() for name, body in bodies.items()}
    out["nested.json"] = b'{"texts":' + b"[" * 200 + b"]" * 200 + b"}"
    out["invalid_utf8.json"] = b'{"texts":["caf\xc3"]}'
    out["escapes.json"] = b'{"texts":["\\ud800","\\u00e9\\n\\t\\u0000"]}'
    out["truncated.json"] = b'{"images":["iVBORw0KGgo'
    out["numbers.json"] = b'{"images":[1e999,-0,true,null]}'
    return out


def texts() -> dict[str, bytes]:
    out = {}
    reference = json.loads((ROOT / "tests" / "fixtures" / "reference" / "texts.json").read_text())
    for i, case in enumerate(reference):
        note = re.sub(r"[^A-Za-z0-9]+", "_", case["note"]).strip("_")
        out[f"reference_{i:02}_{note}.txt"] = case["text"].encode()
    made = {
        "html_entities.txt": "Fish &amp; Chips &lt;3 &eacute;t&eacute; &hellip; &#x1F431; &#128054;",
        "mojibake.txt": "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows. cafÃ©",
        "controls.txt": "a\x00b\x07c\x1bd\x7fe\u200bf\u202eg\ttab\r\nline\ufffd",
        "emoji.txt": "🐱🐶 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 1️⃣",
        "combining.txt": "e\u0301 a\u0308\u0323 Z\u0351\u0352\u0353\u0354 ﬁ ｆｕｌｌｗｉｄｔｈ",
        "rtl.txt": "مرحبا بالعالم שלום עולם \u200f123\u200e",
        "long.txt": " ".join(f"word{i}" for i in range(400)),
        "whitespace.txt": " \t\n\u3000\u00a0 ",
        "empty.txt": "",
    }
    out.update({name: text.encode() for name, text in made.items()})
    out["invalid_utf8.txt"] = b"caf\xc3 \xff\xfe na\xcc\xefve \xed\xa0\x80"
    return out


def part(name: str | None, content: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = "form-data"
    if name is not None:
        disposition += f'; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode() + b"\r\n" + content


def multipart_seeds(png: bytes, gif: bytes) -> dict[str, bytes]:
    def seed(first_line: str, body: bytes) -> bytes:
        return first_line.encode() + b"\n" + body

    def body(boundary: str, parts: list[bytes], close=True, newline=b"\r\n") -> bytes:
        b = boundary.encode()
        out = b"".join(b"--" + b + newline + p + newline for p in parts)
        if close:
            out += b"--" + b + b"--" + newline
        return out

    bd = "X-CLIPSERVE-BOUNDARY"
    one = part("image", png, "a.png", "image/png")
    out = {
        "one_image.txt": seed(bd, body(bd, [one])),
        "two_images.txt": seed(bd, body(bd, [one, part("image", gif, "b.gif", "image/gif")])),
        "file_names.txt": seed(bd, body(bd, [part("file", png), part("upload", gif, "c.gif"), part("image_2", png)])),
        "five_images.txt": seed(bd, body(bd, [part("image", b"x" * i) for i in range(5)])),
        "text_part.txt": seed(bd, body(bd, [one, part("caption", b"a cat")])),
        "no_name.txt": seed(bd, body(bd, [part(None, png)])),
        "empty_part.txt": seed(bd, body(bd, [part("image", b"")])),
        "no_parts.txt": seed(bd, b"--" + bd.encode() + b"--\r\n"),
        "unclosed.txt": seed(bd, body(bd, [one], close=False)),
        "lf_only.txt": seed(bd, body(bd, [part("image", b"GIF89a")], newline=b"\n")),
        "preamble_epilogue.txt": seed(bd, b"preamble\r\n" + body(bd, [part("image", b"abc")]) + b"epilogue"),
        "quoted_boundary.txt": seed('multipart/form-data; boundary="a b:c"', body("a b:c", [part("image", b"abc")])),
        "charset_param.txt": seed("multipart/form-data; charset=utf-8; boundary=zz", body("zz", [part("file", b"abc", "\u732b.png")])),
        "wrong_boundary.txt": seed("other", body(bd, [one])),
        "filename_star.txt": seed(bd, body(bd, [b"Content-Disposition: form-data; name=image; filename*=UTF-8''%E7%8C%AB.png\r\n\r\nabc"])),
        "bad_headers.txt": seed(bd, body(bd, [b"Content-Disposition form-data\r\nX: \xff\r\n\r\nabc"])),
        "mixed.txt": seed("multipart/mixed; boundary=" + bd, body(bd, [one])),
        "empty.txt": seed(bd, b""),
    }
    return out


def predict_seeds(png: bytes) -> dict[str, bytes]:
    """immich's /predict forms: `entries` JSON with an `image` file part or a `text` part."""
    bd = "X-CLIPSERVE-BOUNDARY"

    def form(parts: list[bytes]) -> bytes:
        b = bd.encode()
        return bd.encode() + b"\n" + b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"

    visual = b'{"clip": {"visual": {"modelName": "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k"}}}'
    textual = b'{"clip": {"textual": {"modelName": "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k", "options": {"language": "de"}}}}'
    faces = b'{"facial-recognition": {"detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}}, "recognition": {"modelName": "buffalo_l"}}}'
    return {
        "visual.txt": form([part("entries", visual), part("image", png, "blob", "application/octet-stream")]),
        "textual.txt": form([part("entries", textual), part("text", "eine Katze".encode())]),
        "faces.txt": form([part("entries", faces), part("image", png, "blob")]),
        "mixed.txt": form([part("entries", visual[:-1] + b", " + faces[1:]), part("image", png, "blob")]),
        "twice.txt": form([part("entries", visual), part("entries", visual), part("text", b"x")]),
        "options_array.txt": form([part("entries", b'{"clip": {"textual": {"modelName": "tiny", "options": []}}}'), part("text", b"x")]),
        "unknown_part.txt": form([part("entries", visual), part("assetId", b"123")]),
        "no_entries.txt": form([part("text", b"a cat")]),
    }


def main() -> None:
    imgs = images()
    corpora = {
        "image_decode": imgs,
        "request_json": request_bodies(imgs["coffee_palette.png"]),
        "text_tokenize": texts(),
        "multipart": multipart_seeds(imgs["coffee_palette.png"], imgs["hopper.gif"]),
        "predict_form": predict_seeds(imgs["coffee_palette.png"]),
    }
    for target, files in corpora.items():
        d = OUT / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in sorted(files.items()):
            (d / name).write_bytes(data)
        print(f"{target}: {len(files)} files, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
