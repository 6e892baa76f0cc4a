#!/usr/bin/env python3
"""Export OpenCLIP `xlm-roberta-base-ViT-B-32` to ONNX in immich's model-folder layout.

Writes:
    <out>/config.json                 open_clip model config + "logit_scale" (+ "export" provenance)
    <out>/visual/model.onnx           "image" float32 [N,3,224,224] -> "embedding" float32 [N,512]
    <out>/visual/preprocess_cfg.json  open_clip preprocess cfg (size, mode, mean, std, ...)
    <out>/textual/model.onnx          "text" int64 [N,S] -> "embedding" float32 [N,512]
    <out>/textual/tokenizer.json, tokenizer_config.json, special_tokens_map.json

and, with --reference-out DIR, PyTorch reference outputs (DIR/reference.json + DIR/pixels/*.png)
for the Rust parity tests. See onnx/README.md for the commands and the traps this avoids.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Never try the Hugging Face hub for anything this script does not explicitly download
# (only --pretrained without --random-init needs the network, for the CLIP checkpoint).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "xlm-roberta-base-ViT-B-32"
PRETRAINED_TAG = "laion5b_s13b_b90k"
HF_TEXT_NAME = "xlm-roberta-base"
CONTEXT_LENGTH = 77
PAD_ID = 1
OPSET = 17
MIN_COSINE = 0.99999

# sha256 of FacebookAI/xlm-roberta-base tokenizer.json
TOKENIZER_SHA256 = "a898ea75433890f6610f4e470b8ebeb0c21dce5c8dd61f892eb09eb5919d2e2c"

TINY_VISION_CFG = dict(image_size=224, layers=2, width=32, head_width=16, patch_size=32)
TINY_TEXT_CFG = dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16)

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "mask_token": "<mask>",
    "pad_token": "<pad>",
    "sep_token": "</s>",
    "unk_token": "<unk>",
}


def log(*a):
    print(*a, flush=True)


def die(msg):
    print(f"FATAL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def first_existing(*paths):
    for p in paths:
        if p and Path(p).exists():
            return Path(p)
    return None


def shared_assets():
    """The shared assets folder: $SHARED_ASSETS, else ../shared/assets next to the repo."""
    return Path(os.environ.get("SHARED_ASSETS") or REPO.parent / "shared/assets")


def default_tokenizer_json():
    return first_existing(
        os.environ.get("XLMR_TOKENIZER_JSON"),
        shared_assets() / "xlm-roberta-base/tokenizer.json",
        REPO / "tests/fixtures/models/tiny/textual/tokenizer.json",
    )


def default_golden_ids():
    return first_existing(
        os.environ.get("XLMR_GOLDEN_IDS"),
        shared_assets() / "xlm-roberta-base/golden_ids.json",
    )


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------

def xlmr_config(tiny: bool):
    """The xlm-roberta-base config, built by hand (AutoConfig.from_pretrained needs the hub)."""
    from transformers import XLMRobertaConfig

    kw = dict(
        vocab_size=250002,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=514,
        type_vocab_size=1,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    if tiny:
        kw.update(TINY_TEXT_CFG)
    cfg = XLMRobertaConfig(**kw)
    cfg.architectures = ["XLMRobertaForMaskedLM"]
    return cfg


@contextlib.contextmanager
def local_xlmr_config(cfg):
    """Make open_clip's HFTextEncoder get `cfg` instead of AutoConfig.from_pretrained("xlm-roberta-base").

    HFTextEncoder then builds the transformer with AutoModel.from_config(cfg) (random init) and the
    text tower stays open_clip's own HFTextEncoder (mean pooler + MLP projection)."""
    import open_clip.hf_model as hf_model

    original = hf_model.AutoConfig

    class _LocalAutoConfig:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if name != HF_TEXT_NAME:
                raise ValueError(f"unexpected HF config request {name!r} (only {HF_TEXT_NAME!r} is built locally)")
            return copy.deepcopy(cfg)

    hf_model.AutoConfig = _LocalAutoConfig
    try:
        yield
    finally:
        hf_model.AutoConfig = original


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def build_model(args):
    """Returns (model, preprocess, model_cfg, weights_description)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import merge_preprocess_dict

    model_cfg = copy.deepcopy(open_clip.get_model_config(args.model))
    if model_cfg is None:
        die(f"unknown open_clip model {args.model}")
    if model_cfg.get("text_cfg", {}).get("hf_model_name") != HF_TEXT_NAME:
        die(f"this exporter only handles the {HF_TEXT_NAME} text tower")

    tag_cfg = get_pretrained_cfg(args.model, args.pretrained) or {}
    # mean/std/interpolation/resize_mode of the pretrained tag (the same values open_clip merges
    # when it loads the tag itself).
    force_pp = merge_preprocess_dict({}, tag_cfg) if tag_cfg else None

    kwargs = {}
    if args.tiny:
        model_cfg["vision_cfg"].update(TINY_VISION_CFG)
        kwargs["vision_cfg"] = model_cfg["vision_cfg"]

    hf_cfg = xlmr_config(args.tiny)
    with local_xlmr_config(hf_cfg):
        if args.random_init:
            torch.manual_seed(args.seed)
            np.random.seed(args.seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                args.model,
                pretrained=None,
                pretrained_text=False,
                pretrained_image=False,
                image_mean=force_pp and force_pp.get("mean"),
                image_std=force_pp and force_pp.get("std"),
                image_interpolation=force_pp and force_pp.get("interpolation"),
                image_resize_mode=force_pp and force_pp.get("resize_mode"),
                **kwargs,
            )
            weights = f"random-init seed {args.seed}" + (" (tiny)" if args.tiny else "")
            if args.random_biases:
                # open_clip's attention and the HF text tower start their biases at zero, and
                # an exporter or runtime may drop an add of zeros; a trained checkpoint has a
                # non-zero bias after nearly every product. Drawn after the weights, so the
                # weights stay those of --seed alone.
                generator = torch.Generator().manual_seed(args.seed + 1)
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if name.endswith("bias") and p.ndim == 1:
                            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
                weights += " with random biases"
        else:
            source = args.checkpoint or args.pretrained
            model, _, preprocess = open_clip.create_model_and_transforms(
                args.model,
                pretrained=source,
                require_pretrained=True,
                image_mean=force_pp and force_pp.get("mean"),
                image_std=force_pp and force_pp.get("std"),
                image_interpolation=force_pp and force_pp.get("interpolation"),
                image_resize_mode=force_pp and force_pp.get("resize_mode"),
                **kwargs,
            )
            weights = args.pretrained if not args.checkpoint else f"{args.pretrained} (from {Path(args.checkpoint).name})"
    model.eval()
    text = model.text
    if type(text).__name__ != "HFTextEncoder" or type(text.pooler).__name__ != "MeanPooler":
        die(f"unexpected text tower {type(text)} / {type(text.pooler)}")
    return model, preprocess, model_cfg, weights, hf_cfg


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

def write_tokenizer_files(tokenizer_json: Path, textual_dir: Path):
    data = Path(tokenizer_json).read_bytes()  # read first: the source may be the destination
    sha = hashlib.sha256(data).hexdigest()
    if sha != TOKENIZER_SHA256:
        die(f"{tokenizer_json} sha256 {sha} is not the xlm-roberta-base tokenizer.json ({TOKENIZER_SHA256})")
    tok = json.loads(data)
    textual_dir.mkdir(parents=True, exist_ok=True)
    dst = textual_dir / "tokenizer.json"
    if dst.is_symlink():
        dst.unlink()
    dst.write_bytes(data)

    added = {}
    for t in tok["added_tokens"]:
        added[str(t["id"])] = {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
    # Same fields as the tokenizer_config.json that transformers 4.x writes for xlm-roberta-base
    # (immich's folder); "pad_token" is what immich reads to pad.
    tokenizer_config = {
        "added_tokens_decoder": added,
        **{k: SPECIAL_TOKENS[k] for k in ("bos_token",)},
        "clean_up_tokenization_spaces": True,
        **{k: SPECIAL_TOKENS[k] for k in ("cls_token", "eos_token", "mask_token")},
        "model_max_length": 512,
        "pad_token": SPECIAL_TOKENS["pad_token"],
        "sep_token": SPECIAL_TOKENS["sep_token"],
        "tokenizer_class": "XLMRobertaTokenizer",
        "unk_token": SPECIAL_TOKENS["unk_token"],
    }
    for name, obj in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", SPECIAL_TOKENS)):
        p = textual_dir / name
        if p.is_symlink():
            p.unlink()
        p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def open_clip_tokenizer(textual_dir: Path):
    """open_clip's own HFTokenizer (clean="whitespace", context 77), loading the local folder."""
    from open_clip.tokenizer import HFTokenizer

    tok = HFTokenizer(str(textual_dir), context_length=CONTEXT_LENGTH, clean="whitespace")
    t = tok.tokenizer
    if t.pad_token_id != PAD_ID or t.bos_token_id != 0 or t.eos_token_id != 2 or len(t) != 250002:
        die(f"tokenizer special ids look wrong: pad {t.pad_token_id} bos {t.bos_token_id} eos {t.eos_token_id} n {len(t)}")
    return tok


def check_golden_ids(tokenizer, golden_path: Path | None):
    if golden_path is None:
        log("tokenizer: no golden_ids.json found, skipping the golden check")
        return
    cases = json.loads(Path(golden_path).read_text())["cases"]
    raw_ok = clean_ok = clean_n = 0
    for c in cases:
        raw = tokenizer.tokenizer(c["text"])["input_ids"]
        if raw != c["ids"]:
            die(f"raw tokenizer ids differ from golden for {c['text']!r}: {raw} vs {c['ids']}")
        raw_ok += 1
        if tokenizer.clean_fn(c["text"]) == c["text"] and len(c["ids"]) <= CONTEXT_LENGTH:
            ids = strip_pad(tokenizer([c["text"]])[0].tolist())
            if ids != c["ids"]:
                die(f"open_clip tokenizer ids differ from golden for {c['text']!r}: {ids} vs {c['ids']}")
            clean_ok += 1
        clean_n += 1
    log(f"tokenizer: {raw_ok}/{len(cases)} golden cases match the raw tokenizer; "
        f"{clean_ok} cases unchanged by open_clip cleaning match open_clip's tokenizer output")


def strip_pad(ids):
    ids = list(ids)
    while ids and ids[-1] == PAD_ID:
        ids.pop()
    return ids


# --------------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------------

class VisualExport(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, image):
        return self.clip.encode_image(image)  # normalize=False: raw embedding


class TextualExport(nn.Module):
    """open_clip HFTextEncoder.forward, with the attention mask built here as a 4-D additive mask.

    transformers 5.x would otherwise build it with a Flatten over two symbolic dims that tract 0.23
    cannot analyse. The 2-D mask comes from the ids (ids != pad), position ids are computed by
    XLMRobertaEmbeddings from the ids (padding_idx + 1 + cumsum), both inside the graph."""

    def __init__(self, text_tower, cast_to_int64: bool):
        super().__init__()
        self.text = text_tower
        self.cast_to_int64 = cast_to_int64

    def forward(self, text):
        ids = text.to(torch.int64) if self.cast_to_int64 else text
        enc = self.text
        mask = (ids != enc.config.pad_token_id).long()
        dtype = enc.transformer.embeddings.word_embeddings.weight.dtype
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        out = enc.transformer(input_ids=ids, attention_mask=additive, token_type_ids=torch.zeros_like(ids))
        pooled = enc.pooler(out, mask)
        return enc.proj(pooled)


def assert_eval(model, where):
    training = [n for n, m in model.named_modules() if m.training]
    if training:
        die(f"{where}: modules in train mode (dropout would be active): {training[:5]}")


def export_onnx(module, dummy, path: Path, input_name: str, dynamic_axes):
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[input_name],
            output_names=["embedding"],
            opset_version=OPSET,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            export_params=True,
            dynamo=False,
        )
    module.eval()  # torch.onnx.export may leave submodules in train mode
    import onnx

    onnx.checker.check_model(str(path))
    log(f"exported {path} in {time.time() - t0:.1f}s ({path.stat().st_size / 1e6:.1f} MB)")


def check_graph_io(path: Path, input_name, input_elem, input_shape):
    """input_shape entries: int for fixed dims, str for symbolic dims."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if [i.name for i in m.graph.input] != [input_name]:
        die(f"{path}: inputs are {[i.name for i in m.graph.input]}, want [{input_name!r}]")
    if [o.name for o in m.graph.output] != ["embedding"]:
        die(f"{path}: outputs are {[o.name for o in m.graph.output]}, want ['embedding']")

    def shape(vi):
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    i, o = m.graph.input[0], m.graph.output[0]
    if i.type.tensor_type.elem_type != input_elem or shape(i) != input_shape:
        die(f"{path}: input {shape(i)} elem {i.type.tensor_type.elem_type}, want {input_shape} elem {input_elem}")
    if o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        die(f"{path}: output elem type {o.type.tensor_type.elem_type}")
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    ops = sorted({n.op_type for n in m.graph.node})
    log(f"  {path.parent.name}/{path.name}: {input_name} {shape(i)} -> embedding {shape(o)}; opset {opsets}; ops {ops}")


# --------------------------------------------------------------------------------------------
# Verification (onnxruntime vs torch)
# --------------------------------------------------------------------------------------------

def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


class Checker:
    def __init__(self):
        self.worst = {}
        self.failed = []

    def compare(self, label, ort_out, torch_out):
        c = cosines(ort_out, torch_out)
        mad = float(np.abs(np.asarray(ort_out) - np.asarray(torch_out)).max())
        worst = float(c.min())
        log(f"  {label}: cosine min {worst:.9f} (n={len(c)}), max |diff| {mad:.3g}")
        key = label.split(":")[0]
        self.worst[key] = min(self.worst.get(key, 1.0), worst)
        if not worst >= MIN_COSINE:
            self.failed.append(f"{label}: cosine {worst}")


def verification_images(preprocess, photos, n=3):
    from PIL import Image

    out = []
    for p in photos:
        try:
            with Image.open(p) as im:
                out.append(preprocess(im.convert("RGB")))
        except Exception:
            continue
        if len(out) == n:
            break
    g = torch.Generator().manual_seed(1234)
    while len(out) < n:  # no photos given: synthetic images in the normalised range
        out.append(torch.randn(3, 224, 224, generator=g))
    return torch.stack(out)


VERIFY_TEXTS = [
    "a photo of a cat",
    "Ein Hund spielt im Schnee, während die Sonne untergeht.",
    "猫の写真",
    "",
    "صورة قطة على الأريكة الحمراء في غرفة المعيشة",
]


def verify(model, tokenizer, out: Path, static: bool, images: torch.Tensor):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    chk = Checker()
    log("onnxruntime vs torch:")
    with torch.no_grad():
        vis = ort.InferenceSession(str(out / "visual/model.onnx"), so, providers=["CPUExecutionProvider"])
        ref = model.encode_image(images).numpy()
        batches = [[0], [1], [2]] if static else [[0], [1], [0, 1, 2]]
        for idx in batches:
            got = vis.run(["embedding"], {"image": images[idx].numpy()})[0]
            chk.compare(f"visual: batch {len(idx)} images {idx}", got, ref[idx])
        del vis

        txt = ort.InferenceSession(str(out / "textual/model.onnx"), so, providers=["CPUExecutionProvider"])
        ids77 = tokenizer(VERIFY_TEXTS)  # [n, 77] int64, padded with 1
        ref77 = model.encode_text(ids77).numpy()
        lens = [len(strip_pad(r.tolist())) for r in ids77]
        if static:
            for i in range(len(VERIFY_TEXTS)):
                got = txt.run(["embedding"], {"text": ids77[i:i + 1].numpy().astype(np.int32)})[0]
                chk.compare(f"textual: batch 1 len {lens[i]} padded to 77 (int32)", got, ref77[i:i + 1])
        else:
            for i in range(len(VERIFY_TEXTS)):
                s = lens[i]
                got = txt.run(["embedding"], {"text": ids77[i:i + 1, :s].numpy()})[0]
                chk.compare(f"textual: batch 1 own length {s} (vs torch padded to 77)", got, ref77[i:i + 1])
                # torch itself: own length vs padded (position ids / mask depend on the ids)
                t_own = model.encode_text(ids77[i:i + 1, :s]).numpy()
                chk.compare(f"torch-pad-invariance: len {s} vs 77", t_own, ref77[i:i + 1])
            for sel in ([0, 1, 2], [2, 3, 4]):
                s = max(lens[j] for j in sel)
                for width in (s, CONTEXT_LENGTH):
                    got = txt.run(["embedding"], {"text": ids77[sel, :width].numpy()})[0]
                    chk.compare(f"textual: batch 3 texts {sel} seq {width}", got, ref77[sel])
            # beyond 77 (dynamic S): 100 tokens of padding still give the same embedding
            padded = torch.cat([ids77[:2], torch.full((2, 23), PAD_ID, dtype=torch.int64)], dim=1)
            got = txt.run(["embedding"], {"text": padded.numpy()})[0]
            chk.compare("textual: batch 2 seq 100 (extra padding)", got, ref77[:2])
        del txt
    if chk.failed:
        die("onnxruntime check FAILED:\n  " + "\n  ".join(chk.failed))
    log("onnxruntime check passed: worst cosines " + ", ".join(f"{k} {v:.9f}" for k, v in chk.worst.items()))
    return chk.worst


# --------------------------------------------------------------------------------------------
# Reference outputs
# --------------------------------------------------------------------------------------------

def f32_list(vec):
    # shortest repr that round-trips the float32 value
    return [float(str(np.float32(v))) for v in np.asarray(vec, dtype=np.float32).reshape(-1)]


def load_texts(path: Path):
    items = json.loads(Path(path).read_text())
    return [it if isinstance(it, str) else it["text"] for it in items]


NOT_PHOTOS = {".json", ".md", ".txt"}


def collect_photos(paths):
    files = []
    for p in paths or []:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if f.is_file() and f.suffix.lower() not in NOT_PHOTOS and not f.name.startswith("."))
        else:
            files.append(p)
    return files


def split_preprocess(preprocess):
    """open_clip's eval transform = [Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize]."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    ts = list(preprocess.transforms)
    if not (isinstance(ts[-1], Normalize) and isinstance(ts[-2], ToTensor)):
        die(f"unexpected open_clip transform {preprocess}")
    return Compose(ts[:-2]), Compose(ts[-2:])


def dump_reference(ref: dict) -> str:
    """JSON with one line per text / image / error entry (compact embeddings, readable diffs)."""
    lines = ["{"]
    keys = list(ref)
    for n, k in enumerate(keys):
        comma = "," if n + 1 < len(keys) else ""
        v = ref[k]
        if isinstance(v, list):
            lines.append(f" {json.dumps(k)}: [")
            for i, e in enumerate(v):
                lines.append("  " + json.dumps(e, ensure_ascii=False) + ("," if i + 1 < len(v) else ""))
            lines.append(f" ]{comma}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != ref:
        die("reference.json serialisation does not round-trip")
    return text


def write_reference(model, preprocess, tokenizer, texts, photos, ref_dir: Path, weights: str, wsha: str):
    from PIL import Image

    ref_dir.mkdir(parents=True, exist_ok=True)
    pixels_dir = ref_dir / "pixels"
    if pixels_dir.exists():
        shutil.rmtree(pixels_dir)
    pixels_dir.mkdir()
    to_pil, to_tensor = split_preprocess(preprocess)

    text_entries = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer([text])  # [1, 77]
            emb = model.encode_text(ids, normalize=True)[0].numpy()
            text_entries.append({
                "text": text,
                "cleaned": tokenizer.clean_fn(text),
                "ids": strip_pad(ids[0].tolist()),
                "embedding": f32_list(emb),
            })

        image_entries, errors = [], []
        for f in photos:
            try:
                with Image.open(f) as im:
                    img = im.convert("RGB")  # no EXIF transpose, like open_clip's reference usage
            except Exception as e:  # noqa: BLE001 - PIL raises OSError/SyntaxError/... for bad files
                errors.append({"file": f.name, "error": str(e)})
                continue
            full = preprocess(img)
            pil224 = to_pil(img)
            if pil224.mode != "RGB" or pil224.size != (224, 224):
                die(f"{f.name}: pre-tensor image is {pil224.mode} {pil224.size}")
            png = pixels_dir / f"{f.name}.png"
            # a fresh image: no ICC profile / EXIF / gamma chunks carried over from the source
            Image.fromarray(np.asarray(pil224, dtype=np.uint8)).save(png, format="PNG", optimize=True)
            with Image.open(png) as back:
                back.load()
                again = to_tensor(back.convert("RGB"))
            if not torch.equal(again, full):
                die(f"{f.name}: ToTensor+Normalize of the saved PNG differs from open_clip's transform output")
            emb = model.encode_image(full[None], normalize=True)[0].numpy()
            image_entries.append({
                "file": f.name,
                "pixels": f"pixels/{png.name}",
                "embedding": f32_list(emb),
            })

    ref = {
        "model": MODEL_NAME,
        "weights": weights,
        "weights_sha256": wsha,
        "logit_scale": float(model.logit_scale.exp().item()),
        "context_length": CONTEXT_LENGTH,
        "texts": text_entries,
        "images": image_entries,
        "errors": errors,
    }
    (ref_dir / "reference.json").write_text(dump_reference(ref))
    log(f"reference: {len(text_entries)} texts, {len(image_entries)} images, {len(errors)} errors -> {ref_dir}")
    for e in errors:
        log(f"  error: {e['file']}: {e['error']}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL_NAME, help=f"open_clip model name (only {MODEL_NAME} is supported)")
    ap.add_argument("--pretrained", default=PRETRAINED_TAG,
                    help="open_clip pretrained tag: real weights are downloaded by open_clip (needs the network) "
                         "unless --random-init; its preprocess cfg (mean/std/...) is used in every mode")
    ap.add_argument("--checkpoint", help="local open_clip checkpoint file (open_clip_pytorch_model.bin / "
                                         ".safetensors) to load instead of downloading the --pretrained tag")
    ap.add_argument("--out", required=True, type=Path, help="output model folder")
    ap.add_argument("--static", action="store_true",
                    help="immich's fixed shapes: text int32 [1,77], image [1,3,224,224]")
    ap.add_argument("--random-init", action="store_true", help="random weights (offline), deterministic given --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny widths for test fixtures (needs --random-init)")
    ap.add_argument("--random-biases", action="store_true",
                    help="with --random-init: every bias drawn from N(0, 0.02) instead of open_clip's zeros, as in a trained checkpoint")
    ap.add_argument("--tokenizer-json", type=Path, default=None,
                    help="xlm-roberta-base tokenizer.json (default: shared assets, or the committed fixture copy)")
    ap.add_argument("--golden-ids", type=Path, default=None, help="golden_ids.json to check the tokenizer against")
    ap.add_argument("--reference-out", type=Path, help="also write PyTorch reference outputs here")
    ap.add_argument("--texts", type=Path, default=REPO / "tests/fixtures/reference/texts.json",
                    help="JSON list of texts (strings or {\"text\": ...}) for the reference")
    ap.add_argument("--photos", nargs="*", default=[],
                    help="photo files or folders for the reference (and the first 3 for the ORT check)")
    ap.add_argument("--skip-verify", action="store_true", help="skip the onnxruntime check (not recommended)")
    args = ap.parse_args(argv)
    if args.random_biases and not args.random_init:
        die("--random-biases needs --random-init")
    if args.tiny and not args.random_init:
        ap.error("--tiny only makes sense with --random-init")
    if args.checkpoint and args.random_init:
        ap.error("--checkpoint and --random-init exclude each other")
    return args


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    import onnx
    import onnxruntime
    import open_clip
    import transformers

    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention fast path breaks the legacy exporter
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log(f"torch {torch.__version__}, open_clip {open_clip.__version__}, transformers {transformers.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}")

    out: Path = args.out
    (out / "visual").mkdir(parents=True, exist_ok=True)
    (out / "textual").mkdir(parents=True, exist_ok=True)

    tokenizer_json = args.tokenizer_json or default_tokenizer_json()
    if tokenizer_json is None:
        die("no tokenizer.json found: pass --tokenizer-json")
    write_tokenizer_files(tokenizer_json, out / "textual")
    tokenizer = open_clip_tokenizer(out / "textual")
    check_golden_ids(tokenizer, args.golden_ids or default_golden_ids())

    t0 = time.time()
    model, preprocess, model_cfg, weights, hf_cfg = build_model(args)
    wsha = weights_sha256(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {weights}, {n_params / 1e6:.2f} M params, weights sha256 {wsha[:16]}..., built in {time.time() - t0:.1f}s")
    assert_eval(model, "after build")
    logit_scale = float(model.logit_scale.exp().item())

    # config.json and preprocess_cfg.json
    config = copy.deepcopy(model_cfg)
    config["logit_scale"] = logit_scale
    config["export"] = {
        "weights": weights,
        "weights_sha256": wsha,
        "static": bool(args.static),
        "opset": OPSET,
        "text_tower": {k: getattr(hf_cfg, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id",
            "eos_token_id")},
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                     "transformers": transformers.__version__, "onnx": onnx.__version__},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pp_cfg = open_clip.get_model_preprocess_cfg(model)
    (out / "visual/preprocess_cfg.json").write_text(json.dumps(pp_cfg, indent=2) + "\n")

    # the export wrapper must give exactly open_clip's encode_text
    textual = TextualExport(model.text, cast_to_int64=args.static).eval()
    visual = VisualExport(model).eval()
    probe = tokenizer(VERIFY_TEXTS)
    with torch.no_grad():
        a = model.encode_text(probe)
        b = textual(probe.to(torch.int32) if args.static else probe)
        diff = float((a - b).abs().max())
    log(f"export wrapper vs open_clip encode_text: max |diff| {diff:.3g}")
    if not torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())):
        die("the textual export wrapper does not reproduce open_clip's encode_text")

    if args.static:
        dummy_img = torch.zeros(1, 3, 224, 224)
        dummy_txt = tokenizer(["a photo of a cat"]).to(torch.int32)
        img_axes = txt_axes = None
    else:
        dummy_img = torch.zeros(2, 3, 224, 224)
        dummy_txt = tokenizer(["a photo of a cat", "hi"])[:, :10]  # includes padding
        img_axes = {"image": {0: "batch_size"}, "embedding": {0: "batch_size"}}
        txt_axes = {"text": {0: "batch_size", 1: "sequence_length"}, "embedding": {0: "batch_size"}}

    export_onnx(visual, dummy_img, out / "visual/model.onnx", "image", img_axes)
    assert_eval(model, "after visual export")
    export_onnx(textual, dummy_txt, out / "textual/model.onnx", "text", txt_axes)
    assert_eval(model, "after textual export")
    with torch.no_grad():
        again = model.encode_text(probe)
    if not torch.equal(a, again):
        die("torch outputs changed after export (train mode / dropout?)")

    import onnx as _onnx
    check_graph_io(out / "visual/model.onnx", "image", _onnx.TensorProto.FLOAT,
                   [1, 3, 224, 224] if args.static else ["batch_size", 3, 224, 224])
    check_graph_io(out / "textual/model.onnx", "text",
                   _onnx.TensorProto.INT32 if args.static else _onnx.TensorProto.INT64,
                   [1, CONTEXT_LENGTH] if args.static else ["batch_size", "sequence_length"])

    photos = collect_photos(args.photos)
    worst = None
    if not args.skip_verify:
        worst = verify(model, tokenizer, out, args.static, verification_images(preprocess, photos))

    if args.reference_out:
        texts = load_texts(args.texts)
        write_reference(model, preprocess, tokenizer, texts, photos, args.reference_out, weights, wsha)

    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    log("files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    log(f"done in {time.time() - t_start:.1f}s, peak RSS {peak_rss_mb():.0f} MB"
        + (f", worst ORT-vs-torch cosines {worst}" if worst else ""))


if __name__ == "__main__":
    main()
