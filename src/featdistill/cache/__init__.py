"""The teacher store: run a frozen teacher once over replayable views, train students without it.

- :func:`build_store` — teacher outputs for ``V`` views of every sample → memory-mapped shards + manifest
  (resumable, split over ``torchrun`` ranks).
- :class:`TeacherStore` — validated, zero-copy random access by ``(sample_id, view_id)``; refuses a store
  built for another teacher, dataset, augmentation or k, a corrupt shard, or an incomplete build.
- :class:`CachedTeacher` — the store as a :class:`~featdistill.teacher.TeacherSource` for the Distiller;
  :func:`store_loader` — the loader that yields exactly the stored views.
- :func:`store_info` / :func:`format_info` — ``featdistill cache info STORE``; :func:`verify_store` —
  ``featdistill cache verify STORE`` (every file's sha256, every problem listed);
  :func:`build_store_from_config` — ``featdistill cache CONFIG.yaml``.

See ``docs/teacher-store.md``.
"""

from featdistill.cache.builder import BuildResult, build_store, finalize_store
from featdistill.cache.config import CacheSection, build_store_from_config
from featdistill.cache.format import (
    FORMAT_VERSION,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    teacher_sha256,
)
from featdistill.cache.info import format_info, store_info
from featdistill.cache.integrity import verify_store
from featdistill.cache.store import TeacherStore, reconstruct_logp
from featdistill.cache.teacher import CachedTeacher, store_loader

__all__ = [
    "FORMAT_VERSION",
    "BuildResult",
    "CacheSection",
    "build_store_from_config",
    "CachedTeacher",
    "StoreCorruptError",
    "StoreError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "TeacherStore",
    "build_store",
    "finalize_store",
    "format_info",
    "reconstruct_logp",
    "store_info",
    "store_loader",
    "teacher_sha256",
    "verify_store",
]
