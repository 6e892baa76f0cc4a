#!/usr/bin/env bash
# Regenerate every committed ONNX test fixture in one go (offline, about a minute on 2 cores):
#   tests/fixtures/photos/             shared photos minus skimage_astronaut.png, manifest, LICENSES.md
#   tests/fixtures/models/tiny/        --tiny --random-init --seed 0 (dynamic N and S)
#   tests/fixtures/models/tiny-static/ the same weights, --static (immich shapes); tokenizer files are
#                                      relative symlinks into ../../tiny/textual/
#   tests/fixtures/reference/tiny/     PyTorch reference outputs over all photos and texts.json
# then checks them with onnxruntime (onnx/check_fixtures.py) and prints their size.
#
# Environment: PYTHON (default: .venv/bin/python in the repo if present, else python3),
#              SHARED_ASSETS (default: ../shared/assets next to the repo);
#              without shared assets the committed photos and tokenizer.json are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${SHARED_ASSETS:-}" && -d ../shared/assets ]]; then
  SHARED_ASSETS=../shared/assets
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

F=tests/fixtures
if [[ -n "${SHARED_ASSETS:-}" && -d "$SHARED_ASSETS/photos" ]]; then
  "$PYTHON" onnx/copy_photos.py --src "$SHARED_ASSETS/photos" --dst "$F/photos"
  TOKENIZER_ARGS=(--tokenizer-json "$SHARED_ASSETS/xlm-roberta-base/tokenizer.json")
  [[ -f "$SHARED_ASSETS/xlm-roberta-base/golden_ids.json" ]] &&
    TOKENIZER_ARGS+=(--golden-ids "$SHARED_ASSETS/xlm-roberta-base/golden_ids.json")
else
  echo "no shared assets: reusing the committed photos and tokenizer.json"
  TOKENIZER_ARGS=(--tokenizer-json "$F/models/tiny/textual/tokenizer.json")
fi

"$PYTHON" onnx/export.py --tiny --random-init --seed 0 "${TOKENIZER_ARGS[@]}" \
  --out "$F/models/tiny" --photos "$F/photos" \
  --texts "$F/reference/texts.json" --reference-out "$F/reference/tiny"

"$PYTHON" onnx/export.py --tiny --random-init --seed 0 --static "${TOKENIZER_ARGS[@]}" \
  --out "$F/models/tiny-static" --photos "$F/photos"

# don't commit the 9 MB tokenizer twice
for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
  cmp -s "$F/models/tiny/textual/$f" "$F/models/tiny-static/textual/$f" || {
    echo "tiny and tiny-static $f differ" >&2; exit 1; }
  ln -sfn "../../tiny/textual/$f" "$F/models/tiny-static/textual/$f"
done

"$PYTHON" onnx/check_fixtures.py "$F/models/tiny" "$F/models/tiny-static" --reference "$F/reference/tiny"

for d in "$F/photos" "$F/models/tiny" "$F/models/tiny-static" "$F/reference"; do du -sh "$d"; done
echo "total (symlinks not followed):"; du -sh "$F"
