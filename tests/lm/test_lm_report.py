"""The eval report of a language-model run: the header block, the perplexity curve
beside the loss (at most 4 series per plot), the generated samples, and no classifier
sections (no baseline, no calibration, no class counts)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.conftest import Result
from tests.unit.test_report_browser import ReportPage


def test_clm_report_shows_perplexity_curve_and_samples(
    clm_run: tuple[Result, Path], ftc, lm_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, run = clm_run
    monkeypatch.chdir(lm_base)
    result = ftc("eval", run, "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert not {"baseline_accuracy", "baseline_f1_macro"} & set(p["metrics"])
    out = Path(p["outputs"]["report_html"]).parent
    source = (out / "report.html").read_text(encoding="utf-8")
    page = ReportPage(source)

    header = dict(page.rows("Run"))
    assert header["recipe"] == "lm-clm" and header["model"] == "gpt2 tiny (clm)"
    assert "tokens/s" in header and "torch" in header["versions"]
    assert "Baseline" not in page.tables and "Calibration" not in page.tables
    assert "Data" not in page.tables  # no classes to count

    captions = [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", source)]
    curves = next(c for c in captions if c.startswith("Training curves"))
    assert curves.endswith("Series: train loss, validation loss, validation perplexity.")
    assert all(int(n) <= 4 for n in re.findall(r'data-series="(\d+)"', source))

    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in history if "eval_perplexity" in e]
    head, *rows = page.tables["Validation history"]
    column = head.index("perplexity")
    assert [float(r[column]) for r in rows] == pytest.approx(
        [e["eval_perplexity"] for e in evals], rel=1e-4
    )

    samples = page.tables["Generated samples"]
    assert samples[0][-1] == "continuation"
    assert len(samples) - 1 == 4  # generate.samples=2 prompts x (greedy, top-k)
