#!/usr/bin/env python3
"""Copy the shared test photos into tests/fixtures/photos (all but the excluded ones),
with a trimmed manifest.json and a LICENSES.md generated from the manifest's licence fields."""

import argparse
import hashlib
import json
import shutil
from pathlib import Path

EXCLUDE = {"skimage_astronaut.png"}  # 790 KB: too big for the committed fixtures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", type=Path, required=True, help="shared photos folder (with manifest.json)")
    ap.add_argument("--dst", type=Path, required=True)
    args = ap.parse_args()

    manifest = json.loads((args.src / "manifest.json").read_text())
    keep = [e for e in manifest if e["file"] not in EXCLUDE]
    args.dst.mkdir(parents=True, exist_ok=True)
    for old in args.dst.iterdir():
        if old.is_file() and old.name not in {e["file"] for e in keep} | {"manifest.json", "LICENSES.md"}:
            old.unlink()
    for e in keep:
        src = args.src / e["file"]
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise SystemExit(f"{src}: sha256 differs from the manifest")
        shutil.copyfile(src, args.dst / e["file"])
    (args.dst / "manifest.json").write_text(json.dumps(keep, indent=1, ensure_ascii=False) + "\n")

    lines = [
        "# Test photos: licences",
        "",
        "Copied from the project's shared assets by `onnx/copy_photos.py` (run by `onnx/make_fixtures.sh`);",
        "`manifest.json` has the full record of each file (source, licence, size, mode, EXIF orientation,",
        "ICC, sha256). Sources: scikit-image 0.26 data files and Pillow 13.0 test images (Pillow is under",
        "the MIT-CMU licence). The licence of each file is the one the manifest records, as listed below",
        "(for skimage_moon.png scikit-image states none). `skimage_astronaut.png` from the shared set is",
        "left out (size).",
        "",
        "| file | subject | source | licence |",
        "| --- | --- | --- | --- |",
    ]
    for e in sorted(keep, key=lambda e: e["file"]):
        lines.append(f"| {e['file']} | {e.get('label', '')} | {e.get('source', '')} | {e.get('license', '')} |")
    (args.dst / "LICENSES.md").write_text("\n".join(lines) + "\n")
    print(f"photos: {len(keep)} files -> {args.dst}")


if __name__ == "__main__":
    main()
