"""What `ftc explain` needs from a classifier's modality: its inputs as model tensors, the
`pad` baseline (the same input with its content blanked), the position attention rollout
starts from, and how per-position scores read: per token merged into words for text, a
patch grid with a heat map for images. fine_tune_cli/explain/ does the rest generically."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.errors import DataError

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.recipe import Recipe
    from fine_tune_cli.targets import Target

TOP = 5  # words / patches listed per example (jsonl "top", --json, the page)


@dataclass
class Example:
    id: Any
    inputs: dict[str, torch.Tensor]  # one example (batch of 1) as the model takes it
    blank: dict[str, torch.Tensor]  # the same with its content blanked: the pad baseline
    view: dict[str, Any] = field(default_factory=dict)  # what describe/body show


def processor_dirs(target: Target) -> list[Path]:
    """Where the tokenizer / image processor the model was trained with is saved: the model
    dir (best/, an export), else its run's best/ (a checkpoint carries neither)."""
    from fine_tune_cli.runs import BEST

    dirs = [target.model_dir]
    if target.run is not None:
        dirs.append(target.run.path / BEST)
    return dirs


def _top(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: -item["score"])[:TOP]


def _top_words(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The TOP highest-scoring distinct words (case folded), each at its best occurrence:
    "debt, debt, Debt" would spend three of five places on one piece of evidence."""
    best: dict[str, dict[str, Any]] = {}
    for w in words:
        key = w["word"].casefold()
        if key not in best or w["score"] > best[key]["score"]:
            best[key] = {"word": w["word"], "score": w["score"]}
    return _top(list(best.values()))


class TextExplainer:
    """Texts: the recipe's cleaning steps and the model's tokenizer, as `ftc predict`."""

    def __init__(self, recipe: Recipe, tokenizer: Any, pooled_token: str):
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.pooled_token = pooled_token

    @classmethod
    def for_target(cls, target: Target) -> TextExplainer:
        from fine_tune_cli.data.tokenizers import TOKENIZER_FILES, load_tokenizer
        from fine_tune_cli.models.registry import FAMILIES
        from fine_tune_cli.targets import prepared_for

        pooled = FAMILIES.get(target.recipe.model.family).pooled_token
        for root in processor_dirs(target):
            if any((root / name).is_file() for name in TOKENIZER_FILES):
                return cls(target.recipe, load_tokenizer(root), pooled)
        return cls(target.recipe, prepared_for(target).tokenizer, pooled)

    def from_source(self, source: str) -> list[Example]:
        from fine_tune_cli.predict import STDIN, clean, read_inputs

        if source != STDIN and Path(source).is_dir():
            raise DataError(f"{source}: a folder; a text model reads a csv/jsonl/txt file or -")
        records = clean(read_inputs(source, self.recipe), self.recipe)
        return [self.example(r["id"], r["text"], r.get("filtered")) for r in records]

    def from_eval(self, details: dict[str, Any], texts: list[str], idx: list[int]) -> list[Example]:
        """Eval examples by index in the split (texts as the prepared data keeps them)."""
        return [self.example(i, texts[i]) for i in idx]

    def example(self, id_: Any, text: str, filtered: str | None = None) -> Example:
        import torch

        tok = self.tokenizer
        enc = tok(
            text,
            truncation=True,
            max_length=self.recipe.data.max_length,
            add_special_tokens=True,  # the ids prepare and predict feed the model
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids = list(enc["input_ids"])
        special = list(enc["special_tokens_mask"])
        blank = [i if s else tok.pad_token_id for i, s in zip(ids, special, strict=True)]
        mask = torch.ones(1, len(ids), dtype=torch.long)
        view = {
            "text": text,
            "tokens": tok.convert_ids_to_tokens(ids),
            "offsets": [tuple(o) for o in enc["offset_mapping"]],
            "word_ids": enc.word_ids(),
            "pooled": self._pooled(ids),
            "filtered": filtered,
        }
        return Example(
            id_,
            {"input_ids": torch.tensor([ids]), "attention_mask": mask},
            {"input_ids": torch.tensor([blank]), "attention_mask": mask},
            view,
        )

    def _pooled(self, ids: list[int]) -> int:
        """The token the head reads: the first, or the last that is not padding (as
        GPT2ForSequenceClassification finds it)."""
        if self.pooled_token == "first":
            return 0
        real = [i for i, t in enumerate(ids) if t != self.tokenizer.pad_token_id]
        return real[-1] if real else len(ids) - 1

    def rollout_scores(self, example: Example, flow: np.ndarray) -> np.ndarray:
        return flow[example.view["pooled"]]

    def describe(self, example: Example, scores: np.ndarray) -> dict[str, Any]:
        """Per token, per word (sub-tokens summed; special tokens belong to no word), the
        top words, and whether the text was cut at data.max_length."""
        view = example.view
        text, offsets = view["text"], view["offsets"]
        tokens = [  # "word": index into "words"; None for special tokens
            {"token": t, "word": None, "score": round(float(s), 6)}
            for t, s in zip(view["tokens"], scores, strict=True)
        ]
        spans: dict[int, list[float]] = {}
        for word, (start, end), score in zip(view["word_ids"], offsets, scores, strict=True):
            if word is None:
                continue
            span = spans.setdefault(word, [start, end, 0.0])
            span[0], span[1] = min(span[0], start), max(span[1], end)
            span[2] += float(score)
        order = {w: i for i, w in enumerate(sorted(spans))}
        for token, word in zip(tokens, view["word_ids"], strict=True):
            token["word"] = order.get(word) if word is not None else None
        words = []
        for start, end, score in (spans[w] for w in sorted(spans)):
            start, end = int(start), int(end)
            while start < end and text[start].isspace():  # byte-level BPE: " word"
                start += 1
            words.append(
                {"word": text[start:end], "start": start, "end": end, "score": round(score, 6)}
            )
        shown = max((int(e) for _, e in offsets), default=0)
        return {
            "tokens": tokens,
            "words": words,
            "top": _top_words(words),
            "truncated": bool(text[shown:].strip()),
        }

    def without_top(self, example: Example, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The input with every occurrence of its top words blanked as the pad baseline
        blanks content (their tokens -> the pad token)."""
        import torch

        top = {t["word"].casefold() for t in row["top"]}
        words = [w["word"].casefold() for w in row["words"]]
        hit = [t["word"] is not None and words[t["word"]] in top for t in row["tokens"]]
        ids = example.inputs["input_ids"]
        blanked = torch.where(torch.tensor([hit]), example.blank["input_ids"], ids)
        return {**example.inputs, "input_ids": blanked}

    def body(self, example: Example, row: dict[str, Any]) -> str:
        """The text with every word shaded by its score (its score on hover)."""
        from fine_tune_cli.explain.page import example_head, shade

        text, words = example.view["text"], row["words"]
        scale = max((abs(w["score"]) for w in words), default=0.0)
        out, at = [], 0
        for w in words:
            out.append(html.escape(text[at : w["start"]]))
            out.append(
                f'<span style="background:{shade(w["score"], scale)}"'
                f' title="{w["score"]:+.4f}">{html.escape(text[w["start"] : w["end"]])}</span>'
            )
            at = w["end"]
        if row["truncated"]:
            out.append(f" <i>&hellip; (cut at data.max_length={self.recipe.data.max_length})</i>")
        else:
            out.append(html.escape(text[at:]))
        top = ", ".join(f"{html.escape(t['word'])} {t['score']:+.3f}" for t in row["top"])
        return (
            example_head(row)
            + f'<div class="text">{"".join(out)}</div><div class="top">top words: {top}</div>'
        )


class ImageExplainer:
    """Images: decoded, the recipe's steps, fitted and scaled as `ftc predict` does."""

    def __init__(self, recipe: Recipe, info: dict[str, Any]):
        self.recipe = recipe
        self.info = info  # size, channels, mean, std (ImageBatches' manifest entry)

    @classmethod
    def for_target(cls, target: Target) -> ImageExplainer:
        from fine_tune_cli.predict import image_geometry
        from fine_tune_cli.targets import prepared_for

        for root in processor_dirs(target):
            if (root / "preprocessor_config.json").is_file():
                return cls(target.recipe, image_geometry(root))
        return cls(target.recipe, prepared_for(target).manifest["images"])

    def from_source(self, source: str) -> list[Example]:
        from fine_tune_cli.predict import image_inputs, image_pixels, warn_grey

        rows = image_inputs(source, self.recipe)
        to_grey: list[str] = []
        pixels = image_pixels(self.recipe, self.info, rows, to_grey)
        warn_grey(to_grey)
        return [self.example(row["id"], p) for row, p in zip(rows, pixels, strict=True)]

    def from_eval(self, details: dict[str, Any], texts: list[str], idx: list[int]) -> list[Example]:
        """Eval examples by index in the split (the prepared uint8 pixels)."""
        return [self.example(i, details["pixels"][i]) for i in idx]

    def example(self, id_: Any, pixels: np.ndarray) -> Example:
        """`pixels`: uint8 (C, S, S) before scaling. The pad baseline is a black image (what
        padding adds around an image), scaled like any other."""
        from fine_tune_cli.predict import scaled_pixels

        both = scaled_pixels(self.recipe, self.info, np.stack([pixels, np.zeros_like(pixels)]))
        return Example(
            id_, {"pixel_values": both[:1]}, {"pixel_values": both[1:]}, {"pixels": pixels}
        )

    def rollout_scores(self, example: Example, flow: np.ndarray) -> np.ndarray:
        return flow[0, 1:]  # from the class token to each patch (position 0 is itself)

    def describe(self, example: Example, scores: np.ndarray) -> dict[str, Any]:
        side = math.isqrt(len(scores))
        grid = np.asarray(scores, dtype=np.float64).reshape(side, side)
        patches = [
            {"patch": [r, c], "score": round(float(grid[r, c]), 6)}
            for r in range(side)
            for c in range(side)
        ]
        return {
            "patch_size": self.info["size"] // side,
            "grid": [[round(float(v), 6) for v in row] for row in grid],
            "top": _top(patches),
        }

    def without_top(self, example: Example, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The image with its top patches set to the baseline's (black) pixels."""
        pixels = example.inputs["pixel_values"].clone()
        side = row["patch_size"]
        for t in row["top"]:
            r, c = t["patch"]
            box = (..., slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side))
            pixels[box] = example.blank["pixel_values"][box]
        return {"pixel_values": pixels}

    def body(self, example: Example, row: dict[str, Any]) -> str:
        """The image and the same image under its patch heat map, enlarged."""
        from fine_tune_cli.explain.page import example_head, png_uri

        image, heat = heat_map(example.view["pixels"], np.asarray(row["grid"]))
        return (
            example_head(row)
            + f'<div class="images"><img src="{png_uri(image)}" alt="input">'
            + f'<img src="{png_uri(heat)}" alt="patch attributions"></div>'
        )


def heat_map(pixels: np.ndarray, grid: np.ndarray, width: int = 224) -> tuple[np.ndarray, ...]:
    """(image, overlay) as uint8 RGB at about `width` px: the overlay tints each patch red
    (toward the class) or blue (against), by |score| relative to the largest."""
    from fine_tune_cli.explain.page import NEGATIVE, POSITIVE

    rgb = pixels.transpose(1, 2, 0)
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[:, :, :3]
    zoom = max(1, width // rgb.shape[0])
    image = np.kron(rgb, np.ones((zoom, zoom, 1), dtype=np.uint8))
    cell = image.shape[0] // grid.shape[0]
    scale = float(np.abs(grid).max()) or 1.0
    alpha = np.kron(np.abs(grid) / scale * 0.7, np.ones((cell, cell)))[:, :, None]
    colour = np.where(
        np.kron(grid, np.ones((cell, cell)))[:, :, None] >= 0,
        np.array(POSITIVE, dtype=np.float64),
        np.array(NEGATIVE, dtype=np.float64),
    )
    size = alpha.shape[0]
    base = image[:size, :size].astype(np.float64)
    overlay = (base * (1 - alpha) + colour * alpha).round().astype(np.uint8)
    return image, overlay
