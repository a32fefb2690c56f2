"""Model registry: families (size presets, tokenizer kind) and family/task builders.

Registration is import-light (no torch/transformers at import) so the recipe schema can
validate names without slowing `ftc --help`; builders import transformers lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fine_tune_cli.errors import RecipeError
from fine_tune_cli.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from fine_tune_cli.recipe import ModelSpec


@dataclass(frozen=True)
class Family:
    name: str
    presets: dict[str, dict[str, int]]
    tokenizer_kind: str | None  # trained tokenizer kind; None for image families
    modality: Literal["text", "image"]  # picks the task of a recipe's model.task
    # Top-level modules of the family's task heads (layers on top of the pretrained body):
    # they get optim.head_lr and stay dense when pruning.
    head_modules: tuple[str, ...]
    # The position whose hidden state a sequence classifier's head reads: the first ([CLS],
    # ViT's class token) or the last non-pad token (GPT-2). Attention rollout starts there.
    pooled_token: Literal["first", "last"] = "first"


@dataclass(frozen=True)
class BuildContext:
    """What a builder needs beyond the recipe's model spec (known after prepare)."""

    vocab_size: int | None = None
    label_names: tuple[str, ...] = ()
    max_length: int = 128
    pad_token_id: int | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    image_size: int | None = None
    num_channels: int | None = None
    init_dir: Path | None = None  # resolved HF model dir to start from


Builder = Callable[["ModelSpec", BuildContext], "nn.Module"]


@dataclass(frozen=True)
class ModelEntry:
    family: str
    task: str
    build: Builder
    auto_class: str  # transformers Auto class that loads an exported HF dir


FAMILIES: Registry[Family] = Registry("model family")
MODELS: Registry[ModelEntry] = Registry("model")


def register_family(family: Family) -> None:
    FAMILIES.add(family.name, family)


def register_model(family: str, task: str, auto_class: str) -> Callable[[Builder], Builder]:
    def decorate(fn: Builder) -> Builder:
        MODELS.add(f"{family}/{task}", ModelEntry(family, task, fn, auto_class))
        return fn

    return decorate


def preset_config(spec: ModelSpec) -> dict[str, int | float]:
    """The size preset with the recipe's explicit overrides applied."""
    values: dict[str, int | float] = dict(FAMILIES.get(spec.family).presets[spec.size])
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "dropout"):
        value = getattr(spec, key)
        if value is not None:
            values[key] = value
    if values["hidden_size"] % values["num_heads"]:
        raise RecipeError(
            f"model: hidden_size {values['hidden_size']} is not divisible by"
            f" num_heads {values['num_heads']}"
        )
    return values


def resolve_init_dir(path: str | Path) -> Path:
    """An HF model dir to load from: a model dir, one of our run dirs, a checkpoint, or a
    Hugging Face Hub id (`org/name[@rev]`) resolved to its snapshot in the local cache."""
    from fine_tune_cli.hub import local_path, remote_code_problem, weights_problem
    from fine_tune_cli.runs import COMPLETE, MANIFEST, MODEL_CONFIG, inspect_path

    path = local_path(str(path), "model.init_from")
    info = inspect_path(path)
    if _half_written(path, info.kind):
        raise RecipeError(
            f"model.init_from: {path} is a checkpoint without {COMPLETE} (half-written: its"
            " writer stopped mid-save); name a complete checkpoints/step-* or the run's best/"
        )
    found = path if (path / MODEL_CONFIG).is_file() else info.best or info.latest
    if found is None:
        raise RecipeError(
            f"model.init_from: {path} holds no model (expected config.json, best/ or"
            " complete checkpoints/step-*)"
        )
    problem = remote_code_problem(found) or weights_problem(found)
    if problem:
        raise RecipeError(f"model.init_from: {found}: {problem}")
    if (found / MANIFEST).is_file():  # one of ours (best/, a checkpoint, an export)
        from fine_tune_cli.manifest import verify_manifest

        verify_manifest(found)  # a changed or corrupt file: exit 6 before it is loaded
    return found


def _half_written(path: Path, kind: str) -> bool:
    """A checkpoint dir (or a checkpoint's temp dir) that never got its COMPLETE marker."""
    from fine_tune_cli.runs import CHECKPOINTS, COMPLETE, STEP_PREFIX

    in_checkpoints = path.parent.name == CHECKPOINTS and path.name.lstrip(".").startswith(
        ("tmp-" + STEP_PREFIX, STEP_PREFIX)
    )
    return (kind == "checkpoint" or in_checkpoints) and not (path / COMPLETE).is_file()


def label_kwargs(ctx: BuildContext) -> dict[str, object]:
    names = list(ctx.label_names)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def load_pretrained(cls, ctx: BuildContext, **config_overrides: object) -> nn.Module:
    """Load weights from a local dir; remember what was loaded/new/dropped for the log."""
    model, info = cls.from_pretrained(
        str(ctx.init_dir),
        local_files_only=True,
        use_safetensors=True,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **config_overrides,
    )
    missing = set(info.get("missing_keys", ()))
    info["loaded_keys"] = [k for k in model.state_dict() if k not in missing]
    model.ftc_loading_info = info
    return model


def build_or_load(
    cls: Any, spec: ModelSpec, ctx: BuildContext, make_config: Any, **config: object
) -> nn.Module:
    """`cls` from `init_from` when the recipe names one, else fresh from the size preset."""
    if ctx.init_dir is not None:
        return load_pretrained(cls, ctx, **config)
    return cls(make_config(spec, ctx, **config))


def get_model(spec: ModelSpec) -> ModelEntry:
    return MODELS.get(f"{spec.family}/{spec.task}")


def build_model(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    return get_model(spec).build(spec, ctx)


def load_info_lines(info: dict[str, Any]) -> list[str]:
    """Human lines saying which weights were loaded, newly initialised or dropped."""
    lines = []
    if info.get("loaded_keys"):
        lines.append(f"loaded from the checkpoint: {_summarise(info['loaded_keys'])}")
    if info.get("missing_keys"):
        lines.append(f"newly initialised: {_summarise(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        lines.append(f"dropped (not used by this task): {_summarise(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        lines.append(f"re-initialised (shape changed): {_summarise(info['mismatched_keys'])}")
    return lines


def _summarise(keys: list[Any]) -> str:
    names = [k[0] if isinstance(k, tuple) else str(k) for k in keys]
    shown = ", ".join(names[:6])
    return f"{len(names)} tensors ({shown}{', ...' if len(names) > 6 else ''})"
