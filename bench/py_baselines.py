#!/usr/bin/env python3
"""ONNX Runtime and PyTorch OpenCLIP on the same weights and inputs as clipserve's encoders.

One runtime per process (so peak RSS is that runtime's alone):

    .venv/bin/python bench/py_baselines.py --runtime ort   --threads 2
    .venv/bin/python bench/py_baselines.py --runtime torch --model models/xlmr-b32-random --threads 2

--model defaults to models/xlmr-b32-random in the repo (the full-size export of onnx/README.md).

The PyTorch model is rebuilt with onnx/export.py's random-init path and the seed named in the
folder's config.json; its weights_sha256 must equal the one recorded there, so both runtimes run
exactly the exported weights. Inputs are the deterministic tensors benches/compare.rs uses too
(see `pixels` and `token_ids`), so embeddings can be compared across runtimes.

Prints one JSON object: per workload the median seconds per run and items/s, plus load time,
RSS and the first embedding of each workload (for cross-runtime cosines).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# (name, tower, batch, tokens): the workloads every runtime runs (benches/compare.rs too).
WORKLOADS = [
    ("image_b1", "image", 1, 0),
    ("image_b32", "image", 32, 0),
    ("text_16tok_b32", "text", 32, 16),
    ("text_77tok_b1", "text", 1, 77),
]


def pixels(batch: int) -> np.ndarray:
    """Deterministic pixels in [-1, 1): value i of the batch is ((i * 7919) % 1000) / 500 - 1."""
    i = np.arange(batch * 3 * 224 * 224, dtype=np.int64)
    return (((i * 7919) % 1000) / 500.0 - 1.0).astype(np.float32).reshape(batch, 3, 224, 224)


def token_ids(batch: int, tokens: int) -> np.ndarray:
    """Deterministic ids: <s> (0), then 5 + (row * 104729 + j * 7919) % 250000, then </s> (2)."""
    out = np.zeros((batch, tokens), dtype=np.int64)
    for r in range(batch):
        for j in range(1, tokens - 1):
            out[r, j] = 5 + (r * 104729 + j * 7919) % 250000
        out[r, tokens - 1] = 2
    return out


def rss_mb() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                fields[k] = int(v.split()[0]) / 1024.0
    return {"rss_mb": round(fields.get("VmRSS", 0), 1), "peak_rss_mb": round(fields.get("VmHWM", 0), 1)}


def time_runs(fn, budget_s: float, min_runs: int) -> list:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return times


def ort_runner(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sessions = {
        tower: ort.InferenceSession(str(model / f"{dir_}/model.onnx"), opts, providers=["CPUExecutionProvider"])
        for tower, dir_ in (("image", "visual"), ("text", "textual"))
    }
    load_s = time.perf_counter() - t0

    def run(tower, x):
        s = sessions[tower]
        return s.run(None, {s.get_inputs()[0].name: x})[0]

    return run, load_s, f"onnxruntime {ort.__version__}"


def torch_runner(model: Path, threads: int):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO / "onnx"))
    import export  # onnx/export.py: the random-init model builder

    config = json.loads((model / "config.json").read_text())
    weights = config["export"]["weights"]
    if not weights.startswith("random-init seed "):
        raise SystemExit(f"{model}: weights are {weights!r}; only random-init exports can be rebuilt")
    seed = int(weights.split()[2])
    t0 = time.perf_counter()
    flags = ["--random-biases"] if weights.endswith(" with random biases") else []
    args = export.parse_args(["--out", "/nonexistent", "--random-init", "--seed", str(seed), *flags])
    clip, _, _, _, _ = export.build_model(args)
    load_s = time.perf_counter() - t0
    sha = export.weights_sha256(clip)
    if sha != config["export"]["weights_sha256"]:
        raise SystemExit(f"rebuilt weights sha256 {sha} != config.json's {config['export']['weights_sha256']}")
    text = export.TextualExport(clip.text, cast_to_int64=False).eval()

    @torch.inference_mode()
    def run(tower, x):
        t = torch.from_numpy(x)
        out = clip.encode_image(t) if tower == "image" else text(t)
        return out.numpy()

    return run, load_s, f"torch {torch.__version__} (weights sha256 checked)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=["ort", "torch"], required=True)
    ap.add_argument("--model", type=Path, default=REPO / "models/xlmr-b32-random")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timed runs per workload")
    ap.add_argument("--min-runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="workload names to run (default: all)")
    args = ap.parse_args()

    make = ort_runner if args.runtime == "ort" else torch_runner
    run, load_s, version = make(args.model, args.threads)
    after_load = rss_mb()
    result = {"runtime": args.runtime, "version": version, "threads": args.threads,
              "load_s": round(load_s, 2), "after_load": after_load, "workloads": {}}
    for name, tower, batch, tokens in WORKLOADS:
        if args.only and name not in args.only:
            continue
        x = pixels(batch) if tower == "image" else token_ids(batch, tokens)
        first = run(tower, x)
        times = time_runs(lambda: run(tower, x), args.budget, args.min_runs)
        med = statistics.median(times)
        result["workloads"][name] = {
            "batch": batch, "runs": len(times), "median_s": med,
            "items_per_s": batch / med, "embedding0": [round(float(v), 6) for v in first[0]],
        }
        print(f"{args.runtime} {name}: {batch / med:.2f} items/s ({len(times)} runs)", file=sys.stderr)
    result["end"] = rss_mb()
    result["peak_rss_mb"] = rss_mb()["peak_rss_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
