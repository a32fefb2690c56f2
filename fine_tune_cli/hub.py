"""Hugging Face Hub ids in `model.init_from` and `data.tokenizer.path`.

`bert-base-uncased`, `org/name` or `org/name@REV` resolve to a snapshot dir of the local
Hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`); the rest of ftc only ever sees that dir.
Nothing touches the network unless the user opts in (`--allow-download` on train/prepare,
or FTC_ALLOW_DOWNLOAD=1), and then only safetensors, config and tokenizer files are fetched.
An existing local path always wins over an id of the same spelling (the recipe loader
decides that, against the recipe's directory).

huggingface_hub is imported lazily: `ftc --help` and recipe loading without ids stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fine_tune_cli.errors import OutputError, RecipeError

if TYPE_CHECKING:
    from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

ALLOW_DOWNLOAD_ENV = "FTC_ALLOW_DOWNLOAD"
# Recipe keys that may hold a Hub id (the others name local files only).
HUB_KEYS = ("model.init_from", "data.tokenizer.path")
# What a download fetches: weights as safetensors only (never pickles), model and image
# processor config, tokenizer files. Sub-folders (onnx/, openvino/, 1_Pooling/) are skipped.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
]
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
# NAME or ORG/NAME, optionally @REVISION (branch, tag, commit sha, refs/pr/N).
_HUB_ID = re.compile(
    r"(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w.-]+(?:/[\w.-]+)*))?",
    re.ASCII,
)
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubId:
    """A parsed Hub id as written in a recipe."""

    text: str
    repo_id: str
    revision: str | None  # None: the repo's default branch (main)

    @property
    def ref(self) -> str:
        return self.revision or "main"


@dataclass(frozen=True)
class Snapshot:
    """A Hub id resolved to a commit of the local cache."""

    hub_id: HubId
    path: Path
    sha: str


def parse_hub_id(value: str) -> HubId | None:
    """The Hub id `value` spells, or None when it can only be a path (absolute, ./, ~,
    more than one '/', a '..' component)."""
    match = _HUB_ID.fullmatch(value)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        return None
    return HubId(value, match["repo"], match["rev"])


def is_hub_id(value: str) -> bool:
    return parse_hub_id(value) is not None


def downloads_allowed(flag: bool = False) -> bool:
    """`--allow-download` or FTC_ALLOW_DOWNLOAD=1 (any of 1, true, yes, on)."""
    env = os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower()
    return flag or env in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """The Hub cache as huggingface_hub would pick it, read at call time (so a changed
    HF_HOME / HF_HUB_CACHE counts even after huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def local_path(value: str, key: str) -> Path:
    """The directory a recipe value names: the path itself when it exists or cannot be
    an id, else the cached snapshot of that Hub id."""
    path = Path(value)
    hub_id = parse_hub_id(value)
    if hub_id is None or path.exists():
        return path
    return resolve(hub_id, key).path


def resolve(hub_id: HubId, key: str) -> Snapshot:
    """The cached snapshot of `hub_id` (no network); exit 2 naming both ways to get it."""
    snapshot = cached(hub_id, key)
    if snapshot is None:
        raise RecipeError(not_cached_message(hub_id, key))
    return snapshot


def cached(hub_id: HubId, key: str) -> Snapshot | None:
    """The cached snapshot of `hub_id`, or None when the cache lacks that revision."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            hub_id.repo_id,
            revision=hub_id.revision,
            cache_dir=cache_dir(),
            local_files_only=True,
            allow_patterns=ALLOW_PATTERNS,
        )
    except HFValidationError as exc:
        raise RecipeError(f"{key}: {hub_id.text}: not a valid Hub id ({exc})") from None
    except LocalEntryNotFoundError:
        return None
    return _checked(Snapshot(hub_id, Path(folder), Path(folder).name), key)


def not_cached_message(hub_id: HubId, key: str) -> str:
    cached = cached_revisions(hub_id.repo_id)
    have = f" (cached revisions: {', '.join(cached)})" if cached else ""
    rev = f" --revision {hub_id.revision}" if hub_id.revision else ""
    return (
        f"{key}: {hub_id.text}: not found: no such local path, and Hub id"
        f" '{hub_id.repo_id}' at revision {hub_id.ref} is not in the Hugging Face cache"
        f" {cache_dir()}{have}. Either rerun with --allow-download (or FTC_ALLOW_DOWNLOAD=1)"
        f" to download it, or fetch it into the cache first: hf download {hub_id.repo_id}{rev}"
    )


def cached_revisions(repo_id: str) -> list[str]:
    """Branch/tag names (with their sha) and bare snapshot shas cached for a repo."""
    repo = cache_dir() / f"models--{repo_id.replace('/', '--')}"
    named: dict[str, str] = {}
    refs = repo / "refs"
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            named[ref.read_text().strip()] = str(ref.relative_to(refs))
    snapshots = repo / "snapshots"
    shas = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
    return [f"{named[s]} -> {s[:12]}" if s in named else s[:12] for s in shas]


def _checked(snapshot: Snapshot, key: str) -> Snapshot:
    """Refuse a repo that asks for remote code (weights are checked where init_from is
    resolved, for local dirs and snapshots alike)."""
    problem = remote_code_problem(snapshot.path)
    if problem:
        raise RecipeError(
            f"{key}: {snapshot.hub_id.text} (snapshot {snapshot.sha[:12]}): {problem}"
        )
    return snapshot


def remote_code_problem(path: Path) -> str | None:
    """Configs that need the repo's own Python code (`auto_map`, `trust_remote_code`):
    ftc never runs code from a model dir."""
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: the loader reports an unreadable config
        if isinstance(config, dict) and (config.get("auto_map") or config.get("trust_remote_code")):
            return f"{name} asks for remote code (auto_map); refused (ftc runs no code from models)"
    return None


def weights_problem(path: Path) -> str | None:
    """ftc loads weights from safetensors only (a pickle can run code when loaded)."""
    if any((path / name).is_file() for name in SAFETENSORS):
        return None
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    found = f"it holds {', '.join(pickled)}" if pickled else "it holds no weights"
    return (
        f"no model.safetensors ({found}); ftc loads safetensors weights only (pickled"
        " .bin/.pt files are refused): pick a revision with safetensors or convert them"
    )


def recipe_hub_ids(recipe: Recipe) -> dict[str, HubId]:
    """The recipe keys holding a Hub id (a value that is not an existing path)."""
    values = {
        "model.init_from": recipe.model.init_from,
        "data.tokenizer.path": recipe.data.tokenizer.path,
    }
    out = {}
    for key, value in values.items():
        hub_id = parse_hub_id(value) if value else None
        if hub_id is not None and not Path(value).exists():  # type: ignore[arg-type]
            out[key] = hub_id
    return out


def fetch(recipe: Recipe) -> dict[str, Snapshot]:
    """Download what the recipe's Hub ids need and the cache lacks (the user opted in).
    A cached revision is used as is: a run does not move to a newer `main` by itself."""
    return {
        key: cached(hub_id, key) or _download(hub_id, key)
        for key, hub_id in recipe_hub_ids(recipe).items()
    }


def _download(hub_id: HubId, key: str) -> Snapshot:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    log.info("%s: downloading %s into %s", key, hub_id.text, cache_dir())
    fail = f"{key}: {hub_id.text}: cannot download"
    try:
        folder = snapshot_download(
            hub_id.repo_id,
            revision=hub_id.revision,
            cache_dir=cache_dir(),
            allow_patterns=ALLOW_PATTERNS,
        )
    except HFValidationError as exc:
        raise RecipeError(f"{key}: {hub_id.text}: not a valid Hub id ({exc})") from None
    except GatedRepoError:
        raise RecipeError(
            f"{fail}: the repo is gated; accept its terms on the Hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise RecipeError(
            f"{fail}: no such repo on the Hub (or it is private: log in with hf auth login)"
        ) from None
    except RevisionNotFoundError:
        raise RecipeError(f"{fail}: the repo has no revision {hub_id.ref}") from None
    except LocalEntryNotFoundError as exc:  # offline, unreachable, or the Hub is down
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
        hint = (
            "HF_HUB_OFFLINE is set in the environment; unset it to download"
            if offline
            else f"the Hub could not be reached ({_first_line(exc).removeprefix('Got: ')});"
            f" check the network, or fetch it into the cache first: hf download {hub_id.repo_id}"
        )
        raise RecipeError(f"{fail}: {hint}") from None
    except HfHubHTTPError as exc:
        raise RecipeError(f"{fail}: {_first_line(exc)}") from None
    except OSError as exc:  # writing the cache: disk full, read-only
        raise OutputError(f"{cache_dir()}: cannot write the Hub cache ({exc})") from None
    snapshot = Snapshot(hub_id, Path(folder), Path(folder).name)
    log.info("%s: %s is commit %s", key, hub_id.text, snapshot.sha)
    return _checked(snapshot, key)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def same_files(key: str, a: Any, b: Any) -> bool:
    """Two values of a Hub key that name the same directory: `org/name` and
    `org/name@<its sha>`, or an id and its snapshot path (resume accepts them)."""
    if key not in HUB_KEYS or not isinstance(a, str) or not isinstance(b, str):
        return a == b
    try:
        return local_path(a, key).resolve() == local_path(b, key).resolve()
    except RecipeError:  # one of them is not in the cache (any more): not provably the same
        return False


def snapshot_revision(path: Path) -> str | None:
    """The commit sha when `path` is (inside) a Hub-cache snapshot, else None."""
    for part in (Path(path), *Path(path).parents):
        if part.parent.name == "snapshots" and part.parent.parent.name.startswith("models--"):
            return part.name if _SHA.fullmatch(part.name) else None
    return None


def provenance(recipe: Recipe) -> dict[str, Any]:
    """What each Hub id of the recipe resolved to, for provenance.json."""
    out = {}
    for key, hub_id in recipe_hub_ids(recipe).items():
        snapshot = resolve(hub_id, key)
        out[key] = {
            "id": hub_id.text,
            "repo_id": hub_id.repo_id,
            "revision": hub_id.ref,
            "sha": snapshot.sha,
            "path": str(snapshot.path),
        }
    return out
