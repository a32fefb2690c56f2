# Quickstart: `make demo` and `make test` do all set-up on a fresh machine.
# GPU users: `make install TORCH=torch` (or any pip spec) to get a CUDA build instead of
# the CPU wheel tried first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0+cpu
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: install demo test test-slow fuzz mutation soak bench bench-prepare lint format docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "$(TORCH)" || echo "note: $(TORCH) not available here; pip resolves torch from the index"
	$(VENV)/bin/pip install --quiet -e ".[dev,export,bench,tensorboard,mlflow,wandb,pretrained,explain,sweep,dedupe]"
	touch $@

demo: install
	$(VENV)/bin/ftc train demo --overwrite
	$(VENV)/bin/ftc eval runs/demo --split test
	$(VENV)/bin/ftc export runs/demo --format hf --overwrite

test: install
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow

# ~2,400 in-process CLI cases with fresh randomness (make test runs a fixed ~240)
fuzz: install
	FTC_FUZZ_SCALE=10 $(VENV)/bin/pytest -q tests/fuzz --hypothesis-show-statistics

# One plausible bug at a time (batching, parity gate, trainer, checkpoint, manifest) in a
# throwaway copy of HEAD; the guarding tests must fail for each. Not part of make test.
mutation: install
	$(PY) scripts/mutation.py

# Train / SIGKILL at random moments / --resume auto, checked bitwise against an
# uninterrupted run after every cycle (SOAK_MINUTES, default 30). Not part of make test.
SOAK_MINUTES ?= 30
soak: install
	PY=$(PY) scripts/soak.sh $(SOAK_MINUTES)

# ftc vs the stock and best-configured transformers Trainer and a bare loop, same
# model/data/steps, on the KJV headline workload (docs/benchmarks.md; run on an idle machine)
BENCH_REPEATS ?= 5
BENCH_STEPS ?= 300
bench: install
	$(PY) scripts/bench.py kjv --repeats $(BENCH_REPEATS) --steps $(BENCH_STEPS) \
		--md-out docs/benchmarks.md --json-out docs/benchmarks-kjv.json

# ftc prepare at scale: peak RSS and wall on generated ~100 MB and ~1 GB KJV corpora (gpt2-clm-kjv
# and a classifier with dedupe), and tokens/s next to datasets.map(batched=True), 1 vs 2 workers
PREPARE_SIZES_MB ?= 100 1000
bench-prepare: install
	$(PY) scripts/bench_prepare.py --sizes-mb $(PREPARE_SIZES_MB) --out docs/bench-prepare.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache

docs: install
	$(PY) -m fine_tune_cli.reference README.md
