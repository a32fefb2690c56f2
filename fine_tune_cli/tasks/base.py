"""The task protocol: everything that differs between objectives, in one object.

A task owns its modality, whether it needs labels, its prepare encoder, the context its
model builders need, collate / loss / evaluate, its primary metric and whether it can be
exported and predicted. Code outside `tasks/` asks the task (`task_for(recipe.model)`)
instead of comparing task names or guessing the modality from the data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

from fine_tune_cli.registry import Registry

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.models.registry import BuildContext
    from fine_tune_cli.recipe import ModelSpec, Recipe

Modality = Literal["text", "image"]
Autocast = Callable[[], Any]  # Precision.autocast: a context manager factory


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # full metrics (per-class etc.); flat scalars via flat_metrics
    details: dict[str, Any] = field(default_factory=dict)  # e.g. probs/labels for reports


@dataclass(frozen=True)
class Sampling:
    """How `generate()` continues a prompt (eval report samples, `ftc generate`)."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy decoding
    top_k: int | None = None  # None: no top-k cut
    top_p: float | None = None  # None or 1: no nucleus cut
    num_return_sequences: int = 1

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass
class Predictions:
    """What `ftc predict` writes (rows) and summarises (counts per predicted label)."""

    rows: list[dict[str, Any]]
    label_counts: dict[str, int]


class Task(Protocol):
    """What the engine, prepare, eval, export and predict may ask of a task.

    Class attributes and class methods describe the task before any data exists (recipe
    checks, prepare, dry runs); an instance (`from_recipe`) is what one run trains with.
    Optional capabilities are explicit flags, never found by `hasattr`.
    """

    name: ClassVar[str]  # registry key: the file name under tasks/
    recipe_task: ClassVar[str]  # the recipe's model.task value (MODELS["family/<this>"])
    modality: ClassVar[Modality]  # which families it pairs with (Family.modality)
    needs_labels: ClassVar[bool]  # prepare requires data.source.label
    primary_metric: ClassVar[str]  # the headline metric (train.best_metric's natural choice)
    unit: ClassVar[str]  # what `units(batch)` counts ("samples", "tokens", ...)
    not_exportable: ClassVar[str | None]  # why `ftc export` refuses it; None: exportable
    predictable: ClassVar[bool]  # `ftc predict` labels new inputs with it
    explainable: ClassVar[bool]  # `ftc explain` attributes its predictions to inputs
    evaluates_new_files: ClassVar[bool]  # `ftc eval --data FILE` is supported
    generates_samples: ClassVar[bool]  # eval reports show samples(); `ftc generate` works
    distillable: ClassVar[bool]  # train.distill applies (the task has logits and labels)
    encoder_revision: ClassVar[int | None]  # bump when encode() output changes (data hash)
    augments_batches: ClassVar[bool]  # data.augment runs in collate (per epoch), not prepare

    recipe_sections: ClassVar[tuple[str, ...]]  # task-only recipe sections it reads ("mim")

    # ---- before data: recipe checks, prepare, dry runs ---------------------------------
    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        """The task's own rules (a label column, a document column), one line each."""
        ...

    @classmethod
    def modality_problems(cls, recipe: Recipe) -> list[str]:
        """Source format, steps and sections that do not fit the task's data, one line
        each (e.g. a text step on images, a mim section on a classifier)."""
        ...

    @classmethod
    def hash_inputs(cls, recipe: Recipe, scheme: int) -> dict[str, Any]:
        """Everything that determines the prepared data of this recipe."""
        ...

    @classmethod
    def read_source(cls, source: Any, need_label: bool) -> list[Record]:
        """The records of a data.source (prepare, dry runs, eval --data)."""
        ...

    @classmethod
    def stratify_labels(cls, records: list[Record]) -> list[Any] | None:
        """Per-record values splits are stratified by (None: plain random splits)."""
        ...

    @classmethod
    def label_names(cls, recipe: Recipe, records: list[Record]) -> list[str]:
        """The label set prepare records in the manifest ([] for unlabelled tasks)."""
        ...

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        """The prepare encoder: split records -> arrays in `out`; manifest entries back."""
        ...

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        """How prepare streams the corpus with flat memory, sharded and in parallel
        (data/stream.py); None: `read_source` + `encode` on one list of records."""
        ...

    @classmethod
    def build_context(cls, recipe: Recipe, prepared: Any) -> BuildContext:
        """What the family's builder needs beyond the model spec (known after prepare)."""
        ...

    @classmethod
    def sample_context(
        cls, recipe: Recipe, sample: list[Record], label_names: tuple[str, ...]
    ) -> BuildContext:
        """The build context from a sample of the source (dry runs: no prepare)."""
        ...

    @classmethod
    def client_processor(cls, model_dir: Path, prepared: Any) -> Any:
        """The tokenizer or image processor an exported dir carries for standard clients."""
        ...

    @classmethod
    def saved_tokenizer(cls, root: Path) -> Any:
        """The tokenizer saved in a model dir (None when the modality has none)."""
        ...

    @classmethod
    def split_from_file(cls, recipe: Recipe, prepared: Any, path: Path) -> tuple[Any, list[str]]:
        """`ftc eval --data PATH`: the file as a labelled split (+ texts for the report)."""
        ...

    @classmethod
    def predict(cls, loaded: Any, source: str) -> Predictions:
        """`ftc predict`: one jsonl row per input, in input order (only when predictable;
        `loaded` is export/load.py's LoadedModel)."""
        ...

    @classmethod
    def explainer(cls, target: Any) -> Any:
        """`ftc explain` / eval.explain: the modality's side of attribution (inputs, the pad
        baseline, per-word or per-patch scores; tasks/explainers.py) for an eval target
        (only when explainable)."""
        ...

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> TrainingTask:
        """The object one run trains and evaluates with."""
        ...

    @classmethod
    def continue_text(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        prompt: str,
        sampling: Sampling,
        seed: int,
        streamer: Any = None,
    ) -> list[str]:
        """`ftc generate`: continuations of a prompt (only when generates_samples)."""
        ...

    @classmethod
    def baseline(
        cls, recipe: Recipe, prepared: Any, split: PreparedSplit, texts: list[str]
    ) -> dict[str, Any]:
        """`ftc eval`: a classic scikit-learn model fitted on the prepared train split and
        scored on `split` (`baseline_accuracy`, `baseline_f1_macro`, `baseline`); {} for
        tasks without one."""
        ...


class TrainingTask(Protocol):
    """The per-run object the training loop, eval, export parity and predict call."""

    unit: str
    primary_metric: str  # the metric export parity gates on
    not_exportable: str | None
    generates_samples: bool
    pads_batches: bool  # batches padded to their longest sample (train.batching applies)
    augments_batches: bool  # data.augment runs in collate (train.workers auto counts on it)

    def set_epoch(self, epoch: int) -> None:
        """Called at each epoch start (on-the-fly augmentation is seeded per epoch)."""
        ...

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]: ...

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms the batch holds (weights micro-batches in accumulation)."""
        ...

    def tokens(self, batch: dict[str, torch.Tensor]) -> int: ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of the micro-batch (the loop re-weights for accumulation)."""
        ...

    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult: ...

    def samples(
        self, model: torch.nn.Module, split: PreparedSplit, device: torch.device
    ) -> list[dict[str, Any]]:
        """Generated examples for the report (only when generates_samples)."""
        ...


TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task under its `name`."""
    TASKS.add(cls.name, cls)
    return cls


def task_for(model: ModelSpec) -> type[Task]:
    """The task a recipe's model section trains: its `task` for its family's modality."""
    from fine_tune_cli.errors import RecipeError
    from fine_tune_cli.models.registry import FAMILIES

    modality = FAMILIES.get(model.family).modality
    for name in TASKS:
        task = TASKS.get(name)
        if task.recipe_task == model.task and task.modality == modality:
            return task
    choices = sorted({TASKS.get(n).recipe_task for n in TASKS if TASKS.get(n).modality == modality})
    raise RecipeError(
        f"model.task: no {modality} task '{model.task}' (choose one of: {', '.join(choices)})"
    )


def build_task(recipe: Recipe, prepared: Any) -> TrainingTask:
    """The run's task object for a recipe and its prepared data."""
    return task_for(recipe.model).from_recipe(recipe, prepared)


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.no_grad()` as a decorator that imports torch only when called: recipe checks
    ask the registered tasks for their rules, and importing torch costs seconds."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def batches_in_eval_mode(
    task: TrainingTask,
    model: torch.nn.Module,
    split: PreparedSplit,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(indices, batch on the device) for every eval batch of `split`, with the model in
    eval mode meanwhile: every task's evaluate walks the split this way."""
    from fine_tune_cli.console import Progress
    from fine_tune_cli.data.batching import eval_batches
    from fine_tune_cli.engine.runtime import to_device

    was_training = model.training
    model.eval()
    batches = eval_batches(split, batch_size)
    try:
        with Progress(len(batches), unit="batch", name=f"eval {split.name}") as progress:
            for idx in batches:
                yield idx, to_device(task.collate(split, idx), device)
                progress.advance(counts={"samples": len(idx)})
    finally:
        model.train(was_training)
