"""ftc verify DIR [--json]: check every file against the dir's manifest.json (exit 6).

DIR is an export, best/ or checkpoint dir; a run dir verifies all of those it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command


def _manifest_dirs(run: Path) -> list[Path]:
    """best/, every checkpoint and every export of a run dir, in that order."""
    from fine_tune_cli.runs import BEST, CHECKPOINTS, EXPORT, MANIFEST, STEP_PREFIX

    candidates = [run / BEST, *sorted((run / CHECKPOINTS).glob(f"{STEP_PREFIX}*"))]
    candidates += sorted((run / EXPORT).glob("*"))
    return [d for d in candidates if (d / MANIFEST).is_file()]


def verify(
    directory: str = typer.Argument(
        ..., metavar="DIR", help="Export, best/, checkpoint or run dir."
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Verify the sha256 of every file in a directory against its manifest (exit 6 if not).

    \b
    Examples:
      ftc verify runs/demo
      ftc verify runs/demo/export/onnx --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.errors import IntegrityError, RecipeError
        from fine_tune_cli.manifest import MANIFEST, verify_manifest
        from fine_tune_cli.runs import RECIPE_LOCK, locate, searched

        path = locate(directory)
        if not path.is_dir():
            raise RecipeError(f"{path}: no such directory{searched(directory)}")
        if (path / MANIFEST).is_file() or not (path / RECIPE_LOCK).is_file():
            manifest = verify_manifest(path)
            return {"outputs": {"dir": str(path)}, "files": len(manifest["files"]), "dirs": 1}
        dirs = _manifest_dirs(path)
        if not dirs:
            raise IntegrityError(f"{path}: run dir holds no best/, checkpoint or export to verify")
        files = sum(len(verify_manifest(d)["files"]) for d in dirs)
        return {
            "run_dir": str(path),
            "outputs": {"dir": str(path)},
            "files": files,
            "dirs": len(dirs),
            "verified": [str(d) for d in dirs],
        }

    run_command(
        "verify",
        json_mode,
        body,
        lambda p: print(f"ok: {p['files']} files in {p['dirs']} dir(s) match their manifests"),
    )
