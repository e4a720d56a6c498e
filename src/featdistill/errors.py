"""Which errors are the user's, and how the CLI reports them (one message, exit 2; ``--debug``: the traceback).

Two kinds of failure reach the command line:

- **user errors** — a bad config value, a missing or damaged file, a refused store or checkpoint, a busy
  directory: the library raises one of :func:`user_error_types` with a message naming the key or file, the
  value and the fix, and the CLI prints it and exits 2;
- **internal errors** — everything else: the CLI shows the traceback (it is a bug to report).

Between the two sit values that pass every schema check and only fail inside a constructor or the first
forward pass (``width: 0``, a negative temperature, an unloadable checkpoint): a plain
``ValueError``/``RuntimeError`` from torch or a model.  :class:`StartupGuard` (used by the CLI's ``train`` and
``cache``; the Python API raises the original error) turns such an error into a
:class:`~featdistill.config.ConfigError` **only while the job has not started** (before the first optimiser
step of a run, before the first shard of a store build) — the phase where the config is what is being turned
into objects — naming the section being built (:func:`phase`, else the innermost builder on the error's stack)
and the original error; once the job runs, errors stay internal.  The cause is
chained, so ``featdistill --debug …`` (or ``FEATDISTILL_DEBUG=1``) shows the full traceback either way.
"""

from __future__ import annotations

import contextvars
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["user_error_types", "StartupGuard", "phase"]

_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("featdistill_setup_phase", default="")


def phase(text: str) -> None:
    """Name what is being built from the config now (``"the student (student.*)"``), for a StartupGuard message."""
    _PHASE.set(text)


#: what a run is building when the error comes from inside these functions (``featdistill.run``, the Trainer)
_BUILDERS = {
    "build_data": "the data (data.*)",
    "build_teacher": "the teacher (teacher.*)",
    "build_method": "the method (method.*)",
    "fit_data": "the method's pass over the data (method.*)",
    "fit": "the first training step (train.*, method.params, data.augment)",
}


def _phase_from_traceback(err: BaseException) -> str:
    """The innermost known builder on the error's stack (``build_model`` names its role: student / teacher)."""
    found = ""
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        name = frame.f_code.co_name
        if frame.f_globals.get("__name__", "").startswith("featdistill."):
            if name == "build_model" and frame.f_locals.get("role") in ("student", "teacher"):
                role = frame.f_locals["role"]
                found = f"the {role} ({role}.*)"
            elif name in _BUILDERS:
                found = _BUILDERS[name]
        tb = tb.tb_next
    return found


#: errors that, raised while a job is being set up, are taken for a consequence of its config
SETUP_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    ArithmeticError,
    RuntimeError,
    MemoryError,
    EOFError,
    pickle.UnpicklingError,
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types whose message is shown as it is (exit 2, no traceback)."""
    from featdistill.adapters import ShapeMismatchError
    from featdistill.config import ConfigError
    from featdistill.taps import TapPathError

    errs: list[type[BaseException]] = [
        ConfigError,
        TapPathError,
        ShapeMismatchError,
        FileNotFoundError,
        FileExistsError,
    ]
    for mod, name in [
        ("featdistill.train.config", "TrainConfigError"),
        ("featdistill.train.checkpoint", "CheckpointError"),
        ("featdistill.cache", "StoreError"),
        ("featdistill.data", "DataFormatError"),
        ("featdistill.tasks", "TaskError"),
        ("featdistill.yaml_safe", "YAMLLoadError"),
        ("featdistill.locks", "DirectoryLockedError"),
    ]:
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = (str(err).strip().splitlines() or [""])[0] or repr(err)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StartupGuard:
    """``with guard.watch():`` around a job; call :meth:`started` (or use it as a Trainer callback: its
    ``on_step_end`` marks the start) once the job really runs.  A :data:`SETUP_ERRORS` error raised before
    that becomes a ``ConfigError`` naming ``what`` and the original error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.is_started = False

    def started(self, *args: Any, **kwargs: Any) -> None:
        self.is_started = True

    # Trainer callback protocol
    def on_step_end(self, trainer: Any, step: int) -> None:
        self.is_started = True

    def on_epoch_end(self, trainer: Any, epoch: int, record: Any) -> None:
        self.is_started = True

    @contextmanager
    def watch(self) -> Iterator[StartupGuard]:
        token = _PHASE.set("")
        try:
            yield self
        except SETUP_ERRORS as err:
            if self.is_started or isinstance(err, user_error_types()):
                raise
            from featdistill.config import ConfigError

            building = _PHASE.get() or _phase_from_traceback(err)
            where = f" while building {building}" if building else ""
            raise ConfigError(
                f"{self.what} could not start{where}: {type(err).__name__}: {_first_line(err)} — a config value "
                "that passed the checks fails here; fix it, or rerun with --debug for the traceback"
            ) from err
        finally:
            _PHASE.reset(token)
