#!/usr/bin/env bash
# Fetch, here, the wheels our package imports that the lent GPU image lacks (Python 3.12,
# x86-64, no network there): pydantic and its own needs. They land in .whl/ (git-ignored),
# which a device run carries; scripts/bench_gpu.sh installs them into a temp dir there.
# torch, transformers and the rest come from the image (never carried).
#   scripts/gpu_wheels.sh [PYTHON]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${1:-${PYTHON:-.venv/bin/python}}"
# The versions this venv resolved (tested together); the GPU image has typing-extensions.
pins=$("$PYTHON" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))
EOF
)
rm -rf .whl
# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
ls -1 .whl
