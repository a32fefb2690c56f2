"""Pretraining and chaining end to end through the real CLI: tiny BERT MLM, MLM+NSP and
GPT-2 CLM runs (with generated samples in the eval report), classifiers fine-tuned from
them (`model.init_from`), and the weights those classifiers actually start from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import Result
from tests.lm.conftest import classification_recipe


def _finite(metrics: dict, *names: str) -> None:
    for name in names:
        assert isinstance(metrics.get(name), float) and math.isfinite(metrics[name]), name


# --------------------------------------------------------------------------- pretraining
def test_bert_mlm_trains_and_reports_mlm_metrics(mlm_run: tuple[Result, Path]) -> None:
    result, run = mlm_run
    p = result.json()
    assert p["status"] == "ok" and p["exit_code"] == 0 and p["steps"] == 2
    _finite(p["metrics"], "mlm_accuracy", "perplexity", "loss")
    assert 0.0 <= p["metrics"]["mlm_accuracy"] <= 1.0
    assert p["metrics"]["perplexity"] == pytest.approx(math.exp(p["metrics"]["loss"]), rel=1e-6)
    assert (run / "best" / "model.safetensors").is_file()
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]


def test_bert_mlm_nsp_trains_and_reports_nsp_accuracy(nsp_run: tuple[Result, Path]) -> None:
    result, run = nsp_run
    p = result.json()
    assert p["status"] == "ok" and p["exit_code"] == 0
    _finite(p["metrics"], "nsp_accuracy", "mlm_accuracy", "perplexity", "loss")
    assert 0.0 <= p["metrics"]["nsp_accuracy"] <= 1.0
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]


def test_gpt2_clm_trains_then_eval_writes_continuations(
    clm_run: tuple[Result, Path], ftc, lm_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, run = clm_run
    p = result.json()
    assert p["status"] == "ok" and p["exit_code"] == 0
    _finite(p["metrics"], "perplexity", "loss")
    assert "mlm_accuracy" not in p["metrics"]

    monkeypatch.chdir(lm_base)
    evaluated = ftc("eval", run, "--json")
    assert evaluated.code == 0, evaluated.err
    e = evaluated.json()
    assert e["split"] == "test"
    _finite(e["metrics"], "perplexity", "loss")
    report = (run / "eval" / "test" / "report.md").read_text()
    header = next(line for line in report.splitlines() if "continuation" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "decoding" in columns and columns[-1] == "continuation", columns
    # generate.samples=2 prompts, each continued greedily and with top-k sampling.
    table = report.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    assert len(table) == 4, table
    assert sum("| greedy |" in row for row in table) == 2
    assert sum("| top-40 |" in row for row in table) == 2
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())


# --------------------------------------------------------------------------- chaining
def _train_classifier(ftc, tmp_path: Path, family: str, init_from: Path | None) -> Result:
    recipe = classification_recipe(
        tmp_path / "cls.yaml", family, f"{family}-cls", str(init_from) if init_from else None
    )
    return ftc("train", recipe, "--json")


def test_gpt2_classification_from_a_size_preset(ftc, tmp_path: Path) -> None:
    result = _train_classifier(ftc, tmp_path, "gpt2", None)
    assert result.code == 0, result.err
    p = result.json()
    _finite(p["metrics"], "accuracy", "f1_macro", "loss")
    log = (tmp_path / "runs" / "gpt2-cls" / "train.log").read_text()
    assert "initialised from" not in log


def test_gpt2_classification_from_the_clm_run(
    ftc, tmp_path: Path, clm_run: tuple[Result, Path]
) -> None:
    run = clm_run[1]
    result = _train_classifier(ftc, tmp_path, "gpt2", run)
    assert result.code == 0, result.err
    _finite(result.json()["metrics"], "accuracy", "f1_macro")
    log = (tmp_path / "runs" / "gpt2-cls" / "train.log").read_text()
    assert f"initialised from {run / 'best'}" in log
    assert "loaded from the checkpoint" in log
    assert "newly initialised" in log and "score.weight" in log
    # The classifier reuses the CLM run's tokenizer instead of training a new one.
    assert "initialised from" in result.err and "training a bpe tokenizer" not in result.err
    prov = json.loads((tmp_path / "runs" / "gpt2-cls" / "provenance.json").read_text())
    manifest = json.loads((Path(prov["data"]["path"]) / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "pretrained"
    assert manifest["tokenizer"]["from"] == str(run / "best")


def test_bert_classification_from_the_mlm_run_logs_what_was_loaded(
    ftc, tmp_path: Path, mlm_run: tuple[Result, Path]
) -> None:
    run = mlm_run[1]
    result = _train_classifier(ftc, tmp_path, "bert", run)
    assert result.code == 0, result.err
    _finite(result.json()["metrics"], "accuracy", "f1_macro")
    log = (tmp_path / "runs" / "bert-cls" / "train.log").read_text()
    assert f"initialised from {run / 'best'}" in log
    lines = {
        key: next((line for line in log.splitlines() if key in line), "")
        for key in ("loaded from the checkpoint", "newly initialised", "dropped")
    }
    assert "bert.embeddings" in lines["loaded from the checkpoint"], log
    assert "classifier.weight" in lines["newly initialised"], log
    assert "cls.predictions" in lines["dropped"], log


def test_chained_classifier_starts_from_the_mlm_weights(
    mlm_run: tuple[Result, Path], tmp_path: Path
) -> None:
    """Every encoder tensor of the classifier equals the MLM run's best/ tensor exactly;
    only the pooler and the classifier head are new."""
    import torch
    from safetensors.torch import load_file

    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.models.registry import build_model
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import task_for

    run = mlm_run[1]
    recipe = load_recipe(
        classification_recipe(tmp_path / "cls.yaml", "bert", "bert-cls", str(run))
    ).recipe
    prepared, _ = prepare_dataset(recipe)
    ctx = task_for(recipe.model).build_context(recipe, prepared)
    assert ctx.init_dir == run / "best"
    assert ctx.label_names == ("ham", "spam")
    model = build_model(recipe.model, ctx)
    source = load_file(str(run / "best" / "model.safetensors"))
    target = model.state_dict()

    encoder = sorted(k for k in source if k.startswith("bert."))
    assert any(k.startswith("bert.encoder.layer.1.") for k in encoder)
    for key in encoder:
        assert key in target, key
        assert torch.equal(target[key], source[key]), key
    new = sorted(k for k in target if k not in source)
    assert new and all(k.startswith(("bert.pooler.", "classifier.")) for k in new), new
    assert model.config.num_labels == 2
    info = model.ftc_loading_info
    assert sorted(info["missing_keys"]) == new
    assert info["unexpected_keys"] and all(k.startswith("cls.") for k in info["unexpected_keys"])


def test_training_a_new_tokenizer_for_an_init_from_model_exits_2(
    ftc, tmp_path: Path, mlm_run: tuple[Result, Path]
) -> None:
    recipe = classification_recipe(tmp_path / "cls.yaml", "bert", "bert-cls", str(mlm_run[1]))
    result = ftc("train", recipe, "data.tokenizer.kind=wordpiece", "--json")
    assert result.code == 2, result.err
    p = result.json()
    assert p["status"] == "error" and p["exit_code"] == 2
    message = p["message"]
    assert message.startswith("data.tokenizer") and "init_from" in message, message
    assert "tokenizer" in message.split(":", 1)[1], message
    assert not (tmp_path / "runs" / "bert-cls" / "best").exists()
