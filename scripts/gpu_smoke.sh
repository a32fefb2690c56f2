#!/usr/bin/env bash
# GPU smoke check: the tests marked `gpu` (fp16 + GradScaler, bf16, TF32, torch.compile,
# pinned-memory transfers), then one short `ftc train demo` on CUDA in bf16, end to end.
# Needs a CUDA device; finishes in under 5 minutes (each part has its own time limit).
#   scripts/gpu_smoke.sh                    # with the repo's .venv
#   PYTHON=python3 scripts/gpu_smoke.sh     # with another interpreter
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export FTC_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONUNBUFFERED=1

"$PYTHON" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_smoke: torch sees no CUDA device (the gpu tests would only skip)")
print(f"gpu_smoke: torch {torch.__version__} on {torch.cuda.get_device_name()}")
EOF

echo "== pytest -m gpu"
timeout 210 "$PYTHON" -m pytest -m gpu -o addopts="" -q -rs tests/

echo "== ftc train demo on cuda, bf16"
timeout 60 "$PYTHON" -m fine_tune_cli train demo \
    model.size=tiny data.tokenizer.vocab_size=600 data.source.limit=300 data.max_length=64 \
    train.max_steps=12 train.eval_every=6 train.batch_size=16 \
    train.device=cuda train.precision=bf16 "train.run_dir=$work/run" --json >"$work/train.json"
cat "$work/train.json"
"$PYTHON" - "$work/train.json" "$work/run/provenance.json" <<'EOF'
import json
import math
import sys
result = json.load(open(sys.argv[1]))
provenance = json.load(open(sys.argv[2]))
assert result["status"] == "ok" and result["steps"] == 12, result
assert math.isfinite(result["metrics"]["loss"]), result["metrics"]
assert provenance["device"].startswith("cuda"), provenance["device"]
assert provenance["precision"] == "bf16", provenance["precision"]
print("gpu_smoke: ok")
EOF
