"""Pipeline steps: one registry, named in recipes in order (`data.steps`).

A step takes the list of records and returns a new list, so filters (dedupe, length)
and per-record transforms (strip_html, redact_pii) share one shape and the pipeline
can report how many records each step kept. Prepare streams records through the steps
in chunks (data/stream.py): a step that must remember earlier records keeps that in
`ctx.state` (one dict per step and pipeline), and exact `dedupe` is resolved on disk by
its `key` (a 64-bit hash per record) instead of a set of every text.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import hashlib
import html
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fine_tune_cli.registry import Registry

Record = dict[str, Any]  # keys: id, text, label (str | None), group (str | None)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class StepContext:
    """What a step may need besides its records (seeded randomness for augmentation)."""

    seed: int = 0
    # What a step remembers between chunks of one stream (its own dict per pipeline).
    state: dict[str, Any] = field(default_factory=dict, compare=False)


StepFn = Callable[[list[Record], Any, StepContext], list[Record]]


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    params: type[BaseModel]
    doc: str
    # Exact-duplicate steps: the record's 64-bit key; streamed prepare resolves these
    # over the whole corpus on disk (keep the first record of each key).
    key: Callable[[Record, Any], int] | None = None
    # Bumped when the step's output changes for the same input: it then enters the data
    # hash of the recipes that use it (their stale prepared dirs are not reused; others keep
    # their hash).
    revision: int = 1


STEPS: Registry[Step] = Registry("pipeline step")


def step(
    name: str,
    params: type[BaseModel] = NoParams,
    key: Callable[[Record, Any], int] | None = None,
    revision: int = 1,
) -> Callable[[StepFn], StepFn]:
    """Register `fn(records, params, ctx) -> records` under `name`."""

    def decorate(fn: StepFn) -> StepFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        STEPS.add(name, Step(name=name, fn=fn, params=params, doc=doc, key=key, revision=revision))
        return fn

    return decorate


def run_pipeline(
    records: list[Record], steps: list[tuple[Step, BaseModel]], ctx: StepContext
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Apply `steps` in order; report how many records went into and out of each."""
    pipeline = Pipeline(steps, ctx)
    return pipeline.feed(records), pipeline.report()


class Pipeline:
    """Steps applied chunk by chunk with per-step state kept between chunks, counting
    records into and out of each step (feeding the whole list at once is run_pipeline)."""

    def __init__(self, steps: list[tuple[Step, BaseModel]], ctx: StepContext):
        self.steps = [(spec, params, replace(ctx, state={})) for spec, params in steps]
        self.counts = [[0, 0] for _ in steps]

    def feed(self, records: list[Record]) -> list[Record]:
        for (spec, params, ctx), count in zip(self.steps, self.counts, strict=True):
            count[0] += len(records)
            records = spec.fn(records, params, ctx) if records else records
            count[1] += len(records)
        return records

    def report(self) -> list[dict[str, Any]]:
        return [
            {"step": spec.name, "in": n_in, "out": n_out}
            for (spec, _, _), (n_in, n_out) in zip(self.steps, self.counts, strict=True)
        ]


def _with_text(records: list[Record], transform: Callable[[str], str]) -> list[Record]:
    return [{**r, "text": transform(r["text"])} for r in records]


# --------------------------------------------------------------------------- text transforms
class UnicodeNormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = Field(
        "NFKC", description="Unicode normal form (NFKC also folds full-width and ligatures)."
    )


@step("unicode_normalize", UnicodeNormalizeParams)
def unicode_normalize(
    records: list[Record], params: UnicodeNormalizeParams, ctx: StepContext
) -> list[Record]:
    """Normalize Unicode so look-alike characters become one code point sequence."""
    return _with_text(records, lambda text: unicodedata.normalize(params.form, text))


@step("lowercase")
def lowercase(records: list[Record], params: NoParams, ctx: StepContext) -> list[Record]:
    """Lowercase the text."""
    return _with_text(records, str.lower)


@step("collapse_whitespace")
def collapse_whitespace(records: list[Record], params: NoParams, ctx: StepContext) -> list[Record]:
    """Turn every run of whitespace (newlines included) into one space and strip the ends."""
    return _with_text(records, _collapse)


def _collapse(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- html
_DROPPED_TAGS = {"script", "style"}
# Tags that separate words visually; inline tags (b, a, span) must not split a word.
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
    "th", "thead", "title", "tr", "ul", "body", "head", "html", "option", "select", "img",
}  # fmt: skip
# A tag or comment still open when the document ends is markup, not text.
_UNTERMINATED_TAG = re.compile(r"<[A-Za-z!/?][^>]*\Z")
_TAG = re.compile(r"<[^>]*>")
_DROPPED_BLOCK = re.compile(r"<(script|style)\b.*?(</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.DOTALL)


class _TextExtractor(HTMLParser):
    """Collect the visible text of an HTML document (entities already unescaped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED_TAGS:
            self.skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)

    def text(self, document: str) -> str:
        self.feed(document)
        n_fed = len(self.parts)
        self.close()  # flushes whatever the parser held back, including a broken last tag
        tail = _UNTERMINATED_TAG.sub("", "".join(self.parts[n_fed:]))
        return "".join(self.parts[:n_fed]) + tail


def html_to_text(document: str) -> str:
    """Visible text of an HTML document, whitespace collapsed; never raises on bad markup."""
    try:
        text = _TextExtractor().text(document)
    except Exception:
        # html.parser gives up on a few constructs (e.g. `<![foo[`); a regex strip is
        # cruder but always finishes.
        text = _DROPPED_BLOCK.sub(" ", _COMMENT.sub(" ", document))
        text = html.unescape(_TAG.sub(" ", _UNTERMINATED_TAG.sub("", text)))
    return _collapse(text)


@step("strip_html")
def strip_html(records: list[Record], params: NoParams, ctx: StepContext) -> list[Record]:
    """Remove HTML tags and script/style contents, unescape entities, collapse whitespace."""
    return _with_text(records, html_to_text)


# --------------------------------------------------------------------------- email
def _decode_subject(value: str) -> str:
    try:
        decoded = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # unknown charset or malformed encoded-word: keep it as written
        decoded = value
    return _collapse(decoded)


def _decode_part(part: email.message.Message) -> str:
    raw = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(raw, str) and encoding in ("", "7bit", "8bit", "binary"):
        # Parsed from a str, a 7bit/8bit body is already text: the bytes round trip
        # (get_payload(decode=True)) would write "á" as \xe1 and "€" as a literal "\u20ac".
        return raw
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown or made-up charset name ("unknown-8bit")
        return payload.decode("utf-8", errors="replace")


def email_to_text(raw: str) -> str:
    """Subject and body of a raw RFC-822 email; the raw text if it cannot be parsed."""
    try:
        # compat32 is the lenient parser: it records defects instead of raising.
        message = email.message_from_string(raw, policy=email.policy.compat32)
        subject = _decode_subject(str(message.get("Subject", "") or ""))
        plain: list[str] = []
        rich: list[str] = []
        for part in message.walk():
            if part.is_multipart():
                continue
            if part.get_content_disposition() == "attachment" or part.get_filename():
                continue
            kind = part.get_content_type()
            if kind == "text/plain":
                plain.append(_decode_part(part).strip())
            elif kind == "text/html":
                rich.append(html_to_text(_decode_part(part)))
        body = "\n\n".join(p for p in (plain or rich) if p)
    except Exception:
        # Real mail corpora contain every kind of breakage; a bad email keeps its raw text
        # rather than stopping a prepare run.
        return raw
    return "\n\n".join(p for p in (subject, body) if p)


@step("parse_email", revision=2)  # 2: 8bit bodies kept as written (no "\\u20ac")
def parse_email(records: list[Record], params: NoParams, ctx: StepContext) -> list[Record]:
    """Turn a raw email into "subject + body" (plain text preferred, HTML converted)."""
    return _with_text(records, email_to_text)


# --------------------------------------------------------------------------- pii
# Also hosts without a dot (user@localhost): raw mail headers are full of them.
_EMAIL = re.compile(r"[\w.!#$%&*+/=?^{}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'\[\]]*[^\s<>\"'\[\].,;:!?)]", re.IGNORECASE)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IP = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
# Digit groups need separators (or a leading +) so years, counts, ids and dates stay.
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    # +1 (555) 123-4567, +44 20 7946 0958
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])(?:\d{2,4}[ .-]){0,2}\d{3,4}"
    r"|\+\d{8,15}"  # +15551234567
    r"|(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # (555) 123-4567, 555.123.4567
    r")(?![\w-]|\.\d)"
)


class RedactPiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    emails: bool = Field(True, description="Replace email addresses with [EMAIL].")
    urls: bool = Field(True, description="Replace http(s):// and www. links with [URL].")
    phones: bool = Field(True, description="Replace phone numbers with [PHONE].")
    ips: bool = Field(True, description="Replace IPv4 addresses with [IP].")


@step("redact_pii", RedactPiiParams)
def redact_pii(records: list[Record], params: RedactPiiParams, ctx: StepContext) -> list[Record]:
    """Replace email addresses, URLs, phone numbers and IPs with placeholders."""
    # Order matters: emails before URLs (mailto links), URLs before IPs (http://1.2.3.4/),
    # IPs before phones (dotted digit groups).
    patterns = [
        (params.emails, _EMAIL, "[EMAIL]"),
        (params.urls, _URL, "[URL]"),
        (params.ips, _IP, "[IP]"),
        (params.phones, _PHONE, "[PHONE]"),
    ]
    active = [(pattern, placeholder) for on, pattern, placeholder in patterns if on]

    def redact(text: str) -> str:
        for pattern, placeholder in active:
            text = pattern.sub(placeholder, text)
        return text

    return _with_text(records, redact)


# --------------------------------------------------------------------------- filters
class DedupeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: Literal["text", "text_label"] = Field(
        "text", description="What makes two records duplicates: the text, or text and label."
    )


def dedupe_key(record: Record, params: DedupeParams) -> int:
    """A record's 64-bit dedupe key (blake2b of the text, and label when asked). Two
    different texts share a key with probability ~n^2 / 2^65 (3e-6 for 10M records)."""
    digest = hashlib.blake2b(record["text"].encode("utf-8", "surrogatepass"), digest_size=8)
    if params.key == "text_label":
        label = record["label"]
        digest.update(b"\x00\x02" if label is None else b"\x00\x01" + str(label).encode())
    return int.from_bytes(digest.digest(), "little")


@step("dedupe", DedupeParams, key=dedupe_key)
def dedupe(records: list[Record], params: DedupeParams, ctx: StepContext) -> list[Record]:
    """Drop exact duplicates, keeping the first occurrence."""
    seen: set[Any] = ctx.state.setdefault("seen", set())
    kept = []
    for r in records:
        key = r["text"] if params.key == "text" else (r["text"], r["label"])
        if key not in seen:
            seen.add(key)
            kept.append(dict(r))
    return kept


class NearDedupeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity of word shingles that"
        " makes two texts near duplicates.",
    )
    shingle: int = Field(5, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")


@step("near_dedupe", NearDedupeParams)
def near_dedupe(records: list[Record], params: NearDedupeParams, ctx: StepContext) -> list[Record]:
    """Drop near duplicates (MinHash LSH over word shingles), keeping the first seen."""
    from fine_tune_cli.data.near_dup import NearIndex

    index = ctx.state.get("index")
    if index is None:
        index = ctx.state["index"] = NearIndex(params.threshold, params.shingle, params.num_perm)
    kept = []
    for r in records:
        signature = index.signature(r["text"])
        if index.query(signature):
            continue
        index.add(index.size, signature)
        kept.append(dict(r))
    return kept


class FilterLengthParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_chars: int = Field(1, ge=0, description="Drop texts shorter than this many characters.")
    max_chars: int | None = Field(
        None, ge=0, description="Drop texts longer than this many characters (null: no limit)."
    )
    min_words: int = Field(0, ge=0, description="Drop texts with fewer whitespace-split words.")

    @model_validator(mode="after")
    def _max_not_below_min(self) -> FilterLengthParams:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"max_chars: {self.max_chars} is less than min_chars ({self.min_chars})"
            )
        return self


@step("filter_length", FilterLengthParams)
def filter_length(
    records: list[Record], params: FilterLengthParams, ctx: StepContext
) -> list[Record]:
    """Drop records whose text is too short or too long."""
    kept = []
    for r in records:
        n = len(r["text"])
        if n < params.min_chars or (params.max_chars is not None and n > params.max_chars):
            continue
        if params.min_words and len(r["text"].split()) < params.min_words:
            continue
        kept.append(dict(r))
    return kept


class TruncateCharsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_chars: int = Field(20000, gt=0, description="Keep only the first max_chars characters.")


@step("truncate_chars", TruncateCharsParams)
def truncate_chars(
    records: list[Record], params: TruncateCharsParams, ctx: StepContext
) -> list[Record]:
    """Cut very long texts (raw emails can be megabytes) to their first max_chars."""
    return _with_text(records, lambda text: text[: params.max_chars])


# --------------------------------------------------------------------------- augmentation
AUGMENT_ID_OFFSET = 10**9


class AugmentWordsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    p_delete: float = Field(0.1, ge=0, lt=1, description="Probability of deleting each word.")
    p_swap: float = Field(0.1, ge=0, le=1, description="Probability of swapping adjacent words.")
    copies: int = Field(1, ge=0, description="Augmented copies added per record.")


def _augment(words: list[str], params: AugmentWordsParams, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= params.p_delete]
    if not kept and words:  # never produce an empty text
        kept = [rng.choice(words)]
    i = 0
    while i < len(kept) - 1:
        if rng.random() < params.p_swap:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
            i += 2  # a word moves at most one place
        else:
            i += 1
    return kept


@step("augment_words", AugmentWordsParams)
def augment_words(
    records: list[Record], params: AugmentWordsParams, ctx: StepContext
) -> list[Record]:
    """Add copies with random word deletions and swaps (train split only; seeded)."""
    out: list[Record] = []
    for r in records:
        out.append(dict(r))
        # One generator per record: the result depends on the seed and the record only,
        # not on which other records are present.
        rng = random.Random(f"{ctx.seed}:{r['id']}")
        words = r["text"].split()
        for k in range(params.copies):
            text = " ".join(_augment(words, params, rng))
            out.append(
                {**r, "id": r["id"] + (k + 1) * AUGMENT_ID_OFFSET, "text": text, "augmented": True}
            )
    return out
