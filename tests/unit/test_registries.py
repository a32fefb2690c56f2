"""Registries filled by package __init__ files: SOURCES by format (data/), TASKS (tasks/)
against MODELS (models/)."""

from __future__ import annotations


def test_every_source_format_of_the_schema_has_a_reader() -> None:
    from fine_tune_cli.data.sources import SOURCES
    from fine_tune_cli.recipe import IMAGE_FORMATS, TEXT_FORMATS

    assert set(TEXT_FORMATS) | set(IMAGE_FORMATS) <= set(SOURCES.names())


def test_every_family_task_pair_resolves_to_a_registered_task() -> None:
    from fine_tune_cli.models import FAMILIES, MODELS
    from fine_tune_cli.recipe import ModelSpec
    from fine_tune_cli.tasks import task_for

    for key in MODELS:
        family, task = key.split("/")
        found = task_for(ModelSpec(family=family, task=task))
        assert found.recipe_task == task
        assert found.modality == FAMILIES.get(family).modality
