"""Int8 probe: quantizes an exported image tower with ONNX Runtime's dynamic quantization
(int8 weights, activations quantized per run: DynamicQuantizeLinear + MatMulInteger) and
measures ONNX Runtime fp32 against int8 on the same pixels, with the cosine of each int8
embedding to its fp32 one.

    .venv/bin/python bench/int8_probe.py --model models/xlmr-b32-random --out models/xlmr-b32-int8

writes OUT/visual/model.onnx (the int8 tower; link OUT's config.json, textual/ and
visual/preprocess_cfg.json to MODEL's to make it a model folder tract can load, then
`CLIPSERVE_BENCH_MODEL=OUT cargo bench --bench compare -- --variants bucketed --only image_b1,image_b8`)
and prints one JSON object. Not part of the default harness: the figures are in
bench/RESULTS.md.
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def pixels(batch: int) -> np.ndarray:
    """Deterministic pixels in [-1, 1), as py_baselines.pixels and benches/compare.rs."""
    n = 3 * 224 * 224
    i = np.arange(batch * n, dtype=np.uint64)
    return (((i * 7919) % 1000).astype(np.float32) / 500.0 - 1.0).reshape(batch, 3, 224, 224)


def session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def rate(sess: ort.InferenceSession, x: np.ndarray, budget: float) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < budget:
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return x.shape[0] / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=6.0)
    args = ap.parse_args()
    fp32 = os.path.join(args.model, "visual", "model.onnx")
    int8 = os.path.join(args.out, "visual", "model.onnx")
    os.makedirs(os.path.dirname(int8), exist_ok=True)
    if not os.path.exists(int8):
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    a, b = session(fp32, args.threads), session(int8, args.threads)
    x = pixels(8)
    ea = a.run(None, {a.get_inputs()[0].name: x})[0]
    eb = b.run(None, {b.get_inputs()[0].name: x})[0]
    cos = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    out = {
        "file_mb": {"fp32": os.path.getsize(fp32) >> 20, "int8": os.path.getsize(int8) >> 20},
        "cosine_int8_to_fp32": {"min": float(cos.min()), "mean": float(cos.mean())},
        "ort_items_per_s": {},
    }
    for batch in (1, 8, 32):
        xb = pixels(batch)
        out["ort_items_per_s"][f"image_b{batch}"] = {
            "fp32": round(rate(a, xb, args.budget), 2),
            "int8": round(rate(b, xb, args.budget), 2),
        }
    np.save(os.path.join(args.out, "int8_b8_embeddings.npy"), eb)
    np.save(os.path.join(args.out, "fp32_b8_embeddings.npy"), ea)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
