"""`ftc`: assembles the commands and turns framework usage errors into exit code 2."""

from __future__ import annotations

import os
import sys

import typer
from typer.exceptions import TyperException

from fine_tune_cli.cli import eval as eval_cmd
from fine_tune_cli.cli import export, predict, prepare, recipes, train, verify
from fine_tune_cli.cli.common import emit_json, error_payload

app = typer.Typer(
    name="ftc",
    help="fine_tune_cli: prepare data, train, evaluate and export transformer models from"
    " YAML recipes. Exit codes: see `ftc --help` epilog or the README.",
    no_args_is_help=True,
    add_completion=False,
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
app.add_typer(recipes.app, name="recipes")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: never lets the framework print a traceback or exit non-2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline by default: no hub lookups
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in our logs
    from fine_tune_cli.console import setup_logging

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="ftc", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown option, missing argument, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        sys.stderr.write(f"error: {message}{hint}\n")
        if "--json" in args:
            command = next((a for a in args if not a.startswith("-")), "ftc")
            emit_json(error_payload(command, 2, message))
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
