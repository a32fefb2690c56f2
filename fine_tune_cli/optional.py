"""Optional dependencies: the one place that imports them, so a missing install step is
exit 2 with the exact `pip install` line instead of a ModuleNotFoundError (exit 1, which
reads like a bug)."""

from __future__ import annotations

import importlib
from types import ModuleType

from fine_tune_cli.errors import RecipeError

# module -> the extra of fine_tune_cli that installs it (pyproject.toml)
EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "captum": "explain",
    "datasketch": "dedupe",
    "optuna": "sweep",
}


def install_line(extra: str) -> str:
    return f"pip install 'fine_tune_cli[{extra}]'"


def require(module: str, why: str) -> ModuleType:
    """Import an optional module (dotted names allowed; its top-level package decides the
    extra), or raise RecipeError naming what needs it and the pip line that installs it.

    `why` names the feature, e.g. "--format onnx" or "log.tensorboard: true"."""
    top = module.split(".")[0]
    extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == top
        state = "is not installed" if missing else f"cannot be imported ({exc})"
        raise RecipeError(
            f"{why} needs the '{top}' package, which {state}; install it with:"
            f" {install_line(extra)}"
        ) from None


def require_all(modules: tuple[str, ...], why: str) -> None:
    """Check several optional modules up front (before any slow work starts)."""
    for module in modules:
        require(module, why)
