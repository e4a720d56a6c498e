"""featdistill.data: in-memory datasets, replayable augmentation views and batch-dict loaders.

The pieces and why they are separate:

* :mod:`~featdistill.data.base` / :mod:`~featdistill.data.datasets` / :mod:`~featdistill.data.formats` —
  :class:`ImageDataset` and loaders returning ``(train, test)`` for bundled (digits, MNIST-5k), synthetic and
  on-disk (CIFAR, IDX, image folders) data, with fixture writers for tests.
* :mod:`~featdistill.data.splits` — deterministic stratified splits (validation is carved from train).
* :mod:`~featdistill.data.views` — :class:`ViewConfig` / :class:`Augmenter`: view ``(sample_id, view_id)``
  has the same pixels every time, which the teacher store relies on.
* :mod:`~featdistill.data.loaders` — :class:`ViewLoader` yields the batch dict
  ``{"input", "target", "sample_id", "view_id"}``; :func:`render_views` re-renders any view exactly.
"""

from featdistill.data.base import ImageDataset, channel_stats
from featdistill.data.datasets import (
    DATASETS,
    list_datasets,
    load_dataset,
    load_digits,
    load_mnist5k,
    load_synthetic,
    make_synthetic,
)
from featdistill.data.formats import (
    DataFormatError,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist_idx,
    read_idx,
    read_image_folder,
    restricted_pickle_load,
    write_cifar10_bin,
    write_cifar10_python,
    write_cifar100_bin,
    write_cifar100_python,
    write_idx,
    write_image_folder,
    write_mnist_idx,
)
from featdistill.data.loaders import ViewLoader, eval_loader, make_inputs, render_views
from featdistill.data.splits import stratified_split
from featdistill.data.views import NO_AUGMENT, Augmenter, ViewConfig, view_for_epoch

__all__ = [
    "ImageDataset",
    "channel_stats",
    "DATASETS",
    "list_datasets",
    "load_dataset",
    "load_digits",
    "load_mnist5k",
    "load_synthetic",
    "make_synthetic",
    "DataFormatError",
    "load_cifar10",
    "load_cifar100",
    "load_image_folder",
    "load_mnist_idx",
    "read_idx",
    "read_image_folder",
    "restricted_pickle_load",
    "write_cifar10_bin",
    "write_cifar10_python",
    "write_cifar100_bin",
    "write_cifar100_python",
    "write_idx",
    "write_image_folder",
    "write_mnist_idx",
    "ViewLoader",
    "eval_loader",
    "make_inputs",
    "render_views",
    "stratified_split",
    "NO_AUGMENT",
    "Augmenter",
    "ViewConfig",
    "view_for_epoch",
]
