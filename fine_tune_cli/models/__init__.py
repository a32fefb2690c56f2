"""Models: one registry of family x task, builders from size presets or local dirs.

Importing this package fills the registry (the family modules are import-light).
"""

from fine_tune_cli.models import bert, gpt2, vit  # noqa: F401  (register the families)
from fine_tune_cli.models.registry import FAMILIES, MODELS, BuildContext, build_model

__all__ = ["FAMILIES", "MODELS", "BuildContext", "build_model"]
