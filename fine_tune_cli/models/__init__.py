"""Models: one registry of family x task, builders from size presets or local dirs.

Importing this package fills the registry (the family modules are import-light).
"""

from fine_tune_cli.models import bert  # noqa: F401  (registers the family)
from fine_tune_cli.models.registry import FAMILIES, MODELS, BuildContext, build_model

__all__ = ["FAMILIES", "MODELS", "BuildContext", "build_model"]
