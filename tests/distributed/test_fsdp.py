"""FSDP2 on CPU (gloo): `ftc train --nproc 2` with train.distributed.strategy=fsdp through
the real CLI, in subprocesses with OMP_NUM_THREADS=1, against one process with the same
global batch.

Tolerance: 1e-5 absolute on losses and weights, as for DDP. The runs differ only in
float32 summation order (two half-batch gradients reduce-scattered vs one batch of 16),
which moves weights by ~1e-7 over these 6 steps; a different global batch moves them by
far more than 1e-5 (test_ddp.py shows it), so the bound still catches a wrong batch,
a missed gradient sync or a mis-scaled loss.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.conftest import DIST_BASE, run_ftc
from tests.lm.conftest import write_paragraph_corpus, write_recipe

pytestmark = pytest.mark.distributed

ATOL = 1e-5
BASE = [
    *DIST_BASE,
    "train.save_every=2",
    "train.keep_last=3",
    "log.every=1",
    "train.clip_grad_norm=0.5",  # active at some steps: the norm spans both ranks' shards
]
FSDP = ["train.distributed.strategy=fsdp", "--nproc", "2"]


def train_rows(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "split" not in r}


def assert_same_weights(a_file: Path, b_file: Path) -> None:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=ATOL), key


def assert_same_run(run: Path, ref: Path, steps: range = range(1, 7)) -> None:
    got, want = train_rows(run), train_rows(ref)
    for step in steps:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], abs=ATOL), step
        # A plain float, the norm of the whole gradient (before clipping).
        assert got[step]["grad_norm"] == pytest.approx(want[step]["grad_norm"], rel=1e-4), step
    assert any(want[step]["grad_norm"] > 0.5 for step in steps)  # clipping did happen
    last = Path("checkpoints") / "step-000006" / "model.safetensors"
    assert_same_weights(run / last, ref / last)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One process, batch 16: the run every 2-process FSDP run must reproduce."""
    run = tmp_path_factory.mktemp("fsdp-ref") / "single"
    result = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=16",
        f"train.run_dir={run}",
        env={"FTC_CACHE_DIR": str(cache_dir)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_two_sharded_processes_equal_one_with_the_same_global_batch(
    tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "fsdp"
    result = run_ftc(
        "train", "demo", *BASE, "train.batch_size=8", f"train.run_dir={run}", *FSDP, "--json"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok" and payload["processes"] == 2
    assert "accuracy" in payload["metrics"]  # eval ran under FSDP (every rank forwards)
    assert "fsdp: 2 blocks + root sharded over 2 processes" in (run / "train.log").read_text()
    assert_same_run(run, reference)
    # best/ is a plain HF dir (gathered full weights), equal to the single-process one.
    best = json.loads((run / "best" / "manifest.json").read_text())
    assert best["step"] == json.loads((reference / "best" / "manifest.json").read_text())["step"]
    assert_same_weights(
        run / "best" / "model.safetensors", reference / "best" / "model.safetensors"
    )


def test_gradient_accumulation_under_fsdp(tmp_path: Path, reference: Path) -> None:
    """2 processes x batch 4 x 2 micro-batches: the reduce-scatter runs once per step."""
    run = tmp_path / "accum"
    result = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=4",
        "train.grad_accum=2",
        f"train.run_dir={run}",
        *FSDP,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_run(run, reference)


def test_checkpoints_resume_across_strategies(tmp_path: Path, reference: Path) -> None:
    """Checkpoints hold full (gathered) state: an FSDP checkpoint resumes in one process
    and a single-process one under FSDP, each ending equal to the uninterrupted run."""
    killed = tmp_path / "killed"
    result = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=8",
        f"train.run_dir={killed}",
        "train.distributed.timeout_s=60",
        *FSDP,
        env={"FTC_FAULT_EXIT_RANK": "1:5"},  # rank 1 dies in step 5, after step-000004
    )
    assert result.returncode == 9, (result.returncode, result.stderr[-2000:])
    assert (killed / "checkpoints" / "step-000004" / "COMPLETE").is_file()
    assert not (killed / "checkpoints" / "step-000006").exists()
    # One process (fsdp there trains unsharded), batch 16: the same global batch.
    resumed = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=16",
        f"train.run_dir={killed}",
        "train.distributed.strategy=fsdp",
        "--resume",
        "auto",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (killed / "train.log").read_text()
    assert "resumed from" in log and "fsdp: one process, training unsharded" in log
    assert_same_run(killed, reference)

    # The other way: the single-process run's step-2 checkpoint, continued under FSDP.
    sharded = tmp_path / "from-single"
    sharded.mkdir()
    shutil.copytree(reference / "checkpoints" / "step-000002", sharded / "step-000002")
    result = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=8",
        f"train.run_dir={sharded}",
        *FSDP,
        "--resume",
        str(sharded / "step-000002"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_run(sharded, reference, steps=range(3, 7))


@pytest.mark.parametrize(
    ("family", "task", "tokenizer", "tied"),
    [
        ("gpt2", "clm", "bpe", ("lm_head.weight", "transformer.wte.weight")),
        (
            "bert",
            "mlm",
            "wordpiece",
            ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ),
    ],
)
def test_tied_weights_stay_tied_in_best(
    tmp_path: Path, family: str, task: str, tokenizer: str, tied: tuple[str, str]
) -> None:
    """Output layer and input embeddings are one tensor; sharding keeps them in the root
    group, and the saved best/ stores them once, as a plain save_pretrained does."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    write_paragraph_corpus(tmp_path / "corpus.txt", 40, clip=300)
    recipe = write_recipe(
        tmp_path / "lm.yaml",
        {
            "name": f"fsdp-{task}",
            "model": {"family": family, "task": task, "size": "tiny", "dropout": 0},
            "data": {
                "source": {"path": "corpus.txt", "format": "txt", "txt_unit": "paragraph"},
                "tokenizer": {"kind": tokenizer, "vocab_size": 400},
                "max_length": 32,
            },
            "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2},
        },
    )
    run = tmp_path / "run"
    result = run_ftc("train", str(recipe), f"train.run_dir={run}", *FSDP)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = load_file(str(run / "best" / "model.safetensors"))
    head, embeddings = tied
    assert embeddings in saved
    assert head not in saved or torch.equal(saved[head], saved[embeddings])
    loader = AutoModelForCausalLM if task == "clm" else AutoModelForMaskedLM
    model = loader.from_pretrained(str(run / "best"), local_files_only=True)
    weights = dict(model.named_parameters(remove_duplicate=False))
    assert weights[head] is weights[embeddings]
    assert torch.equal(model.state_dict()[embeddings], saved[embeddings])


def test_blocks_are_shard_units_unless_they_share_a_weight_outside() -> None:
    """Members of ModuleLists are sharded one by one (not the lists inside a chosen
    block); a block holding a weight tied to another module stays in the root group."""
    from torch import nn

    from fine_tune_cli.engine.distributed import shard_units

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.experts = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.blocks = nn.ModuleList([Block() for _ in range(3)])
            self.head = nn.Linear(4, 10, bias=False)
            self.blocks[2].proj.weight = self.head.weight = nn.Parameter(torch.zeros(4, 4))

    net = Net()
    # Block 2 stays in the root group; its own list's members may still be units.
    assert shard_units(net) == [net.blocks[0], net.blocks[1], *net.blocks[2].experts]
