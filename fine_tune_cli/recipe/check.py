"""Registry checks, run after schema validation: the names a recipe gives (model family,
task and size, pipeline steps and their parameters) must be registered, and the
cross-section rules that depend on what a family or a step is must hold.

Kept apart from `recipe.schema` so the schema imports no plugin package (models/, data/,
engine/) and plugins may import the schema. Registries are imported inside the functions:
they are only needed once a recipe is validated. Problems come back in the shape of
pydantic's errors (`loc`, `type`, `msg`) so `recipe.messages` words them all alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from fine_tune_cli.recipe.messages import describe_error
from fine_tune_cli.recipe.schema import (
    IMAGE_FORMATS,
    TEXT_FORMATS,
    DataSpec,
    MIMSpec,
    ModelSpec,
    Recipe,
    StepSpec,
)
from fine_tune_cli.registry import did_you_mean

Problem = dict[str, Any]


def _problem(loc: tuple[Any, ...], msg: str) -> Problem:
    return {"type": "value_error", "loc": loc, "msg": msg}


def _valid(model: type[BaseModel], value: Any) -> BaseModel | None:
    """`value` validated as `model` alone, or None when the schema already rejects it
    (then the schema's own errors say why, as they did when these checks were validators)."""
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def section_problems(tree: dict[str, Any]) -> list[Problem]:
    """Registry problems of every section of `tree` that passes the schema on its own, so
    they are reported together with the schema errors of the other sections."""
    problems: list[Problem] = []
    model = _valid(ModelSpec, tree.get("model"))
    if isinstance(model, ModelSpec) and (msg := _model_problem(model)):
        problems.append(_problem(("model",), msg))
    data = tree.get("data")
    for section in ("steps", "augment"):
        specs = data.get(section) if isinstance(data, dict) else None
        for i, value in enumerate(specs if isinstance(specs, list | tuple) else ()):
            step = _valid(StepSpec, value)
            if isinstance(step, StepSpec) and (msg := _step_problem(step)):
                problems.append(_problem(("data", section, i), msg))
    return problems


def _model_problem(spec: ModelSpec) -> str | None:
    """Family, task and size are registered; image-only keys on image families only."""
    from fine_tune_cli.models import FAMILIES, MODELS

    if spec.family not in FAMILIES:
        return f"family: {FAMILIES.unknown_message(spec.family)}"
    if f"{spec.family}/{spec.task}" not in MODELS:
        tasks = [n.split("/")[1] for n in MODELS if n.startswith(spec.family + "/")]
        return (
            f"task: {spec.family} has no task '{spec.task}'{did_you_mean(spec.task, tasks)}"
            f" (choose one of: {', '.join(tasks)})"
        )
    presets = FAMILIES.get(spec.family).presets
    if spec.size not in presets:
        return (
            f"size: unknown {spec.family} size '{spec.size}'{did_you_mean(spec.size, presets)}"
            f" (choose one of: {', '.join(presets)})"
        )
    if FAMILIES.get(spec.family).tokenizer_kind is not None:  # a text family
        unused = [k for k in ("image_size", "patch_size") if getattr(spec, k) is not None]
        if unused:
            return f"{', '.join(unused)}: only used by image families (vit)"
    patch = spec.patch_size or (None if spec.init_from else presets[spec.size].get("patch_size"))
    if spec.image_size and patch and spec.image_size % patch:
        return (
            f"image_size: {spec.image_size} is not divisible by the patch size {patch}"
            " (set model.image_size or model.patch_size)"
        )
    return None


def _step_problem(spec: StepSpec) -> str | None:
    """The step is registered and its parameters fit its parameter model."""
    from fine_tune_cli.data.steps import STEPS

    if spec.name not in STEPS:
        return STEPS.unknown_message(spec.name)
    params = STEPS.get(spec.name).params
    try:
        params(**spec.params)
    except ValidationError as exc:
        return "; ".join(
            describe_error(err, params, prefix=f"{spec.name}.") for err in exc.errors()
        )
    return None


def recipe_problems(recipe: Recipe) -> list[Problem]:
    """Rules across sections, checked once every section is valid: the first of the task
    rules, else every family/step rule at once (one line, as one validator gave them)."""
    task = recipe.model.task
    first = None
    if task == "classification" and not recipe.data.source.label:
        first = "data.source.label: classification needs a label column"
    elif recipe.train.distill and task != "classification":
        first = "train.distill: distillation is for classification tasks"
    elif recipe.data.split.by_group and not recipe.data.source.group:
        first = "data.split.by_group: set data.source.group to the group column"
    elif task == "mlm_nsp" and not recipe.data.source.group:
        first = (
            "data.source.group: mlm_nsp builds sentence pairs within documents; name the"
            " document column (e.g. book)"
        )
    elif recipe.model.family == "gpt2" and recipe.data.tokenizer.kind == "wordpiece":
        first = "data.tokenizer.kind: gpt2 needs a bpe tokenizer, not wordpiece"
    problems = [first] if first else _image_problems(recipe)
    return [_problem((), "; ".join(problems))] if problems else []


def _image_problems(recipe: Recipe) -> list[str]:
    """Image families (vit) read image sources and take image steps; text families
    neither. Also the keys that only image recipes or the mim task use."""
    from fine_tune_cli.data.image_steps import IMAGE_STEPS
    from fine_tune_cli.models import FAMILIES

    model, data = recipe.model, recipe.data
    family = FAMILIES.get(model.family)
    images = family.tokenizer_kind is None
    fmt = data.source.format
    problems = []
    if images and fmt in TEXT_FORMATS:
        problems.append(
            f"data.source.format: {model.family} reads images ({', '.join(IMAGE_FORMATS)});"
            " a csv/jsonl list of image files is format image_manifest"
        )
    if not images and fmt in IMAGE_FORMATS:
        problems.append(
            f"data.source.format: '{fmt}' is an image source; {model.family} reads text"
            f" ({', '.join(TEXT_FORMATS)})"
        )
    for section in ("steps", "augment"):
        for i, spec in enumerate(getattr(data, section)):
            if images != (spec.name in IMAGE_STEPS):
                problems.append(
                    f"data.{section}[{i}]: '{spec.name}' is {'a text' if images else 'an image'}"
                    f" step; {model.family} data takes {'image' if images else 'text'} steps"
                )
    if images:
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
            f"data.{key}: not used by image families ({model.family})"
            for key in ("tokenizer", "max_length")
            if getattr(data, key) != getattr(defaults, key)
        ]
    if recipe.mim != MIMSpec() and model.task != "mim":
        problems.append(f"mim: only used by task mim (task is '{model.task}')")
    block = recipe.mim.mask_patch_size
    patch = model.patch_size or (
        None if model.init_from else family.presets[model.size].get("patch_size")
    )
    if model.task == "mim" and block and patch and block % patch:
        problems.append(f"mim.mask_patch_size: {block} is not a multiple of the patch size {patch}")
    if model.task == "mim" and block and model.image_size and model.image_size % block:
        problems.append(
            f"mim.mask_patch_size: image_size {model.image_size} is not divisible by {block}"
        )
    return problems
