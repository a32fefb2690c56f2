"""What every command shares: overrides argument, --json output, and the one place where
errors become exit codes (tracebacks only with FTC_DEBUG=1)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import typer

from fine_tune_cli.errors import FtcError, Interrupted, output_failure

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object on stdout at the end.")
OVERRIDES_ARG = typer.Argument(
    None,
    metavar="KEY=VALUE",
    help="Recipe overrides: dotted keys, YAML values (optim.lr=1e-4 train.epochs=2).",
)
RECIPE_ARG = typer.Argument(
    ..., metavar="RECIPE", help="Recipe file, or a built-in recipe name (ftc recipes list)."
)
ALLOW_DOWNLOAD_OPTION = typer.Option(
    False,
    "--allow-download",
    help="Download Hub ids (model.init_from, data.tokenizer.path) that the Hugging Face"
    " cache lacks; same as FTC_ALLOW_DOWNLOAD=1. Off: no network.",
)


def load_recipe_for_run(recipe: str, overrides: list[str] | None, allow_download: bool) -> Any:
    """The recipe of train/prepare; with downloads allowed (flag or FTC_ALLOW_DOWNLOAD),
    its Hub ids missing from the cache are fetched first, so the rest reads the cache."""
    from fine_tune_cli.hub import downloads_allowed, fetch
    from fine_tune_cli.recipe import load_recipe

    allowed = downloads_allowed(allow_download)
    loaded = load_recipe(recipe, overrides or [], allow_download=allowed)
    if allowed:
        fetch(loaded.recipe)
    return loaded


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def error_payload(command: str, code: int, message: str, status: str = "error") -> dict[str, Any]:
    return {"status": status, "command": command, "exit_code": code, "message": message}


def fail(
    command: str,
    json_mode: bool,
    code: int,
    message: str,
    status: str = "error",
    extra: dict[str, Any] | None = None,
) -> None:
    for i, line in enumerate(message.splitlines() or [""]):
        sys.stderr.write(("error: " if i == 0 else "") + line + "\n")
    if json_mode:
        emit_json({**(extra or {}), **error_payload(command, code, message, status)})
    raise typer.Exit(code)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Interrupted (exit 143) like SIGINT raises KeyboardInterrupt, so the
    `finally`/`except` blocks that remove temp dirs run and nothing half-written is left
    (the trainer replaces this with its own handler: finish the step, checkpoint, exit)."""

    def handle(signum: int, frame: object) -> None:
        raise Interrupted("interrupted by SIGTERM; nothing was published", signum)

    try:
        old = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_command(
    command: str,
    json_mode: bool,
    body: Callable[[], dict[str, Any]],
    human: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run a command body; map its outcome to output and an exit code."""
    try:
        with _sigterm_raises():
            result = body()
    except FtcError as exc:
        fail(command, json_mode, exc.exit_code, exc.message, exc.status, exc.payload)
    except KeyboardInterrupt:
        fail(command, json_mode, 130, "interrupted", "interrupted")
    except typer.Exit:
        raise
    except Exception as exc:  # a bug: keep it to one line unless debugging
        if os.environ.get("FTC_DEBUG"):
            traceback.print_exc()
        written = output_failure(exc)  # disk full, read-only ...: exit 8, not a bug
        if written is not None:
            fail(command, json_mode, written.exit_code, written.message)
        first = (str(exc).splitlines() or [""])[0]
        fail(
            command,
            json_mode,
            1,
            f"internal error: {type(exc).__name__}: {first} (rerun with FTC_DEBUG=1 for the"
            " traceback)",
        )
    status = result.pop("status", "ok")
    code = result.pop("exit_code", 0)
    payload = {"status": status, "command": command, "exit_code": code, "run_dir": None, **result}
    if json_mode:
        emit_json(payload)
    elif human is not None:
        human(payload)
    if code:
        raise typer.Exit(code)


def print_metrics_table(title: str, metrics: dict[str, Any], file: Any = None) -> None:
    """A small aligned table (plain text so it reads the same in CI logs)."""
    out = file or sys.stdout
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    if not scalars:
        return
    width = max(len(k) for k in scalars)
    out.write(f"{title}\n")
    for key, value in scalars.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        out.write(f"  {key.ljust(width)}  {shown}\n")
    out.flush()
