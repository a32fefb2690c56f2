"""Data: sources, pipeline steps, tokenizers, encoding and the prepared-data store.

Importing this package fills its registries (SOURCES by format, STEPS by name); the
plugin modules import their base module, never the other way round.
"""

from fine_tune_cli.data import (  # noqa: F401  (register the sources and steps)
    image_sources,
    image_steps,
    sources,
    steps,
)
