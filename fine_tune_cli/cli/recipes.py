"""ftc recipes list | show NAME | validate RECIPE [key=value ...]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, OVERRIDES_ARG, run_command

app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)


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
    """List the built-in recipes."""

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
    name: str = typer.Argument(..., help="Recipe file or built-in name."),
    overrides: list[str] | None = OVERRIDES_ARG,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Print the fully resolved recipe (extends, overrides and defaults applied)."""

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
    recipe: str = typer.Argument(..., help="Recipe file or built-in name."),
    overrides: list[str] | None = OVERRIDES_ARG,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Check a recipe and its data without training (exit 2 recipe, 3 data)."""

    def body() -> dict[str, Any]:
        from fine_tune_cli.checks import check_recipe
        from fine_tune_cli.recipe import load_recipe

        return check_recipe(load_recipe(recipe, overrides or []), build_model=True)

    def human(p: dict[str, Any]) -> None:
        from fine_tune_cli.checks import print_check

        print_check(p)

    run_command("recipes validate", json_mode, body, human)
