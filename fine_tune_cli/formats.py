"""On-disk format versions: the one table of what this ftc writes, and the migrations that
read what older ones wrote.

Every file ftc reads back carries `format_version` (an integer): manifest.json (checkpoints,
best/, exports), trainer_state.pt (checkpoints), recipe.lock.yaml (run dirs, checkpoints) and
the prepared-cache manifest.json. Files written before versions existed have no field and
are version 1. Reading goes through `upgrade`: older versions are migrated in memory one
step at a time (files on disk are never rewritten by a read), newer ones are refused with
exit 2 naming both versions, so an old ftc never misreads a file a newer one wrote.

Changing a format = bump its number in CURRENT and register a `@migration(kind, old)` that
turns version `old` into `old + 1`; keep a fixture of the old version (tests/fixtures/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fine_tune_cli.errors import FormatError

KEY = "format_version"
RECIPE_LOCK_NAME = "recipe.lock.yaml"  # runs.RECIPE_LOCK; here so recipe loading can see it

# The version this ftc writes (and the newest it reads), per format.
CURRENT: dict[str, int] = {
    "manifest": 2,  # manifest.json of checkpoints, best/ and exports (fine_tune_cli/manifest.py)
    "checkpoint": 2,  # trainer_state.pt (fine_tune_cli/engine/checkpoint.py)
    "recipe_lock": 4,  # recipe.lock.yaml of run dirs and checkpoints (fine_tune_cli/runs.py)
    "prepared": 2,  # prepared-cache manifest.json (fine_tune_cli/data/store.py)
}

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[str, dict[int, Migration]] = {kind: {} for kind in CURRENT}


def migration(kind: str, old: int) -> Callable[[Migration], Migration]:
    """Register the function that turns `kind` version `old` into version `old + 1`."""

    def register(fn: Migration) -> Migration:
        if old in MIGRATIONS[kind]:
            raise ValueError(f"duplicate migration {kind} v{old}")
        MIGRATIONS[kind][old] = fn
        return fn

    return register


def version_of(data: dict[str, Any], where: object) -> int:
    """The format version a file declares; no field means 1 (written before versions)."""
    found = data.get(KEY, 1)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise FormatError(f"{where}: {KEY} {found!r} is not a positive integer")
    return found


def upgrade(kind: str, data: dict[str, Any], where: object) -> dict[str, Any]:
    """`data` (a file's content) migrated to CURRENT[kind]; a newer version is refused."""
    found, current = version_of(data, where), CURRENT[kind]
    if found > current:
        raise FormatError(
            f"{where}: {KEY} {found} is newer than this ftc understands ({current});"
            " upgrade fine_tune_cli"
        )
    data = dict(data)
    while found < current:
        data = MIGRATIONS[kind][found](data)
        found += 1
        data[KEY] = found
    return data


def stamp(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the version this ftc writes, as its first key (easy to spot by eye)."""
    rest = {k: v for k, v in data.items() if k != KEY}
    return {KEY: CURRENT[kind], **rest}


# -- migrations ---------------------------------------------------------------------------
# v1 -> v2 of every format only adds the field (the content did not change); later
# changes of a format go below as `@migration(kind, 2)`, `@migration(kind, 3)`, ...


@migration("manifest", 1)
@migration("checkpoint", 1)
@migration("recipe_lock", 1)
def _add_version(data: dict[str, Any]) -> dict[str, Any]:
    return data


@migration("prepared", 1)
def _prepared_v1(data: dict[str, Any]) -> dict[str, Any]:
    # v1 also wrote "format": 1 — the data-hash scheme, which format_version replaced in
    # the manifest (the scheme still enters every data hash; see data/store.py HASH_SCHEME).
    data.pop("format", None)
    return data


@migration("recipe_lock", 2)
def _lock_batching(data: dict[str, Any]) -> dict[str, Any]:
    # v3 added train.batching: a run locked before it was trained in random order, and
    # must resume in it whatever the default becomes. (A lock is a resolved recipe: it
    # always has a train section.)
    train = data.get("train")
    if isinstance(train, dict):
        data["train"] = {"batching": "random", **train}
    return data


@migration("recipe_lock", 3)
def _lock_fused(data: dict[str, Any]) -> dict[str, Any]:
    # v4 added optim.fused (default true): a run locked before it stepped with foreach
    # kernels and must resume with them (fused and foreach round differently).
    optim = data.get("optim")
    if isinstance(optim, dict):
        data["optim"] = {"fused": False, **optim}
    return data
