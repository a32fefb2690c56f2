#!/usr/bin/env bash
# GPU throughput check: scripts/gpu_smoke.sh, then two short `ftc train` runs on CUDA that
# print tokens/s and MFU (median over the logged steps after the warm-up, so compilation
# is excluded):
#   1. GPT-2 base shape (12 x 768) causal LM, bf16 + torch.compile, 1024-token packed
#      blocks of the bundled demo emails (own 8k BPE, so ~92M weights, not 124M).
#   2. BERT base shape (12 x 768) classification of the demo emails, bf16, max_length 128,
#      length-grouped batches.
# Only the repo is needed: the data is bundled, and where pydantic is missing (the lent
# GPU image), wheels fetched beforehand by scripts/gpu_wheels.sh into .whl/ are installed
# into a temp dir. Without a CUDA device it says so and exits 0.
#   scripts/bench_gpu.sh                          # smoke + both benchmarks
#   scripts/bench_gpu.sh --steps 40 --no-smoke    # shorter, benchmarks only
#   scripts/bench_gpu.sh --dry-run                # print the plan, run nothing
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    cat <<'EOF'
usage: scripts/bench_gpu.sh [--steps N] [--bert-steps N] [--warmup N] [--no-smoke]
                            [--python PY] [--dry-run] [--help]
  --steps N       GPT-2 optimizer steps (default 60)
  --bert-steps N  BERT optimizer steps (default 100)
  --warmup N      steps left out of the medians (compilation, first batches; default 10)
  --no-smoke      skip scripts/gpu_smoke.sh
  --python PY     interpreter (default: .venv/bin/python if present, else python3)
  --dry-run       print what would run and exit 0
EOF
}

steps=60
bert_steps=100
warmup=10
smoke=1
dry=0
PYTHON="${PYTHON:-}"

need_int() {  # need_int FLAG VALUE
    if ! [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then
        echo "bench_gpu: $1 needs a positive integer (got '${2:-}')" >&2
        usage >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) need_int "$1" "${2:-}"; steps="$2"; shift 2 ;;
        --bert-steps) need_int "$1" "${2:-}"; bert_steps="$2"; shift 2 ;;
        --warmup) need_int "$1" "${2:-}"; warmup="$2"; shift 2 ;;
        --no-smoke) smoke=0; shift ;;
        --python)
            [[ -n "${2:-}" ]] || { echo "bench_gpu: --python needs a value" >&2; exit 2; }
            PYTHON="$2"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench_gpu: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if (( warmup >= steps || warmup >= bert_steps )); then
    echo "bench_gpu: --warmup ($warmup) must be below --steps ($steps) and --bert-steps ($bert_steps)" >&2
    exit 2
fi
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

GPT2=(train gpt2-clm-kjv
    data.source.path=data/demo/spam_demo.jsonl.gz data.source.format=jsonl data.steps=[]
    data.tokenizer.vocab_size=8000 data.max_length=1024 model.size=base
    train.batch_size=16 "train.max_steps=$steps" "train.eval_every=$steps"
    train.device=cuda train.precision=bf16 train.compile=true
    generate.samples=0 log.every=5)
BERT=(train demo model.size=base data.max_length=128
    train.batch_size=32 "train.max_steps=$bert_steps" "train.eval_every=$bert_steps"
    train.device=cuda train.precision=bf16 train.batching=length_grouped log.every=5)

if (( dry )); then
    echo "bench_gpu: dry run (python: $PYTHON; warm-up: $warmup steps)"
    (( smoke )) && echo "would run: PYTHON=$PYTHON scripts/gpu_smoke.sh"
    echo "would run: $PYTHON -m fine_tune_cli ${GPT2[*]}"
    echo "would run: $PYTHON -m fine_tune_cli ${BERT[*]}"
    exit 0
fi

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench_gpu: no CUDA device (torch sees none): nothing to measure, exiting 0"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export FTC_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONUNBUFFERED=1 PYTHON

# The lent GPU image lacks pydantic: install the carried wheels (never torch) for this run.
if ! "$PYTHON" -c 'import pydantic' 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "bench_gpu: pydantic is missing and .whl/ holds no wheels (run scripts/gpu_wheels.sh here, carry .whl)" >&2
        exit 3
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$work/site" .whl/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package itself, uninstalled

if (( smoke )); then
    echo "== scripts/gpu_smoke.sh"
    scripts/gpu_smoke.sh
fi

summary() {  # summary NAME RUN_DIR
    "$PYTHON" - "$1" "$2" "$warmup" <<'EOF'
import json, statistics, sys
from pathlib import Path
name, run, warmup = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in lines if "loss" in r and "split" not in r and r["step"] > warmup]
if not steps:
    sys.exit(f"bench_gpu: {name}: no logged step after the {warmup}-step warm-up")
tok = statistics.median(r["tokens_per_s"] for r in steps)
mfu = [r["mfu"] for r in steps if "mfu" in r]
shown = f"{100 * statistics.median(mfu):.1f}%" if mfu else "n/a (GPU not in the peak table)"
step_ms = 1000 * statistics.median(r["step_time"] for r in steps)
wait_ms = 1000 * statistics.median(r["data_wait"] for r in steps)
print(f"bench_gpu: {name}: {tok:,.0f} tokens/s, MFU {shown}, step {step_ms:.1f} ms"
      f" (data_wait {wait_ms:.1f} ms), median of {len(steps)} logged steps after step {warmup}")
EOF
}

"$PYTHON" -c 'import torch; print(f"bench_gpu: torch {torch.__version__} on {torch.cuda.get_device_name()}")'
echo "== GPT-2 base CLM, bf16 + compile, $steps steps"
timeout 170 "$PYTHON" -m fine_tune_cli "${GPT2[@]}" "train.run_dir=$work/gpt2" --json >"$work/gpt2.json"
summary "gpt2-base clm bf16 compile" "$work/gpt2"
echo "== BERT base classification, bf16, length-grouped, $bert_steps steps"
timeout 110 "$PYTHON" -m fine_tune_cli "${BERT[@]}" "train.run_dir=$work/bert" --json >"$work/bert.json"
summary "bert-base classification bf16" "$work/bert"
echo "bench_gpu: ok"
