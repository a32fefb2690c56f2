"""SPACE.yaml: the search space of a sweep, validated like a recipe.

```yaml
metric: f1_macro            # a validation metric of the recipe's task
direction: maximize         # or minimize
trials: 8                   # --trials overrides
timeout: 600                # optional, seconds: no new trial starts after it
sampler: tpe                # tpe | random | grid
seed: 0                     # fixes the sampler
space:
  optim.lr: {log_uniform: [1.0e-4, 3.0e-3]}
  train.batch_size: {choice: [16, 32]}
  schedule.warmup_ratio: {uniform: [0.0, 0.2]}
```
Every key of `space` must be a value key of the recipe schema, and every bound and choice
must make a valid recipe; all problems are reported at once, each naming the file.
"""

from __future__ import annotations

import builtins
import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from fine_tune_cli.errors import RecipeError
from fine_tune_cli.recipe.load import resolve_named_file, set_dotted
from fine_tune_cli.recipe.messages import describe_error, fields_at, models_in, untag
from fine_tune_cli.recipe.schema import Recipe, Strict
from fine_tune_cli.registry import did_you_mean

SPACES_DIR = "sweeps"  # bundled example spaces: recipes/sweeps/<name>.yaml
Scalar = str | int | float | bool | None
KINDS = ("log_uniform", "uniform", "int", "choice")


class Distribution(Strict):
    """One searched key: exactly one of the four kinds."""

    log_uniform: tuple[float, float] | None = Field(
        None, description="[lo, hi], 0 < lo < hi: sampled uniformly in log space."
    )
    uniform: tuple[float, float] | None = Field(None, description="[lo, hi], lo < hi.")
    int: tuple[builtins.int, builtins.int] | None = Field(
        None, description="[lo, hi], both included."
    )
    choice: tuple[Scalar, ...] | None = Field(
        None, description="Values to choose from (numbers, strings, booleans, null)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind == "choice":
            assert self.choice is not None
            if not self.choice:
                raise ValueError("choice: needs at least one value")
            if len(set(map(repr, self.choice))) != len(self.choice):
                raise ValueError("choice: values repeat")
            return self
        lo, hi = getattr(self, kind)
        if kind == "int" and lo > hi:
            raise ValueError(f"int: lower bound {lo} is above the upper bound {hi}")
        if kind != "int" and not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{kind}: expected finite [lo, hi] with lo < hi (got [{lo}, {hi}])")
        if kind == "log_uniform" and lo <= 0:
            raise ValueError(f"log_uniform: lower bound must be > 0 (got {lo})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def endpoints(self) -> list[Any]:
        """Values that must each make a valid recipe (bounds, or every choice)."""
        value = getattr(self, self.kind)
        return list(value)

    def grid(self) -> list[Any] | None:
        """The values a grid sweep visits (None: a continuous range has no grid)."""
        if self.choice is not None:
            return list(self.choice)
        if self.int is not None:
            return list(range(self.int[0], self.int[1] + 1))
        return None

    def contains(self, value: Any) -> bool:
        """Whether the recipe's own value can be trial 0's value of this key."""
        if self.choice is not None:
            return any(type(value) is type(c) and value == c for c in self.choice)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.int is not None:
            return isinstance(value, int)
        return value > 0 if self.log_uniform is not None else True

    def describe(self) -> str:
        value = getattr(self, self.kind)
        return f"{self.kind} {list(value)}"


class PrunerSpec(Strict):
    """Median pruning of trials whose validation metric trails the others'."""

    name: Literal["median", "none"] = Field(
        "median", description="median: stop a trial below the median of earlier ones."
    )
    startup_trials: int = Field(
        2, ge=0, description="Finished trials before any trial can be pruned."
    )
    warmup_evals: int = Field(
        1, ge=0, description="Validation evals of every trial that are never pruned."
    )


class SpaceFile(Strict):
    metric: str = Field(description="Validation metric to optimize (f1_macro, loss, ...).")
    direction: Literal["maximize", "minimize"] = Field(description="maximize or minimize.")
    trials: int = Field(20, ge=1, description="Trials in the study, trial 0 included.")
    timeout: float | None = Field(
        None, gt=0, description="Seconds after which no new trial starts (per invocation)."
    )
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe, random or grid.")
    seed: int | None = Field(None, description="Sampler seed (reproducible proposals).")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    space: dict[str, Distribution] = Field(description="Dotted recipe key -> distribution.")

    @model_validator(mode="after")
    def _grid_needs_values(self) -> SpaceFile:
        if not self.space:
            raise ValueError("space: name at least one recipe key to search")
        if self.sampler == "grid":
            ranges = [k for k, d in self.space.items() if d.grid() is None]
            if ranges:
                raise ValueError(
                    f"sampler: grid needs choice or int keys; {', '.join(ranges)}"
                    " is a continuous range (use tpe or random)"
                )
        return self

    def best_mode(self) -> str:
        return "max" if self.direction == "maximize" else "min"


class Space(BaseModel):
    """A validated SPACE file and where it came from."""

    spec: SpaceFile
    path: Path
    text: str  # as read: copied into the sweep dir


def resolve_space_path(ref: str) -> Path:
    """A path, else a bundled example space by short name (recipes/sweeps/NAME.yaml)."""
    from fine_tune_cli.recipe import RECIPES_DIR

    bundled = {p.stem: p for p in sorted((RECIPES_DIR / SPACES_DIR).glob("*.yaml"))}
    return resolve_named_file(ref, bundled, "SPACE", "bundled space", "bundled")


def load_space(ref: str, raw_recipe: dict[str, Any]) -> Space:
    """Read and check SPACE against the recipe tree it searches (all problems at once)."""
    path = resolve_space_path(ref)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read SPACE file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: SPACE file is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a SPACE file must be a YAML mapping (metric, space, ...)")
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as exc:
        errors = untag(list(exc.errors()), SpaceFile)
        raise RecipeError([f"{path}: {describe_error(e, SpaceFile)}" for e in errors]) from None
    problems = [f"{path}: space.{p}" for p in space_problems(spec, raw_recipe)]
    if problems:
        raise RecipeError(problems)
    return Space(spec=spec, path=path, text=text)


def recipe_key_problem(key: str) -> str | None:
    """Why `key` is not a value key of the recipe schema (None: it is one)."""
    parts = tuple(key.split("."))
    current: list[type[BaseModel]] = [Recipe]
    for depth, part in enumerate(parts):
        names = fields_at(Recipe, parts[: depth + 1])
        if part not in names:
            prefix = ".".join(parts[:depth])
            known = [f"{prefix}.{n}" if prefix else n for n in names]
            return f"{key}: not a recipe key{did_you_mean(key, known)}"
        fields = {k: f for m in current for k, f in m.model_fields.items()}
        current = models_in(fields[part].annotation)
    if current:
        return f"{key}: is a recipe section; search one of its keys (e.g. {key}.<key>)"
    return None


def space_problems(spec: SpaceFile, raw_recipe: dict[str, Any]) -> list[str]:
    """Keys that are not recipe keys, and bounds or choices that make an invalid recipe."""
    from fine_tune_cli.recipe import validate_tree

    problems = []
    for key, dist in spec.space.items():
        problem = recipe_key_problem(key)
        if problem:
            problems.append(problem)
            continue
        for value in dist.endpoints():
            tree = copy.deepcopy(raw_recipe)
            set_dotted(tree, key, value)
            try:
                validate_tree(tree)
            except RecipeError as exc:
                why = "; ".join(p.partition(": ")[2] for p in exc.problems)
                problems.append(
                    f"{key}: {dist.kind} value {value!r} makes the recipe invalid: {why}"
                )
                break
    return problems
