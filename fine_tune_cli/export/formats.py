"""Export formats, one registry (EXPORTERS, see `export/base.py` for the write/load
protocol); each format module registers its formats when imported here."""

from __future__ import annotations

from fine_tune_cli.export import compress, hf, onnx, pt2  # noqa: F401 (registration)
from fine_tune_cli.export.base import EXPORTERS, ExportContext, Exporter, RunFn

__all__ = ["EXPORTERS", "ExportContext", "Exporter", "RunFn"]
