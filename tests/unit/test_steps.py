"""Pipeline steps: each transform, filter and the augmentation, plus run_pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fine_tune_cli.data.steps import STEPS, Record, StepContext, run_pipeline

SPAM_ASSASSIN = Path(__file__).resolve().parents[2].parent / "shared/data/spam_assassin.jsonl.gz"
EMAIL_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def records(*texts: str, labels: list[str | None] | None = None) -> list[Record]:
    labels = labels or [None] * len(texts)
    return [
        {"id": i, "text": t, "label": label, "group": None}
        for i, (t, label) in enumerate(zip(texts, labels, strict=True))
    ]


def apply(name: str, recs: list[Record], seed: int = 0, **params: object) -> list[Record]:
    step = STEPS.get(name)
    return step.fn(recs, step.params(**params), StepContext(seed=seed))


def texts(name: str, *inputs: str, **params: object) -> list[str]:
    return [r["text"] for r in apply(name, records(*inputs), **params)]


def test_every_step_is_registered_with_a_docstring_and_documented_params() -> None:
    expected = {
        "unicode_normalize",
        "lowercase",
        "strip_html",
        "parse_email",
        "redact_pii",
        "collapse_whitespace",
        "dedupe",
        "filter_length",
        "truncate_chars",
        "augment_words",
    }
    assert expected <= set(STEPS.names())
    for name in expected:
        step = STEPS.get(name)
        assert step.doc, name
        assert step.params.model_config.get("extra") == "forbid"
        for field_name, field in step.params.model_fields.items():
            assert field.description, f"{name}.{field_name}"
        step.params()  # every field has a default


def test_steps_return_new_records_and_leave_inputs_alone() -> None:
    original = records("<b>Hello</b>  WORLD a@b.com", "<b>Hello</b>  WORLD a@b.com")
    snapshot = [dict(r) for r in original]
    from fine_tune_cli.data.image_steps import IMAGE_STEPS  # tests/vision covers those

    for name in sorted(set(STEPS.names()) - IMAGE_STEPS):
        out = apply(name, original)
        assert original == snapshot, name
        assert all(o is not r for o in out for r in original), name


# --------------------------------------------------------------------------- transforms
def test_unicode_normalize_forms() -> None:
    assert texts("unicode_normalize", "ﬁne ＡＢＣ") == ["fine ABC"]  # NFKC by default
    assert texts("unicode_normalize", "e\u0301", form="NFC") == ["\u00e9"]
    assert texts("unicode_normalize", "\u00e9", form="NFD") == ["e\u0301"]
    with pytest.raises(ValidationError):
        STEPS.get("unicode_normalize").params(form="nfc")


def test_lowercase_and_collapse_whitespace() -> None:
    assert texts("lowercase", "Hello ÉCOLE") == ["hello école"]
    assert texts("collapse_whitespace", "  a \t b\n\n c\u00a0 d  ") == ["a b c d"]


def test_strip_html_drops_tags_scripts_and_styles_and_unescapes() -> None:
    doc = (
        "<html><head><style>p {color: red}</style><title>T</title></head>"
        "<body><p>Hello&nbsp;<b>wor</b>ld &amp; &#169; &lt;tag&gt;</p>"
        "<script>alert('x < y')</script><div>bye</div></body></html>"
    )
    assert texts("strip_html", doc) == ["T Hello world & © <tag> bye"]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("<p>hi <a href='x", "hi"),  # attribute never closed
        ("<div><p>unclosed <b>bold", "unclosed bold"),
        ("<script>var x = 1 < 2", ""),  # script never closed
        ("<!-- comment never closed", ""),
        ("</p></div>stray end tags", "stray end tags"),
        ("<![foo[ bar ]]> after", "after"),  # html.parser raises here; regex fallback
        ("plain text, a < b and c > d", "plain text, a < b and c > d"),
        ("", ""),
    ],
)
def test_strip_html_survives_broken_markup(broken: str, expected: str) -> None:
    assert texts("strip_html", broken) == [expected]


# --------------------------------------------------------------------------- email
MULTIPART_EMAIL = """\
From bounce@lists.example.com  Thu Aug 22 12:36:23 2002
Return-Path: <bounce@lists.example.com>
Received: from mail.example.com (mail.example.com [192.168.1.20])
\tby mx.example.org (Postfix) with ESMTP id D03E543C36
From: =?iso-8859-1?q?Ren=E9_Dupont?= <rene@example.com>
To: team@example.org
Subject: =?utf-8?b?Q2Fmw6kgbWVldGluZw==?=
 tomorrow
Date: Thu, 22 Aug 2002 07:36:16 -0400
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.

--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable

Hi all,

The caf=E9 opens at 9. Call 555-123-4567.

--inner
Content-Type: text/html; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable

<html><body><p>Hi all,</p><p>The caf=E9 opens at 9.</p></body></html>

--inner--

--outer
Content-Type: application/pdf; name="agenda.pdf"
Content-Disposition: attachment; filename="agenda.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K
--outer--
"""

HTML_ONLY_EMAIL = """\
From: deals@shop.example.com
To: you@example.org
Subject: Huge savings!!!
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

--b1
Content-Type: text/html; charset=windows-1252
Content-Transfer-Encoding: quoted-printable

<html><head><style>.x{font-size:9px}</style></head>
<body><h1>Save 70%</h1><p>Only =80 9.99 &amp; free shipping</p>
<script>track()</script><a href=3D"http://shop.example.com/x">Buy now</a></body></html>
--b1--
"""


def test_parse_email_prefers_text_plain_and_skips_headers_and_attachments() -> None:
    (text,) = texts("parse_email", MULTIPART_EMAIL)
    subject, _, body = text.partition("\n\n")
    assert subject == "Café meeting tomorrow"
    assert "The café opens at 9." in body
    assert "<p>" not in text  # the HTML alternative was not used
    for header_text in ("Received", "Return-Path", "rene@example.com", "Dupont", "Date:"):
        assert header_text not in text
    assert "agenda" not in text and "JVBERi0" not in text  # attachment skipped


def test_parse_email_converts_html_parts_and_decodes_charset() -> None:
    (text,) = texts("parse_email", HTML_ONLY_EMAIL)
    assert text == "Huge savings!!!\n\nSave 70% Only € 9.99 & free shipping Buy now"


def test_parse_email_keeps_non_ascii_8bit_bodies_as_written() -> None:
    # A raw email read as text (a jsonl corpus) holds its 8bit body already decoded; the
    # bytes round trip once turned "á" into U+FFFD and "€" into a literal "\u20ac".
    eight_bit = (
        "Subject: hi\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\nPádraig paid €250 \ufffd\n"
    )
    no_charset = "Subject: hi\n\nP\ufffddraig wrote\n"
    assert texts("parse_email", eight_bit, no_charset) == [
        "hi\n\nPádraig paid €250 \ufffd",
        "hi\n\nP\ufffddraig wrote",
    ]


def test_parse_email_never_raises_on_malformed_mail() -> None:
    bad_charset = (
        "Subject: =?x-made-up?q?hi?=\nContent-Type: text/plain; charset=unknown-8bit\n"
        "Content-Transfer-Encoding: base64\n\n!!!not base64 at all!!!\n"
    )
    broken_multipart = (
        'Subject: cut off\nContent-Type: multipart/mixed; boundary="zz"\n\n--zz\n'
        "Content-Type: text/plain\n\nhalf a mes"
    )
    inputs = ["", "just some words, no headers at all", bad_charset, broken_multipart, "\x00\xff"]
    out = texts("parse_email", *inputs)
    assert out[1] == "just some words, no headers at all"
    assert out[3] == "cut off\n\nhalf a mes"
    assert all(isinstance(t, str) for t in out)


def test_parse_email_then_strip_html_then_redact_on_the_sample() -> None:
    steps = [(STEPS.get(n), STEPS.get(n).params()) for n in ("parse_email", "redact_pii")]
    out, _ = run_pipeline(records(MULTIPART_EMAIL), steps, StepContext())
    assert "[PHONE]" in out[0]["text"]
    assert not EMAIL_ADDRESS.search(out[0]["text"])


# --------------------------------------------------------------------------- pii
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+spam@mail.example.co.uk now", "mail [EMAIL] now"),
        ("for <zzzz@localhost>;", "for <[EMAIL]>;"),
        ("see http://example.com/a?b=1.", "see [URL]."),
        ("see HTTPS://Example.com/path, then", "see [URL], then"),
        ("visit www.example.org today", "visit [URL] today"),
        ("server 192.168.0.1 down", "server [IP] down"),
        ("go to http://10.0.0.1/admin", "go to [URL]"),
        ("call +1 (555) 123-4567 now", "call [PHONE] now"),
        ("call 555-123-4567", "call [PHONE]"),
        ("call 555.123.4567.", "call [PHONE]."),
        ("call (555) 123-4567", "call [PHONE]"),
        ("ring +44 20 7946 0958", "ring [PHONE]"),
    ],
)
def test_redact_pii_examples(text: str, expected: str) -> None:
    assert texts("redact_pii", text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "in 2024 we sold 12345 units",
        "on 2024-01-15 at 12:36:23",
        "version 8.11.6 and pi 3.14159",
        "population 10 000 000",
        "zip 12345-6789, order 1030377287",
        "an @mention and a lone @ sign",
        "999.999.999.999 is not an address",
    ],
)
def test_redact_pii_leaves_non_pii_alone(text: str) -> None:
    assert texts("redact_pii", text) == [text]


def test_redact_pii_switches() -> None:
    text = "a@b.com http://x.org 1.2.3.4 555-123-4567"
    assert texts("redact_pii", text, emails=False, urls=False, ips=False, phones=False) == [text]
    assert texts("redact_pii", text, urls=False, phones=False) == [
        "[EMAIL] http://x.org [IP] 555-123-4567"
    ]


# --------------------------------------------------------------------------- filters
def test_dedupe_keeps_first_occurrence() -> None:
    recs = records("a", "b", "a", "a", labels=["x", "y", "x", "z"])
    assert [r["id"] for r in apply("dedupe", recs)] == [0, 1]
    assert [r["id"] for r in apply("dedupe", recs, key="text_label")] == [0, 1, 3]


def test_filter_length() -> None:
    recs = records("", "hi", "hello world", "one two three four")
    assert [r["id"] for r in apply("filter_length", recs)] == [1, 2, 3]
    assert [r["id"] for r in apply("filter_length", recs, min_chars=3, max_chars=11)] == [2]
    assert [r["id"] for r in apply("filter_length", recs, min_words=3)] == [3]


def test_filter_length_max_below_min_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="max_chars: 5 is less than min_chars"):
        STEPS.get("filter_length").params(min_chars=10, max_chars=5)
    with pytest.raises(ValidationError):
        STEPS.get("filter_length").params(min_char=1)  # unknown key


def test_truncate_chars() -> None:
    assert texts("truncate_chars", "abcdef", "ab", max_chars=3) == ["abc", "ab"]
    assert texts("truncate_chars", "x" * 30000) == ["x" * 20000]


# --------------------------------------------------------------------------- augmentation
SENTENCES = [f"the quick brown fox number {i} jumps over the lazy dog again" for i in range(20)]


def test_augment_words_adds_labelled_copies_with_unique_ids() -> None:
    recs = [{**r, "group": "g"} for r in records(*SENTENCES, labels=["pos", "neg"] * 10)]
    out = apply("augment_words", recs, copies=2, p_delete=0.2, p_swap=0.2)
    assert len(out) == 60
    assert len({r["id"] for r in out}) == 60
    originals = [r for r in out if not r.get("augmented")]
    assert originals == recs
    for r in out:
        if r.get("augmented"):
            source = recs[r["id"] % 10**9]
            assert r["label"] == source["label"] and r["group"] == "g"
            assert r["text"]  # never empty
            assert set(r["text"].split()) <= set(source["text"].split())
    assert any(r["text"] != recs[r["id"] % 10**9]["text"] for r in out if r.get("augmented"))


def test_augment_words_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    recs = records(*SENTENCES)
    params = {"p_delete": 0.3, "p_swap": 0.3}
    first = apply("augment_words", recs, seed=1, **params)
    assert apply("augment_words", recs, seed=1, **params) == first
    assert apply("augment_words", recs, seed=2, **params) != first
    # A record's copy depends on the seed and the record only, not its neighbours.
    alone = apply("augment_words", recs[5:6], seed=1, **params)
    assert alone == [r for r in first if r["id"] % 10**9 == 5]


def test_augment_words_no_op_settings() -> None:
    recs = records("a b c")
    assert apply("augment_words", recs, copies=0) == recs
    out = apply("augment_words", recs, p_delete=0.0, p_swap=0.0)
    assert out[1]["text"] == "a b c" and out[1]["augmented"] is True


# --------------------------------------------------------------------------- pipeline
def test_run_pipeline_applies_steps_in_order_and_reports_counts() -> None:
    recs = records("<p>Hello  World</p>", "<i>hello world</i>", "", "<b>Other text</b>")
    names = ["strip_html", "lowercase", "dedupe", "filter_length"]
    steps = [(STEPS.get(n), STEPS.get(n).params()) for n in names]
    out, report = run_pipeline(recs, steps, StepContext(seed=0))
    assert [r["text"] for r in out] == ["hello world", "other text"]
    assert report == [
        {"step": "strip_html", "in": 4, "out": 4},
        {"step": "lowercase", "in": 4, "out": 4},
        {"step": "dedupe", "in": 4, "out": 3},
        {"step": "filter_length", "in": 3, "out": 2},
    ]
    assert run_pipeline(recs, [], StepContext()) == (recs, [])


def test_cleaning_real_spam_assassin_emails() -> None:
    if not SPAM_ASSASSIN.is_file():
        pytest.skip(f"{SPAM_ASSASSIN} not present")
    from fine_tune_cli.data.sources import read_source
    from fine_tune_cli.recipe import SourceSpec

    spec = SourceSpec(path=str(SPAM_ASSASSIN), group="group", limit=200)
    recs = read_source(spec, need_label=True)
    assert len(recs) == 200
    names = ["parse_email", "strip_html", "redact_pii"]
    steps = [(STEPS.get(n), STEPS.get(n).params()) for n in names]
    out, report = run_pipeline(recs, steps, StepContext())
    assert [r["out"] for r in report] == [200, 200, 200]
    leaked = [m.group() for r in out if (m := EMAIL_ADDRESS.search(r["text"]))]
    assert leaked == []
    assert not any(r["text"].startswith("From ") or "Received:" in r["text"] for r in out)
