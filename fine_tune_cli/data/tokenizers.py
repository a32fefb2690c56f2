"""Tokenizers: train WordPiece (BERT) or byte-level BPE (GPT-2) on the train split with
the `tokenizers` library, or load an HF tokenizer directory (local, or a Hub id's cached
snapshot). Always saved as an HF tokenizer dir so plain `AutoTokenizer.from_pretrained(dir)`
loads it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fine_tune_cli.errors import RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fine_tune_cli.recipe import Recipe

BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
GPT2_EOS = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt")


def tokenizer_source(recipe: Recipe) -> tuple[str, Path | None]:
    """Which tokenizer a recipe uses: ('wordpiece'|'bpe', None) or ('pretrained', dir)."""
    spec = recipe.data.tokenizer
    init_dir = None
    if recipe.model.init_from:
        from fine_tune_cli.models.registry import resolve_init_dir

        init_dir = resolve_init_dir(recipe.model.init_from)
        if not any((init_dir / f).is_file() for f in TOKENIZER_FILES):
            init_dir = None  # weights without a tokenizer: the recipe must name one
        elif spec.kind in ("wordpiece", "bpe"):
            raise RecipeError(
                f"data.tokenizer.kind: model.init_from {init_dir} brings its own tokenizer;"
                f" a newly trained {spec.kind} would not match its embeddings (use auto)"
            )
    if spec.kind == "pretrained":
        from fine_tune_cli.hub import local_path

        path = local_path(spec.path, "data.tokenizer.path")  # type: ignore[arg-type]
        if init_dir is not None and fingerprint_dir(path) != fingerprint_dir(init_dir):
            raise RecipeError(
                f"data.tokenizer.path: {path} differs from the tokenizer of model.init_from"
                f" ({init_dir}); drop data.tokenizer to reuse the model's own"
            )
        return "pretrained", path
    if spec.kind == "auto" and recipe.model.init_from:
        if init_dir is None:
            raise RecipeError(
                f"model.init_from: {recipe.model.init_from} has no tokenizer; set"
                " data.tokenizer.kind (wordpiece, bpe) or data.tokenizer.path"
            )
        return "pretrained", init_dir
    if spec.kind == "auto":
        from fine_tune_cli.models import FAMILIES

        kind = FAMILIES.get(recipe.model.family).tokenizer_kind
        return kind or "wordpiece", None
    return spec.kind, None


def fingerprint_dir(path: Path) -> str:
    """Content hash of a tokenizer (part of the prepared-data hash). tokenizer.json defines
    a fast tokenizer completely; config files differ in bookkeeping fields only."""
    digest = hashlib.sha256()
    names = (
        ["tokenizer.json"]
        if (path / "tokenizer.json").is_file()
        else ["vocab.txt", "vocab.json", "merges.txt"]
    )
    for name in names:
        if (path / name).is_file():
            digest.update(name.encode())
            digest.update((path / name).read_bytes())
    return digest.hexdigest()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and (path / "merges.txt").is_file():
        return _byte_level_bpe_from_files(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None
    if not tok.is_fast:
        raise RecipeError(f"{path}: only fast (tokenizer.json-backed) tokenizers are supported")
    if tok.pad_token is None:
        # GPT-2-style tokenizers have no pad token: batching needs one; reuse EOS.
        tok.pad_token = tok.eos_token
    return tok


def _byte_level_bpe_from_files(path: Path) -> PreTrainedTokenizerBase:
    """A bare GPT-2 style dir (vocab.json + merges.txt, no tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    try:
        bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise RecipeError(f"{path}: cannot read vocab.json/merges.txt ({exc})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        pad_token=GPT2_EOS,
    )


def train_tokenizer(
    kind: str,
    texts: Callable[[], Iterable[str]],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
) -> PreTrainedTokenizerBase:
    """A tokenizer trained on `texts()` (called once per pass over the training texts).
    The same texts give the same vocabulary and ids on every run and machine."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers as tk_trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":

        def bert(model: Any) -> Tokenizer:
            tok = Tokenizer(model)
            tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.WordPiece()
            return tok

        def wordpiece(vocab: int, specials: list[str]) -> Tokenizer:
            tok = bert(models.WordPiece(unk_token="[UNK]"))
            trainer = tk_trainers.WordPieceTrainer(
                vocab_size=vocab,
                min_frequency=min_frequency,
                special_tokens=specials,
                show_progress=False,
            )
            tok.train_from_iterator(texts(), trainer=trainer)
            return tok

        # The trainer numbers the "##c" pieces in hash-map order, and merges of equal
        # count are taken in id order: the same texts gave a different vocabulary on
        # every run. A first pass (no merges) finds the pieces; the second gets them in
        # sorted order, ahead of every merge, so the ties break the same way each time.
        specials = list(BERT_SPECIALS.values())
        pieces = sorted(t for t in wordpiece(1, specials).get_vocab() if t.startswith("##"))
        trained = wordpiece(vocab_size, [*specials, *pieces]).get_vocab()
        tok = bert(_canonical_wordpiece(trained))  # the pieces are not special here
        tok.add_special_tokens(specials)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, **BERT_SPECIALS)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = tk_trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[GPT2_EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts(), trainer=trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=GPT2_EOS,
            eos_token=GPT2_EOS,
            unk_token=GPT2_EOS,
            pad_token=GPT2_EOS,
        )
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def _canonical_wordpiece(vocab: dict[str, int]) -> Any:
    """The trained WordPiece vocabulary numbered canonically: special tokens keep their
    ids, every other token is numbered in sorted order (the trainer's own numbering
    follows merge order and the pieces' first-pass order). WordPiece matching does not
    depend on the ids."""
    from tokenizers import models

    specials = [t for t in BERT_SPECIALS.values() if t in vocab]
    rest = sorted(t for t in vocab if t not in BERT_SPECIALS.values())
    ordered = {t: i for i, t in enumerate([*sorted(specials, key=vocab.__getitem__), *rest])}
    return models.WordPiece(ordered, unk_token="[UNK]", continuing_subword_prefix="##")


def for_model_dir(processor: Any, max_length: int) -> Any:
    """What goes beside a model for use (best/, exports): a copy of the tokenizer whose
    `model_max_length` is the recipe's data.max_length. A tokenizer trained by `tokenizers`
    says 1e30, so `transformers.pipeline(..., truncation=True)` would not truncate and a
    long text would overflow the position embeddings. Image processors pass unchanged."""
    import copy

    from transformers import PreTrainedTokenizerBase

    if not isinstance(processor, PreTrainedTokenizerBase):
        return processor
    tokenizer = copy.deepcopy(processor)  # the prepared data's own stays as it was
    tokenizer.model_max_length = max_length
    return tokenizer
