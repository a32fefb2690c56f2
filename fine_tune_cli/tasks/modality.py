"""Defaults shared by the tasks of one modality (text: a tokenizer; image: pixels and an
image processor). A task file subclasses one of these and overrides what differs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fine_tune_cli.errors import RecipeError
from fine_tune_cli.tasks.base import Modality, Predictions

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.models.registry import BuildContext
    from fine_tune_cli.recipe import Recipe


def _init_dir(recipe: Recipe) -> Path | None:
    from fine_tune_cli.models.registry import resolve_init_dir

    return resolve_init_dir(recipe.model.init_from) if recipe.model.init_from else None


class TaskBase:
    """Capabilities off by default; a task switches on what it supports."""

    name: ClassVar[str]
    recipe_task: ClassVar[str]
    modality: ClassVar[Modality]
    needs_labels: ClassVar[bool] = False
    primary_metric: ClassVar[str] = "loss"
    unit: ClassVar[str] = "samples"
    not_exportable: ClassVar[str | None] = None
    predictable: ClassVar[bool] = False
    explainable: ClassVar[bool] = False
    evaluates_new_files: ClassVar[bool] = False
    generates_samples: ClassVar[bool] = False
    distillable: ClassVar[bool] = False
    encoder_revision: ClassVar[int | None] = None
    augments_batches: ClassVar[bool] = False
    pads_batches: ClassVar[bool] = False  # variable-length batches: train.batching applies

    recipe_sections: ClassVar[tuple[str, ...]] = ()  # task-only sections it reads (mim)

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        return []

    @classmethod
    def section_problems(cls, recipe: Recipe) -> list[str]:
        """A task-only section set for a task that does not read it (its keys would be
        silently ignored)."""
        from fine_tune_cli.recipe import MIMSpec

        if recipe.mim != MIMSpec() and "mim" not in cls.recipe_sections:
            return [f"mim: only used by task mim (task is '{recipe.model.task}')"]
        return []

    @classmethod
    def label_names(cls, recipe: Recipe, records: list[Record]) -> list[str]:
        return []

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        """How prepare streams this task's corpus (data/stream.py); None: prepared as one
        list of records."""
        return None

    @classmethod
    def stratify_labels(cls, records: list[Record]) -> list[Any] | None:
        return None

    @classmethod
    def split_from_file(cls, recipe: Recipe, prepared: Any, path: Path) -> tuple[Any, list[str]]:
        raise RecipeError(f"--data: {cls.recipe_task} runs cannot evaluate a new file")

    @classmethod
    def predict(cls, loaded: Any, source: str) -> Predictions:
        raise RecipeError(f"{loaded.root}: {cls.name} models cannot label new inputs")

    @classmethod
    def explainer(cls, target: Any) -> Any:
        raise RecipeError(
            f"{target.model_dir}: ftc explain explains text and image classifiers (this model"
            f" is {target.recipe.model.family}/{target.recipe.model.task})"
        )

    @classmethod
    def baseline(
        cls, recipe: Recipe, prepared: Any, split: PreparedSplit, texts: list[str]
    ) -> dict[str, Any]:
        return {}  # only classifiers have a classic baseline

    def set_epoch(self, epoch: int) -> None:
        """Nothing is drawn per epoch unless a task says so."""

    def samples(
        self, model: torch.nn.Module, split: PreparedSplit, device: torch.device
    ) -> list[dict[str, Any]]:
        return []


class TextTask(TaskBase):
    """Text: a tokenizer trained or loaded at prepare time, token-id sequences."""

    modality: ClassVar[Modality] = "text"
    pads_batches: ClassVar[bool] = True

    @classmethod
    def modality_problems(cls, recipe: Recipe) -> list[str]:
        """Text recipes read text sources and take text steps."""
        from fine_tune_cli.data.image_steps import IMAGE_STEPS
        from fine_tune_cli.recipe import IMAGE_FORMATS, TEXT_FORMATS

        family, fmt = recipe.model.family, recipe.data.source.format
        problems = []
        if fmt in IMAGE_FORMATS:
            problems.append(
                f"data.source.format: '{fmt}' is an image source; {family} reads text"
                f" ({', '.join(TEXT_FORMATS)})"
            )
        for section in ("steps", "augment"):
            for i, spec in enumerate(getattr(recipe.data, section)):
                if spec.name in IMAGE_STEPS:
                    problems.append(
                        f"data.{section}[{i}]: '{spec.name}' is an image step; {family} data"
                        " takes text steps"
                    )
        return problems + cls.section_problems(recipe)

    @classmethod
    def hash_inputs(cls, recipe: Recipe, scheme: int) -> dict[str, Any]:
        from fine_tune_cli.data.prepare import text_hash_inputs

        return text_hash_inputs(recipe, scheme, cls.encoder_revision)

    @classmethod
    def build_context(cls, recipe: Recipe, prepared: Any) -> BuildContext:
        from fine_tune_cli.models.registry import BuildContext

        tok = prepared.tokenizer
        return BuildContext(
            vocab_size=len(tok),
            label_names=tuple(prepared.label_names),
            max_length=recipe.data.max_length,
            pad_token_id=tok.pad_token_id,
            special_ids={"eos": tok.eos_token_id} if tok.eos_token_id is not None else {},
            init_dir=_init_dir(recipe),
        )

    @classmethod
    def sample_context(
        cls, recipe: Recipe, sample: list[Record], label_names: tuple[str, ...]
    ) -> BuildContext:
        from fine_tune_cli.data.tokenizers import load_tokenizer, tokenizer_source
        from fine_tune_cli.models.registry import BuildContext

        _, tok_dir = tokenizer_source(recipe)
        vocab = len(load_tokenizer(tok_dir)) if tok_dir else recipe.data.tokenizer.vocab_size
        return BuildContext(
            vocab_size=vocab,
            label_names=label_names,
            max_length=recipe.data.max_length,
            pad_token_id=0,
            init_dir=_init_dir(recipe),
        )

    @classmethod
    def client_processor(cls, model_dir: Path, prepared: Any) -> Any:
        """The tokenizer saved with the model (what it was trained with); a checkpoint has
        none, so the prepared data's."""
        if (model_dir / "tokenizer_config.json").is_file() or (
            model_dir / "tokenizer.json"
        ).is_file():
            return cls.saved_tokenizer(model_dir)
        return prepared.tokenizer

    @classmethod
    def saved_tokenizer(cls, root: Path) -> Any:
        from fine_tune_cli.data.tokenizers import load_tokenizer

        return load_tokenizer(root)

    @classmethod
    def read_source(cls, source: Any, need_label: bool) -> list[Record]:
        """The recipe's source records (texts; labels when `need_label`)."""
        from fine_tune_cli.data.sources import read_source

        return read_source(source, need_label=need_label, images=False)


class ImageTask(TaskBase):
    """Images: uint8 pixels at prepare time, an HF image processor beside the model."""

    modality: ClassVar[Modality] = "image"
    augments_batches: ClassVar[bool] = True  # data.augment runs per batch, not at prepare
    pads_batches: ClassVar[bool] = False  # fixed-size pixels (before TextTask in the MRO)

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        return None  # decoded images are prepared as one list (before the text tasks' MRO)

    @classmethod
    def modality_problems(cls, recipe: Recipe) -> list[str]:
        """Image recipes read image sources, take image steps (normalize last) and no
        tokenizer settings."""
        from fine_tune_cli.data.image_steps import IMAGE_STEPS
        from fine_tune_cli.recipe import IMAGE_FORMATS, TEXT_FORMATS, DataSpec

        family, data = recipe.model.family, recipe.data
        problems = []
        if data.source.format in TEXT_FORMATS:
            problems.append(
                f"data.source.format: {family} reads images ({', '.join(IMAGE_FORMATS)});"
                " a csv/jsonl list of image files is format image_manifest"
            )
        for section in ("steps", "augment"):
            for i, spec in enumerate(getattr(data, section)):
                if spec.name not in IMAGE_STEPS:
                    problems.append(
                        f"data.{section}[{i}]: '{spec.name}' is a text step; {family} data"
                        " takes image steps"
                    )
        names = [s.name for s in data.steps]
        if "normalize" in names[:-1]:
            problems.append(
                f"data.steps[{names.index('normalize')}]: normalize must be the last step"
                " (it scales pixels as batches are built)"
            )
        problems += [
            f"data.augment[{i}]: normalize belongs at the end of data.steps"
            for i, s in enumerate(data.augment)
            if s.name == "normalize"
        ]
        defaults = DataSpec(source=data.source)  # keys at their defaults are fine (lock files)
        problems += [
            f"data.{key}: not used by image families ({family})"
            for key in ("tokenizer", "max_length")
            if getattr(data, key) != getattr(defaults, key)
        ]
        return problems + cls.section_problems(recipe)

    @classmethod
    def hash_inputs(cls, recipe: Recipe, scheme: int) -> dict[str, Any]:
        from fine_tune_cli.data.images import image_hash_inputs

        return image_hash_inputs(recipe, scheme)

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        from fine_tune_cli.data.images import encode_images

        return encode_images(recipe, splits, labels, out)

    @classmethod
    def build_context(cls, recipe: Recipe, prepared: Any) -> BuildContext:
        from fine_tune_cli.models.registry import BuildContext

        return BuildContext(
            label_names=tuple(prepared.label_names),
            image_size=prepared.manifest["images"]["size"],
            num_channels=prepared.manifest["images"]["channels"],
            init_dir=_init_dir(recipe),
        )

    @classmethod
    def sample_context(
        cls, recipe: Recipe, sample: list[Record], label_names: tuple[str, ...]
    ) -> BuildContext:
        from fine_tune_cli.data.images import sample_geometry
        from fine_tune_cli.models.registry import BuildContext

        side, channels = sample_geometry(recipe, sample)
        return BuildContext(
            label_names=label_names,
            image_size=side,
            num_channels=channels,
            init_dir=_init_dir(recipe),
        )

    @classmethod
    def client_processor(cls, model_dir: Path, prepared: Any) -> Any:
        return prepared.processor  # the image processor (preprocessor_config.json)

    @classmethod
    def saved_tokenizer(cls, root: Path) -> Any:
        return None  # image models carry preprocessor_config.json instead

    @classmethod
    def read_source(cls, source: Any, need_label: bool) -> list[Record]:
        """The recipe's source records (decoded images; labels when `need_label`)."""
        from fine_tune_cli.data.sources import read_source

        return read_source(source, need_label=need_label, images=True)
