"""ftc verify DIR [--json]: check every file against the dir's manifest.json (exit 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command


def verify(
    directory: str = typer.Argument(..., help="Export, best/ or checkpoint dir."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Verify the sha256 of every file in a directory against its manifest."""

    def body() -> dict[str, Any]:
        from fine_tune_cli.errors import RecipeError
        from fine_tune_cli.manifest import verify_manifest

        path = Path(directory)
        if not path.is_dir():
            raise RecipeError(f"{path}: no such directory")
        manifest = verify_manifest(path)
        return {"outputs": {"dir": str(path)}, "files": len(manifest["files"])}

    run_command(
        "verify", json_mode, body, lambda p: print(f"ok: {p['files']} files match the manifest")
    )
