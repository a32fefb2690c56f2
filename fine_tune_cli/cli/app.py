"""`ftc`: assembles the commands and turns framework usage errors into exit code 2."""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import typer
from typer.exceptions import TyperException

from fine_tune_cli.cli import eval as eval_cmd
from fine_tune_cli.cli import explain as explain_cmd
from fine_tune_cli.cli import (
    export,
    generate,
    predict,
    prepare,
    recipes,
    runs,
    sweep,
    train,
    verify,
)
from fine_tune_cli.cli.common import emit_json, error_payload
from fine_tune_cli.hub import downloads_allowed


def _argument_type_label(self: typer.core.TyperArgument, ctx: object) -> str | None:
    """An argument with a metavar (RECIPE, KEY=VALUE) already says what to pass; typer would
    append its Python type too ("RECIPE <str>"), which reads like a bug in --help."""
    return None if self.metavar else _typer_type_label(self, ctx)


def _argument_usage_name(self: typer.core.TyperArgument) -> str:
    """`ftc train RECIPE [KEY=VALUE]...` as the README writes it (typer says `{RECIPE}`)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


_typer_type_label = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = _argument_type_label  # type: ignore[method-assign]
typer.core.TyperArgument._usage_display_name = _argument_usage_name  # type: ignore[method-assign]


app = typer.Typer(
    name="ftc",
    help="fine_tune_cli: prepare data, train, evaluate and export transformer models from"
    " YAML recipes.\n\n\b\nExamples:\n  ftc train demo && ftc eval runs/demo"
    "\n  ftc recipes copy demo my-spam.yaml && ftc train my-spam.yaml",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    epilog="Exit codes: 0 ok, 1 bug, 2 recipe/usage, 3 data, 4 diverged, 5 gate failed,"
    " 6 integrity, 7 conflict, 8 output I/O, 9 distributed, 130/143 interrupted.",
)
app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("eval")(eval_cmd.evaluate)
app.command("export")(export.export)
app.command("verify")(verify.verify)
app.command("predict")(predict.predict)
app.command("explain")(explain_cmd.explain)
app.command("generate")(generate.generate)
app.command("sweep")(sweep.sweep)
app.add_typer(recipes.app, name="recipes")
app.add_typer(runs.app, name="runs")


def _print_version(value: bool) -> None:
    if value:
        from fine_tune_cli import __version__

        print(f"ftc (fine_tune_cli) {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """The root command only holds options common to all commands."""


def _value_options(args: list[str]) -> set[str]:
    """The option names that take a value (`--out FILE`, ...) of the command `args`
    name (`ftc sweep ... --resume` is a flag there, though `train --resume` takes a
    value); every command's when `args` name none."""
    command: Any = typer.main.get_command(app)
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            break
        command = sub
    names: set[str] = set()
    stack = [command]
    while stack:
        command = stack.pop()
        stack.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            if getattr(param, "is_flag", True) is False:
                names.update(o for o in param.opts if o.startswith("--"))
    return names


def _swallowed_option(args: list[str]) -> str | None:
    """`ftc eval RUN --compare --json` would take "--json" as the run dir to compare with
    and silently drop JSON mode: refuse an option name given as another option's value."""
    takes_value = _value_options(args)
    for name, value in itertools.pairwise(args):
        if name in takes_value and value.startswith("--"):
            return f"option {name} needs a value, got the option {value}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: never lets the framework print a traceback or exit non-2."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Offline by default (no Hub lookups); the Hub is reachable only when the user opted in
    # to downloads: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    if not downloads_allowed("--allow-download" in args):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in our logs
    from fine_tune_cli.console import setup_logging

    setup_logging()
    swallowed = _swallowed_option(args)
    if swallowed:
        _usage_error(args, swallowed, "")
    try:
        code = app(args=args, prog_name="ftc", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown option, missing argument, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        _usage_error(args, message, hint)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(args: list[str], message: str, hint: str) -> None:
    sys.stderr.write(f"error: {message}{hint}\n")
    if "--json" in args:
        command = next((a for a in args if not a.startswith("-")), "ftc")
        emit_json(error_payload(command, 2, message))
    sys.exit(2)
