"""sha256 manifests: written beside every checkpoint, best/ model and export, checked by
`ftc verify` and before anything is loaded from such a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fine_tune_cli import formats
from fine_tune_cli.errors import IntegrityError

MANIFEST = "manifest.json"
MARKERS = {MANIFEST, "COMPLETE"}


def sha256_file(path: Path) -> str:
    from fine_tune_cli.data.store import sha256_file as _sha

    return _sha(path)


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in MARKERS or rel.startswith("."):
            continue
        out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def write_manifest(root: Path, **extra: Any) -> dict[str, Any]:
    manifest = formats.stamp("manifest", {"files": file_hashes(root), **extra})
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """root's manifest.json, migrated to the current format (a newer one: exit 2)."""
    path = root / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{root}: no {MANIFEST} to verify against")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise IntegrityError(f"{path}: unreadable manifest") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path}: unreadable manifest")
    return formats.upgrade("manifest", manifest, path)


def verify_manifest(root: Path) -> dict[str, Any]:
    """Raise IntegrityError naming the first file whose sha256 differs (or is missing)."""
    manifest = read_manifest(root)
    files = manifest["files"]
    for rel, entry in files.items():
        target = root / rel
        if not target.is_file():
            raise IntegrityError(f"{target}: listed in {MANIFEST} but missing")
        if sha256_file(target) != entry["sha256"]:
            raise IntegrityError(
                f"{target}: sha256 does not match {MANIFEST} (file changed or corrupt); refused"
            )
    extra = sorted(set(file_hashes(root)) - set(files))
    if extra:
        raise IntegrityError(f"{root / extra[0]}: file not listed in {MANIFEST}; refused")
    return manifest


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root to disk (before the rename commits)."""
    for path in [*root.rglob("*"), root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
