"""report.html from a real `ftc eval`, read the way a user reads it.

One tiny run is trained per module on synthetic data whose label names and texts carry
HTML and mathtext (`<script>`, `&`, `$\\x$`), then evaluated. The page is checked twice:
with Python's html.parser (runs everywhere) and in headless Chromium from Debian's
`chromium` package (skipped when no browser is on PATH): it renders, its title names the
recipe and split, its tables equal metrics.json, every image decodes and is one of the
PNGs beside it, nothing is fetched from the network and no user text became markup.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fine_tune_cli.evaluation.metrics import flat_metrics
from tests.conftest import REPO, TINY, cli_env, run_cli

NAME = "report-check"
# Label names a user could have in their data: markup, entities and matplotlib mathtext.
LABELS = ['<b>ham</b> & "eggs"', "spam<script>alert('label')</script>", r"save $\x$ now"]
HOSTILE_TEXT = "<script>alert('text')</script> <img src=x onerror=alert(1)> a & b"
WORDS = ["meeting", "cash", "prize", "offer", "agenda", "invoice", "lunch", "winner"]
# Tags a self-contained, script-free report never needs.
FORBIDDEN_TAGS = {"script", "iframe", "frame", "object", "embed", "link", "base", "form"}
URL_ATTRS = {"src", "href", "srcset", "action", "data", "poster", "background", "formaction"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    """Train the tiny run, `ftc eval` it; the eval dir, its metrics.json and the title."""
    base = tmp_path_factory.mktemp("report-run")
    rng = random.Random(0)
    rows = [
        {  # random labels: the tiny model misclassifies, so the examples table is filled
            "text": " ".join(rng.choices(WORDS, k=8)) + " " + HOSTILE_TEXT,
            "label": rng.choice(LABELS),
        }
        for _ in range(180)
    ]
    (base / "hostile.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (base / "recipe.yaml").write_text(
        f"extends: {REPO / 'recipes' / '_base' / 'bert-text-classification.yaml'}\n"
        f"name: {NAME}\n"
        "data:\n  source:\n    path: hostile.jsonl\n"
    )
    with cli_env(cache_dir, base):
        train = run_cli("train", "recipe.yaml", *TINY, "train.max_steps=8", "train.eval_every=4")
        assert train.code == 0, train.err
        result = run_cli("eval", base / "runs" / NAME, "--json")
    assert result.code == 0, result.err
    payload = result.json()
    out = Path(payload["outputs"]["report_html"]).parent
    return {
        "out": out,
        "html": out / "report.html",
        "metrics": json.loads((out / "metrics.json").read_text()),
        "title": f"{NAME}: {payload['split']}",
    }


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's `chromium` (the contract's checker); downloaded browsers are not used."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")


# --------------------------------------------------------------------------- the page


class ReportPage(HTMLParser):
    """What a reader sees: title, headings, tables by section, images, and every
    attribute or stylesheet that could reach outside the file."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.charset: str | None = None
        self.csp: str | None = None
        self.texts: dict[str, str] = {"title": "", "h1": "", "style": ""}
        self.headings: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}  # h2 -> rows (header first)
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._open: str | None = None  # element whose text is being collected
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.urls += [v for k, v in attr.items() if k in URL_ATTRS]
        if tag == "meta" and "charset" in attr:
            self.charset = attr["charset"]
        if tag == "meta" and attr.get("http-equiv", "").lower() == "content-security-policy":
            self.csp = attr.get("content")
        if tag in ("title", "h1", "style"):
            self._open = tag
        elif tag == "h2":
            self._open = "h2"
            self.headings.append("")
        elif tag == "table":
            self.tables[self.headings[-1]] = []
        elif tag == "tr":
            self.tables[self.headings[-1]].append([])
        elif tag in ("th", "td"):
            self._cell = []
        elif tag == "img":
            self.images.append(attr)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.tables[self.headings[-1]][-1].append("".join(self._cell))
            self._cell = None
        elif tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._open == "h2":
            self.headings[-1] += data
        elif self._open:
            self.texts[self._open] += data

    def rows(self, heading: str) -> list[list[str]]:
        return self.tables[heading][1:]


def check_page(page: ReportPage, evaluated: dict[str, Any]) -> None:
    """The structural facts a reader relies on, for the source or the browser's DOM."""
    metrics, out = evaluated["metrics"], evaluated["out"]
    assert page.charset is not None and page.charset.lower() == "utf-8"
    assert page.texts["title"] == page.texts["h1"] == evaluated["title"]

    # offline and inert: nothing to fetch, nothing to run
    assert not set(page.tags) & FORBIDDEN_TAGS, set(page.tags) & FORBIDDEN_TAGS
    assert page.csp and "default-src 'none'" in page.csp
    assert all(u.startswith("data:") or not re.match(r"[a-z]+:|//", u) for u in page.urls)
    assert not re.search(r"url\(|@import|https?:", page.texts["style"])

    # the metrics table is metrics.json, to the 4 decimals shown
    flat = flat_metrics(metrics)
    shown = {name: value for name, value in page.rows("Metrics")}
    assert set(shown) == set(flat)
    for name, value in flat.items():
        assert float(shown[name]) == pytest.approx(value, abs=5e-5), name

    # per-class figures and the confusion matrix, with the label names as written
    per_class = metrics["per_class"]
    assert sorted(per_class) == sorted(LABELS)
    header, *rows = page.tables["Per class"]
    assert header == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in rows] == list(per_class)
    for label, *values in rows:
        expected = [per_class[label][c] for c in header[1:]]
        assert [float(v) for v in values] == pytest.approx(expected, abs=5e-5), label
    matrix = page.tables["Confusion matrix"]
    assert matrix[0][1:] == list(per_class)
    assert [[int(c) for c in row[1:]] for row in matrix[1:]] == metrics["confusion_matrix"]

    # user text stays text: the examples show it verbatim
    examples = page.tables["Examples"]
    text_col = examples[0].index("text")
    assert all("<script>alert('text')</script>" in row[text_col] for row in examples[1:])
    assert {row[examples[0].index("true")] for row in examples[1:]} <= set(LABELS)

    # every image is an inline PNG, one of those written beside the report, and all are
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert {"confusion_matrix.png", "training_curves.png"} <= set(pngs)
    embedded = []
    for image in page.images:
        assert image.get("alt"), image.keys()
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix), image["src"][:40]
        data = base64.b64decode(image["src"][len(prefix) :], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        embedded.append(data)
    assert sorted(embedded) == sorted(pngs.values())


# --------------------------------------------------------------------------- html.parser


def test_report_html_structure(evaluated: dict[str, Any]) -> None:
    source = evaluated["html"].read_bytes()
    check_page(ReportPage(source.decode("utf-8")), evaluated)
    assert b"<script" not in source  # escaped, not merely ignored by our parser


def test_report_md_links_resolve(evaluated: dict[str, Any]) -> None:
    md = (evaluated["out"] / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((evaluated["out"] / link).is_file() for link in links)


# --------------------------------------------------------------------------- chromium


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [
            binary,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


def test_report_renders_in_chromium(
    evaluated: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    """The DOM Chromium builds from the file passes the same checks: the escaping holds
    in a real HTML parser and no script element came out of user text."""
    result = run_chromium(chromium, tmp_path / "profile", "--dump-dom", evaluated["html"].as_uri())
    dom = result.stdout.decode("utf-8")
    check_page(ReportPage(dom), evaluated)


def test_report_images_decode_in_chromium(
    evaluated: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    """Chromium decodes every plot at the PNG's own size. The report runs no script (its
    CSP forbids it), so a copy without the CSP gets a probe that records what loaded."""
    from PIL import Image

    page = evaluated["html"].read_text(encoding="utf-8")
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = probe.replace(
        "</body>",
        "<script>addEventListener('load', () => { document.body.dataset.images ="
        " JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth,"
        " i.naturalHeight])); });</script></body>",
    )
    copy = tmp_path / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    result = run_chromium(chromium, tmp_path / "profile", "--dump-dom", copy.as_uri())
    match = re.search(r'data-images="([^"]*)"', result.stdout.decode("utf-8"))
    assert match, "probe did not run"
    loaded = json.loads(match.group(1).replace("&quot;", '"'))
    expected = []
    for image in ReportPage(page).images:
        data = base64.b64decode(image["src"].split(",", 1)[1])
        expected.append([True, *Image.open(io.BytesIO(data)).size])
    assert loaded == expected


def test_report_screenshot_is_not_blank(
    evaluated: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    run_chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        "--hide-scrollbars",
        evaluated["html"].as_uri(),
    )
    assert shot.stat().st_size > 0
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        gray = image.convert("L")
        # text, table borders and the plots: far from a single blank colour
        assert len(set(gray.getdata())) > 20
        assert gray.getextrema()[0] < 100  # dark text is drawn
