#!/usr/bin/env bash
# Soak test of exact resume (issue 15; not part of `make test`):
#   scripts/soak.sh [MINUTES]        (default 30)
# Trains the demo recipe on tiny settings once uninterrupted (the reference), then loops
# until MINUTES have passed: a fresh run is SIGKILLed at 1-3 random moments (each kill
# lands anywhere from interpreter start-up to the last step; the later lives resume with
# `--resume auto`), then `--resume auto` runs it to the end, and the final checkpoint, best/
# and every logged loss must equal the reference bitwise (CPU, OMP_NUM_THREADS=1), and
# `ftc verify` must pass. Prints one line per cycle and a summary; exit 1 on any mismatch.
# Environment: PY (python, default .venv/bin/python), SOAK_SEED (kill moments), SOAK_DIR
# (work dir, default a new temp dir, removed at the end unless a cycle failed); PYTHONPATH
# may point at another checkout (e.g. `git archive HEAD` unpacked) to soak that code.
set -euo pipefail
MINUTES=${1:-30}
PY=$(realpath -s "${PY:-.venv/bin/python}")
SEED=${SOAK_SEED:-$RANDOM}
RANDOM=$SEED
WORK=$(realpath "${SOAK_DIR:-$(mktemp -d -t ftc-soak-XXXXXX)}")
mkdir -p "$WORK"
cd "$WORK" # python -m puts the cwd first on sys.path: a PYTHONPATH checkout must win
export OMP_NUM_THREADS=1 FTC_CACHE_DIR=$WORK/cache HF_HUB_OFFLINE=1
ARGS=(demo model.size=tiny data.tokenizer.vocab_size=600 data.source.limit=300
      data.max_length=64 train.batch_size=8 train.max_steps=40 train.eval_every=10
      train.save_every=2 train.keep_last=3 train.device=cpu log.every=1 log.progress_every=0)

train() { # train RUN_DIR [extra args...]: ftc train in the background, its pid in $PID
    local run=$1
    shift
    "$PY" -m fine_tune_cli train "${ARGS[@]}" "train.run_dir=$run" "$@" \
        >>"$run.out" 2>&1 &
    PID=$!
}

same() { # same RUN_DIR: final weights, best/ and per-step losses equal the reference's
    "$PY" - "$WORK/ref" "$1" <<'PY'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file

ref, run = map(Path, sys.argv[1:])
final = sorted(p.parent.name for p in ref.glob("checkpoints/step-*/COMPLETE"))[-1]
for sub in (f"checkpoints/{final}", "best"):
    a, b = load_file(ref / sub / "model.safetensors"), load_file(run / sub / "model.safetensors")
    bad = [k for k in a if a.keys() != b.keys() or not torch.equal(a[k], b[k])]
    if a.keys() != b.keys() or bad:
        sys.exit(f"{run / sub}: weights differ from the reference ({bad[:3]})")
def losses(d):
    rows = map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]
if losses(ref) != losses(run):
    sys.exit(f"{run}: metrics.jsonl losses differ from the reference")
PY
}

src=$("$PY" -c "import fine_tune_cli, os; print(os.path.dirname(fine_tune_cli.__file__))") || { echo "soak: cannot import fine_tune_cli with $PY" >&2; exit 2; }
echo "soak: $MINUTES min, seed $SEED, ftc from $src, work dir $WORK," \
    "$(getconf _NPROCESSORS_ONLN) cores (shared with whatever else runs)"
t0=$(date +%s.%N)
train "$WORK/ref"
wait "$PID" || { echo "soak: reference run failed:"; tail -20 "$WORK/ref.out"; exit 2; }
ref_ms=$("$PY" -c "import time; print(int((time.time() - $t0) * 1000))")
echo "soak: reference run $((ref_ms / 1000)) s (kills land in 0..$((ref_ms / 1000)) s of each life)"

deadline=$(($(date +%s) + MINUTES * 60))
cycles=0 kills=0 missed=0 failed=0
while (($(date +%s) < deadline)); do
    cycles=$((cycles + 1))
    run=$WORK/run-$cycles
    lives=$((1 + RANDOM % 3))
    extra=()
    for ((life = 1; life <= lives; life++)); do
        train "$run" "${extra[@]}"
        delay_ms=$(((RANDOM * 32768 + RANDOM) % ref_ms))
        sleep "$((delay_ms / 1000)).$(printf %03d $((delay_ms % 1000)))"
        if kill -9 "$PID" 2>/dev/null; then
            kills=$((kills + 1))
        else
            missed=$((missed + 1)) # it had already finished
        fi
        wait "$PID" 2>/dev/null || true
        extra=(--resume auto)
    done
    train "$run" --resume auto
    status=ok
    if ! wait "$PID"; then
        status="resume failed (see $run.out)"
    elif ! out=$(same "$run" 2>&1); then
        status="MISMATCH: $out"
    elif ! "$PY" -m fine_tune_cli verify "$run" >/dev/null 2>&1; then
        status="ftc verify failed on $run"
    fi
    ckpts=$(find "$run/checkpoints" -maxdepth 1 -name 'step-*' 2>/dev/null | wc -l)
    echo "cycle $cycles: $lives kill(s) tried, $ckpts checkpoint(s) kept, $status"
    if [[ $status == ok ]]; then
        rm -rf "$run" "$run.out"
    else
        failed=$((failed + 1))
    fi
done
echo "soak: $cycles cycles, $kills SIGKILLs delivered (and $missed more sent after the run" \
    "had finished), $((cycles - failed)) of $cycles equal to the reference bitwise"
if ((failed)); then
    echo "soak: FAILED; runs kept in $WORK"
    exit 1
fi
[[ -n ${SOAK_DIR:-} ]] || rm -rf "$WORK"
