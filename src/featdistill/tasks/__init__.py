"""Tasks: what a run is about — how a batch calls a model, what its prediction, loss and metrics are.

One file per task, registered in :data:`TASKS`: ``classification``, ``segmentation``, ``sequence-classification``,
``token-classification``, ``causal-lm``, ``regression``, ``image-to-image``. See :mod:`featdistill.tasks.base`.
"""

from featdistill.tasks import causal_lm, classification, regression, segmentation, sequence  # noqa: F401
from featdistill.tasks.base import (
    TASKS,
    Task,
    TaskError,
    TaskMetrics,
    build_task,
    list_tasks,
    read_output,
    register_task,
)

__all__ = ["TASKS", "Task", "TaskError", "TaskMetrics", "build_task", "list_tasks", "read_output", "register_task"]
