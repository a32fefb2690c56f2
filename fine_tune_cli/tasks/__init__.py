"""Tasks: one file per task, registered here the way models/ registers families.

Importing this package fills TASKS. `task_for(recipe.model)` is the one way code outside
this package learns what a run's task needs (modality, labels, encoder, export support).
"""

from fine_tune_cli.tasks import (  # noqa: F401  (register the tasks)
    classification,
    clm,
    image_classification,
    mim,
    mlm,
    mlm_nsp,
    token_classification,
)
from fine_tune_cli.tasks.base import (
    TASKS,
    EvalResult,
    Task,
    TrainingTask,
    batches_in_eval_mode,
    build_task,
    task_for,
)

__all__ = [
    "TASKS",
    "EvalResult",
    "Task",
    "TrainingTask",
    "batches_in_eval_mode",
    "build_task",
    "task_for",
]
