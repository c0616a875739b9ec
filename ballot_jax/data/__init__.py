"""Data for ballot_jax: tasks (label + groups), deterministic, reproducible batch pipelines.

Entry point: :func:`load_task` (config keys documented in
:mod:`ballot_jax.data.tasks`). Batches are dicts ``{"image": f32[B,H,W,C] in
[0, 1], "label": i32[B], "group": i32[B], "weight": f32[B]}`` (see
:mod:`ballot_jax.data.pipeline`). Importing this package is light: TFDS builders
and ``ballot_jax.data.prepare`` are imported only when a TFDS dataset is loaded.
"""

from ballot_jax.data.pipeline import ArraySplit, Batch, SourceSplit, Split
from ballot_jax.data.quickstart import quickstart_arrays
from ballot_jax.data.tasks import DataNotFoundError, TaskData, load_quickstart, load_task, task_from_sources

__all__ = [
    "ArraySplit",
    "Batch",
    "DataNotFoundError",
    "SourceSplit",
    "Split",
    "TaskData",
    "load_quickstart",
    "load_task",
    "quickstart_arrays",
    "task_from_sources",
]
