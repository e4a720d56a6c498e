"""Datasets of the non-classification tasks, registered by name beside the classification ones.

Each entry imports its module only when used (the text datasets need ``tokenizers``, the VOC reader Pillow), so
``import featdistill.data`` stays light. A loader returns ``(train, test)`` ``ArrayDataset``
pairs; ``root`` is required exactly for the ones that read files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["TASK_DATASETS", "TASK_OF_DATASET"]


def _lazy(module: str, fn: str, name: str, needs_root: bool) -> Callable[..., Any]:
    def call(root: str | None, **kw: Any) -> Any:
        if needs_root and root is None:
            raise ValueError(f"dataset {name!r} reads files: pass root='<folder with the {name} files>'")
        if not needs_root and root is not None:
            raise ValueError(f"dataset {name!r} is bundled or generated and takes no root (got root={root!r})")
        loader = getattr(importlib.import_module(module), fn)
        return loader(root, **kw) if needs_root else loader(**kw)

    return call


#: name → (module, function, needs a root folder, the task the data is for — None: say it in `task:`)
_ENTRIES: dict[str, tuple[str, str, bool, str | None]] = {
    "hf-disk": ("featdistill.data.hf_disk", "load_hf_disk", True, None),
    "shapes-seg": ("featdistill.data.segmentation", "load_shapes_segmentation", False, "segmentation"),
    "voc-seg": ("featdistill.data.segmentation", "load_voc_segmentation", True, "segmentation"),
    "mnist5k-sr": ("featdistill.data.superres", "load_mnist5k_sr", False, "image-to-image"),
    "pystdlib-lm": ("featdistill.data.text", "load_pystdlib_lm", False, "causal-lm"),
    "pystdlib-cls": ("featdistill.data.text", "load_pystdlib_classification", False, "sequence-classification"),
    "sunspots": ("featdistill.data.timeseries", "load_sunspots", False, "regression"),
    "macrodata": ("featdistill.data.timeseries", "load_macrodata", False, "regression"),
}

TASK_DATASETS: dict[str, Callable[..., Any]] = {
    name: _lazy(mod, fn, name, root) for name, (mod, fn, root, _) in _ENTRIES.items()
}
#: the task each registered dataset is made for (a config naming the dataset defaults to it)
TASK_OF_DATASET: dict[str, str] = {name: task for name, (*_, task) in _ENTRIES.items() if task is not None}
