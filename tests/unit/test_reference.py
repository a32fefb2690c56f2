"""The README's recipe reference must match the schema (regenerate with `make docs`)."""

from pathlib import Path

from fine_tune_cli.reference import END, START, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_matches_schema() -> None:
    text = README.read_text()
    section = text[text.index(START) : text.index(END) + len(END)]
    assert section == render(), "README recipe reference is stale: run `make docs`"


def test_reference_lists_every_contract_key() -> None:
    rendered = render()
    for key in (
        "model.family",
        "model.task",
        "model.size",
        "model.init_from",
        "data.source.path",
        "data.source.format",
        "data.source.text",
        "data.source.label",
        "data.cache_dir",
        "data.balance",
        "optim.name",
        "optim.lr",
        "train.epochs",
        "train.max_steps",
        "train.batch_size",
        "train.seed",
        "train.eval_every",
        "train.save_every",
        "train.keep_last",
        "train.best_metric",
        "train.precision",
        "train.device",
        "train.run_dir",
        "train.distributed.strategy",
    ):
        assert f"`{key}`" in rendered, key
