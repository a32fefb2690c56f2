"""ftc recipes list | show RECIPE | validate RECIPE [key=value ...] | copy NAME [DEST]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, OVERRIDES_ARG, RECIPE_ARG, run_command

app = typer.Typer(help="List, show, validate and copy recipes.", no_args_is_help=True)


def _summary(path: Any) -> str:
    """A recipe's one-line description: its `description` key or first comment line."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        data = {}
    if isinstance(data, dict) and data.get("description"):
        return str(data["description"])
    for line in text.splitlines():
        if line.startswith("#") and line.strip("# ").strip():
            return line.strip("# ").strip()
    return ""


@app.command("list")
def list_recipes(json_mode: bool = JSON_OPTION) -> None:
    """List the built-in recipes (train one by its name).

    \b
    Examples:
      ftc recipes list
      ftc recipes list --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.recipe import builtin_recipes

        found = builtin_recipes()
        return {
            "recipes": [
                {"name": name, "path": str(path), "description": _summary(path)}
                for name, path in found.items()
            ]
        }

    def human(p: dict[str, Any]) -> None:
        width = max((len(r["name"]) for r in p["recipes"]), default=4)
        for r in p["recipes"]:
            print(f"{r['name'].ljust(width)}  {r['description']}")

    run_command("recipes list", json_mode, body, human)


@app.command("show")
def show(
    name: str = RECIPE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Print the fully resolved recipe (extends, overrides and defaults applied).

    \b
    Examples:
      ftc recipes show demo
      ftc recipes show my-recipe.yaml optim.lr=1e-4
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.recipe import dump_recipe, load_recipe

        loaded = load_recipe(name, overrides or [])
        return {
            "recipe": loaded.recipe.resolved(),
            "yaml": dump_recipe(loaded.recipe),
            "source": loaded.source,
        }

    run_command("recipes show", json_mode, body, lambda p: print(p["yaml"], end=""))


@app.command("validate")
def validate(
    recipe: str = RECIPE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Check a recipe and its data without training (exit 2 recipe, 3 data).

    \b
    Examples:
      ftc recipes validate my-recipe.yaml
      ftc recipes validate demo data.max_length=256 --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.checks import check_recipe
        from fine_tune_cli.recipe import load_recipe

        return check_recipe(load_recipe(recipe, overrides or []), build_model=True)

    def human(p: dict[str, Any]) -> None:
        from fine_tune_cli.checks import print_check

        print_check(p)

    run_command("recipes validate", json_mode, body, human)


@app.command("copy")
def copy(
    name: str = typer.Argument(
        ..., metavar="NAME", help="Built-in recipe name (or a recipe file) to copy."
    ),
    dest: str | None = typer.Argument(
        None, metavar="DEST", help="File (or existing folder) to write; default ./NAME.yaml."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DEST file."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Copy a recipe into your own repo as ONE file to edit: its `extends` chain merged,
    bundled-data paths made absolute, ${...} interpolations kept (resolved at train time).

    \b
    Examples:
      ftc recipes copy demo my-spam.yaml && ftc train my-spam.yaml
      ftc recipes copy bert-spam recipes/
    """

    def body() -> dict[str, Any]:
        import os
        from pathlib import Path

        from fine_tune_cli.errors import ConflictError, OutputError
        from fine_tune_cli.recipe import flatten_recipe

        source, chain, text = flatten_recipe(name)
        target = Path(dest) if dest else Path(f"{source.stem}.yaml")
        if target.is_dir() or (dest and dest.endswith(("/", os.sep))):  # a folder, as cp reads it
            target = target / f"{source.stem}.yaml"
        if target.exists() and not overwrite:
            raise ConflictError(f"{target}: already exists (pass --overwrite to replace it)")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{target}: cannot write the recipe ({exc.strerror})") from None
        return {
            "outputs": {"recipe": str(target)},
            "source": str(source),
            "extends": [str(p) for p in chain[1:]],
        }

    def human(p: dict[str, Any]) -> None:
        print(f"wrote {p['outputs']['recipe']} (from {p['source']}, extends merged)")
        print(f"  edit it, then: ftc train {p['outputs']['recipe']}")

    run_command("recipes copy", json_mode, body, human)
