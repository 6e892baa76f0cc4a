#!/usr/bin/env python3
"""Check exported model folders against a reference.json with onnxruntime (no torch needed).

For each model folder: the folder contract (files, input/output names, dtypes, shapes), config.json's
logit_scale and weights fingerprint against the reference, then every reference image (from its
pixels PNG, normalised with visual/preprocess_cfg.json) and every reference text (from its ids,
padded with 1 to 77 for a static model) through onnxruntime; the L2-normalised outputs must have
cosine >= 0.99999 with the reference embeddings.

    python onnx/check_fixtures.py                                   # the committed tiny fixtures
    python onnx/check_fixtures.py --reference models/xlmr-b32-random/reference \
        models/xlmr-b32-random models/xlmr-b32-random-static      # the full-size exports
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.99999
PAD_ID = 1


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def io_spec(path):
    m = onnx.load(str(path), load_external_data=False)

    def shape(vi):
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    return ([(i.name, i.type.tensor_type.elem_type, shape(i)) for i in m.graph.input],
            [(o.name, o.type.tensor_type.elem_type, shape(o)) for o in m.graph.output])


def check_folder(folder: Path, ref: dict, ref_dir: Path, batch: int):
    for rel in ("config.json", "visual/model.onnx", "visual/preprocess_cfg.json", "textual/model.onnx",
                "textual/tokenizer.json", "textual/tokenizer_config.json", "textual/special_tokens_map.json"):
        if not (folder / rel).is_file():
            fail(f"{folder}: missing {rel}")
    config = json.loads((folder / "config.json").read_text())
    static = config["export"]["static"]
    if abs(config["logit_scale"] - ref["logit_scale"]) > 1e-6 * ref["logit_scale"]:
        fail(f"{folder}: logit_scale {config['logit_scale']} != reference {ref['logit_scale']}")
    if config["export"]["weights_sha256"] != ref["weights_sha256"]:
        fail(f"{folder}: weights differ from the reference's ({config['export']['weights_sha256'][:12]} vs "
             f"{ref['weights_sha256'][:12]})")
    tok_cfg = json.loads((folder / "textual/tokenizer_config.json").read_text())
    if tok_cfg["pad_token"] != "<pad>":
        fail(f"{folder}: pad_token {tok_cfg['pad_token']}")
    embed_dim = config["embed_dim"]

    vin, vout = io_spec(folder / "visual/model.onnx")
    tin, tout = io_spec(folder / "textual/model.onnx")
    F, I32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT64
    want_v = ([("image", F, [1, 3, 224, 224])], [("embedding", F, [1, embed_dim])]) if static else \
        ([("image", F, ["batch_size", 3, 224, 224])], [("embedding", F, ["batch_size", embed_dim])])
    want_t = ([("text", I32, [1, 77])], [("embedding", F, [1, embed_dim])]) if static else \
        ([("text", I64, ["batch_size", "sequence_length"])], [("embedding", F, ["batch_size", embed_dim])])
    if (vin, vout) != want_v:
        fail(f"{folder}: visual io {vin} {vout}, want {want_v}")
    if (tin, tout) != want_t:
        fail(f"{folder}: textual io {tin} {tout}, want {want_t}")

    pp = json.loads((folder / "visual/preprocess_cfg.json").read_text())
    mean = np.array(pp["mean"], dtype=np.float32)[:, None, None]
    std = np.array(pp["std"], dtype=np.float32)[:, None, None]

    so = ort.SessionOptions()
    so.log_severity_level = 3
    worst = {}

    def record(kind, got, want, label):
        got = np.asarray(got, dtype=np.float64)
        got = got / np.linalg.norm(got, axis=-1, keepdims=True)
        want = np.asarray(want, dtype=np.float64)
        c = (got * want).sum(-1) / np.linalg.norm(want, axis=-1)
        for ci, li in zip(c, label):
            if not ci >= MIN_COSINE:
                fail(f"{folder}: {kind} {li!r}: cosine {ci:.9f} < {MIN_COSINE}")
        worst[kind] = min(worst.get(kind, 1.0), float(c.min()))

    vis = ort.InferenceSession(str(folder / "visual/model.onnx"), so, providers=["CPUExecutionProvider"])
    imgs = ref["images"]
    step = 1 if static else batch
    for i in range(0, len(imgs), step):
        chunk = imgs[i:i + step]
        arrs = []
        for e in chunk:
            with Image.open(ref_dir / e["pixels"]) as im:
                px = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            arrs.append((px.transpose(2, 0, 1) - mean) / std)
        out = vis.run(["embedding"], {"image": np.stack(arrs).astype(np.float32)})[0]
        record("images", out, [e["embedding"] for e in chunk], [e["file"] for e in chunk])

    txt = ort.InferenceSession(str(folder / "textual/model.onnx"), so, providers=["CPUExecutionProvider"])
    texts = ref["texts"]
    for i in range(0, len(texts), step):
        chunk = texts[i:i + step]
        width = 77 if static else max(len(e["ids"]) for e in chunk)
        ids = np.full((len(chunk), width), PAD_ID, dtype=np.int32 if static else np.int64)
        for j, e in enumerate(chunk):
            ids[j, :len(e["ids"])] = e["ids"]
        out = txt.run(["embedding"], {"text": ids})[0]
        record("texts", out, [e["embedding"] for e in chunk], [e["text"] for e in chunk])
    print(f"ok {folder}: {'static' if static else 'dynamic'}, {len(imgs)} images, {len(texts)} texts; "
          f"worst cosine images {worst.get('images', 1):.9f}, texts {worst.get('texts', 1):.9f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path,
                    default=[REPO / "tests/fixtures/models/tiny", REPO / "tests/fixtures/models/tiny-static"])
    ap.add_argument("--reference", type=Path, default=REPO / "tests/fixtures/reference/tiny")
    ap.add_argument("--batch", type=int, default=4, help="batch size for dynamic models")
    args = ap.parse_args()
    ref = json.loads((args.reference / "reference.json").read_text())
    for key in ("model", "weights", "weights_sha256", "logit_scale", "context_length", "texts", "images", "errors"):
        if key not in ref:
            fail(f"reference.json lacks {key}")
    for e in ref["texts"]:
        if not (e["ids"] and e["ids"][0] == 0 and e["ids"][-1] == 2 and len(e["ids"]) <= ref["context_length"]):
            fail(f"bad ids for {e['text']!r}: {e['ids']}")
    for folder in args.folders:
        check_folder(folder, ref, args.reference, args.batch)
    print(f"{len(args.folders)} passed, 0 failed")


if __name__ == "__main__":
    main()
