"""bf16 probe: how far the image tower's embeddings move when its products run in bf16, on the
random-weight export's own weights (rebuilt from its seed, as bench/py_baselines.py does).

    .venv/bin/python bench/bf16_probe.py --model models/xlmr-b32-random

Prints the lowest cosine, over the 8 deterministic images of the harness, between the fp32
embedding and (a) the whole tower in bf16, (b) PyTorch's CPU autocast to bf16 (products in bf16
with f32 accumulation, the rest in f32), which is what an AVX512-BF16 matrix kernel would do.
Random weights say little about real ones, whose outliers round worse. Not part of the
default harness: the figures are in bench/RESULTS.md (optimisation log: "bf16 products, the one
lever left for the image tower").
"""

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "onnx"))
sys.path.insert(0, str(REPO / "bench"))

import export  # noqa: E402  onnx/export.py: the random-init model builder
import py_baselines  # noqa: E402  the harness's deterministic pixels


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    model = ap.parse_args().model
    config = json.loads((model / "config.json").read_text())
    weights = config["export"]["weights"]
    if not weights.startswith("random-init seed "):
        raise SystemExit(f"{model}: weights are {weights!r}; only random-init exports can be rebuilt")
    args = export.parse_args(["--out", "/nonexistent", "--random-init", "--seed", weights.split()[2]])
    clip, *_ = export.build_model(args)
    if export.weights_sha256(clip) != config["export"]["weights_sha256"]:
        raise SystemExit("rebuilt weights differ from the export's")
    clip.eval()
    x = torch.from_numpy(py_baselines.pixels(8))
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()  # noqa: E731
    with torch.inference_mode():
        ref = clip.encode_image(x).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = clip.encode_image(x).double()
        whole = clip.visual.to(torch.bfloat16)(x.to(torch.bfloat16)).double()
    print(json.dumps({"images": 8, "min_cosine_autocast_bf16": cos(ref, autocast), "min_cosine_all_bf16": cos(ref, whole)}))


if __name__ == "__main__":
    main()
