"""Registry checks, run after schema validation: the names a recipe gives (model family,
task and size, pipeline steps and their parameters) must be registered, and the
cross-section rules of its task (tasks/: labels, documents, modality) must hold.

Kept apart from `recipe.schema` so the schema imports no plugin package (models/,
tasks/, data/, engine/) and plugins may import the schema. Registries are imported inside
the functions: they are only needed once a recipe is validated. Problems come back in the
shape of pydantic's errors (`loc`, `type`, `msg`) so `recipe.messages` words them all alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from fine_tune_cli.recipe.messages import describe_error
from fine_tune_cli.recipe.schema import ModelSpec, Recipe, StepSpec
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
    """Family, task and size are registered; image_size/patch_size only on families
    whose presets cut images into patches."""
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
    if "patch_size" not in presets[spec.size]:  # the family does not cut images into patches
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
    """Rules across sections, checked once every section is valid: the task's own rules
    and the data/tokenizer rules, else (when those hold) the rules of the task's modality;
    all of them on one line, as one validator gave them."""
    from fine_tune_cli.models import FAMILIES
    from fine_tune_cli.tasks import task_for

    task = task_for(recipe.model)
    family = FAMILIES.get(recipe.model.family)
    rules = list(task.recipe_problems(recipe))  # e.g. a label column, a document column
    if recipe.train.distill and not task.distillable:
        rules.append("train.distill: distillation is for classification tasks")
    if recipe.data.split.by_group and not recipe.data.source.group:
        rules.append("data.split.by_group: set data.source.group to the group column")
    if family.tokenizer_kind == "bpe" and recipe.data.tokenizer.kind == "wordpiece":
        rules.append(f"data.tokenizer.kind: {family.name} needs a bpe tokenizer, not wordpiece")
    problems = rules or task.modality_problems(recipe)
    return [_problem((), "; ".join(problems))] if problems else []
