"""Atomic checkpoints, exact resume and the exported student.

A checkpoint is a plain ``torch.save`` of a dict holding only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(weights_only=True)`` — loading a checkpoint can never execute code.  It
contains:

``format``/``version``  what this file is (checked on load)
``model``               the distiller's state **minus frozen sub-modules** (the teacher): the student and
                        the adapters.  The teacher is rebuilt from its own weights by whoever builds the
                        distiller; saving it would multiply checkpoint size for nothing.
``optimizer``/``scheduler``  their ``state_dict()`` (momentum buffers, Adam moments, step counters)
``epoch``/``global_step``    completed epochs and optimiser steps
``rng``                 one entry per rank: torch CPU (and CUDA) generator states, numpy's and Python's
                        global states as tensors/primitives.  The library itself draws from explicit
                        generators, but user code (dropout in a student, a custom loss) may use the global
                        ones, and exact resume must hold for them too.
``config``              the :class:`TrainConfig` as JSON-able data (resume refuses a changed trajectory)
``history``/``best``    the per-epoch records so a resumed ``fit()`` returns the whole run
``sha256``              :func:`content_sha256` of everything above (names, dtypes, shapes and raw bytes of every
                        tensor, every number and string), checked on load: a flipped bit in a weight, a moment
                        or an RNG state is refused instead of resumed.  Files that cannot be unpickled at all
                        (truncated, zero-length) fail in ``torch.load`` first.  Checkpoints written before the
                        checksum existed load with a warning.

Resume (:func:`latest_checkpoint`) takes the newest checkpoint that loads and matches its checksum: a damaged
newest one is skipped with a warning naming it and the one used; when none is intact, resume is refused
naming each file and its reason.

Why atomic (temp file in the same directory, ``fsync``, ``os.replace``): a run killed while writing must
leave either the previous checkpoint or the new one, never a half-written file that resume picks up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featdistill.io import atomic_write, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "frozen_state_keys",
    "trainable_state_dict",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_write",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "content_sha256",
    "checkpoint_problem",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "export_student",
]

CHECKPOINT_FORMAT = "featdistill.train.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^epoch_(\d+)\.pt$")
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------------
# what to save
# ---------------------------------------------------------------------------------------------------------


def frozen_state_keys(module: nn.Module) -> set[str]:
    """State-dict keys of the maximal frozen sub-modules of ``module`` outside ``module.student``.

    A sub-module is frozen when it has at least one parameter and none requires grad — the teacher.  Its
    buffers (BN statistics) go with it.  The student is always kept whole, even a partly frozen one, because
    it is what the run produces.  Modules with buffers but no parameters (an affine-free BN in an adapter)
    are kept: they may hold running statistics the training changes.
    """
    student = getattr(module, "student", None)
    student_prefixes = {name for name, m in module.named_modules() if student is not None and m is student}
    frozen: list[str] = []
    for name, sub in module.named_modules():
        if name == "":
            continue
        if any(name == p or name.startswith(p + ".") for p in student_prefixes):
            continue
        if any(name.startswith(p + ".") for p in frozen):
            continue
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.append(name)
    keys = module.state_dict().keys()
    return {k for k in keys if any(k.startswith(p + ".") for p in frozen)}


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without :func:`frozen_state_keys` (what a checkpoint stores)."""
    skip = frozen_state_keys(module)
    return {k: v for k, v in module.state_dict().items() if k not in skip}


def capture_rng_state() -> dict[str, Any]:
    """This process's global RNG states, as tensors and primitives only (``weights_only``-loadable)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`.  CUDA states are restored only onto as many devices."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------------------


def content_sha256(obj: Any) -> str:
    """sha256 of a checkpoint's content (its ``"sha256"`` entry excluded): the structure, every dict key,
    every number and string, and each tensor's dtype, shape and raw bytes.  Independent of the file's zip
    layout and of the device tensors were loaded onto."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"T|{t.dtype}|{tuple(v.shape)}|".encode())
            if t.numel():
                h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(v, Mapping):
            keys = sorted(v, key=lambda k: (type(k).__name__, str(k)))
            h.update(f"D{len(keys)}|".encode())
            for k in keys:
                h.update(f"{type(k).__name__}:{k!r}=".encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}|".encode())
            for x in v:
                walk(x)
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())

    walk({k: v for k, v in obj.items() if k != "sha256"} if isinstance(obj, Mapping) else obj)
    return h.hexdigest()


def save_checkpoint(path: Path | str, payload: Mapping[str, Any]) -> Path:
    """Atomically ``torch.save`` ``payload`` (tagged with format, version and its :func:`content_sha256`)."""
    obj = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    obj["sha256"] = content_sha256(obj)
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True``; any problem → :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / ... for bad files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}). Delete it to resume from the previous "
            "checkpoint, or start a new run."
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a featdistill training checkpoint (no format tag {CHECKPOINT_FORMAT!r}); "
            "point resume at a run directory written by featdistill.train.Trainer"
        )
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {obj.get('version')!r}; this featdistill reads version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "global_step", "rng", "config") if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}; it is incomplete")
    recorded = obj.get("sha256")
    if recorded is None:
        log.warning("checkpoint %s has no checksum (written by an older featdistill); loading it unverified", path)
    else:
        digest = content_sha256(obj)
        if digest != recorded:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its content sha256 {digest[:16]}… differs from the recorded "
                f"{str(recorded)[:16]}… (a damaged byte in a weight or state). Delete it to resume from the previous "
                "checkpoint, or start a new run."
            )
    return obj


def checkpoint_problem(path: Path | str) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from (``None`` when it loads and matches its checksum)."""
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        return str(err).split(". Delete it", 1)[0]
    return None


# ---------------------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------------------


def checkpoint_path(run_dir: Path | str, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch_0003.pt`` for the checkpoint written after ``epoch`` completed epochs."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"


def list_checkpoints(run_dir: Path | str) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the finished checkpoints in ``run_dir``, oldest first (temp files ignored)."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path | str, verify: bool = True) -> Path | None:
    """The newest intact checkpoint in ``run_dir`` (``None`` when there is none at all).

    With ``verify`` (the default; what resume uses) each candidate, newest first, is loaded and checked against
    its checksum (:func:`checkpoint_problem`): damaged newer ones are skipped with a warning naming them and the
    checkpoint used; when every checkpoint is damaged, :class:`CheckpointError` names each one and its reason.
    ``verify=False`` returns the newest file without reading it."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    if not verify:
        return found[-1][1]
    bad: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            if bad:
                log.warning(
                    "checkpoint %s is damaged (%s); resuming from the previous good checkpoint %s instead",
                    ", ".join(str(p) for p, _ in bad),
                    "; ".join(r for _, r in bad),
                    path,
                )
            return path
        bad.append((path, problem))
    raise CheckpointError(
        f"cannot resume {run_dir}: no intact checkpoint — "
        + "; ".join(f"{p.name}: {r}" for p, r in bad)
        + ". Start a new run (without --resume, in another --run-dir) or restore the checkpoint file"
    )


def prune_checkpoints(run_dir: Path | str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints and stale temp files of killed writes."""
    found = list_checkpoints(run_dir)
    for _, p in found[: max(0, len(found) - keep)]:
        p.unlink(missing_ok=True)
    d = Path(run_dir) / CHECKPOINT_DIR
    if d.is_dir():
        for p in d.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# the exported student
# ---------------------------------------------------------------------------------------------------------


def _jsonable(spec: Any) -> Any:
    if spec is None:
        return {}
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json")
    import dataclasses

    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return dataclasses.asdict(spec)
    return spec


def export_student(student: nn.Module, run_dir: Path | str, spec: Any = None) -> Path:
    """Write ``run_dir/student.safetensors`` (atomically) and ``run_dir/student_meta.json``.

    Tensors are made contiguous (channels_last parameters are not) and cloned (safetensors refuses tensors
    that share storage, e.g. tied weights) on the CPU.  ``spec`` (the distiller's ``student_spec``: model
    name and kwargs) lets ``build_model(**spec)`` + ``load_state_dict`` rebuild the student; ``{}`` if absent.
    """
    from safetensors.torch import save as st_save

    run_dir = Path(run_dir)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in student.state_dict().items()}
    data = st_save(tensors, metadata={"format": "pt"})
    path = atomic_write(run_dir / "student.safetensors", lambda f: f.write(data))
    atomic_write_text(run_dir / "student_meta.json", json.dumps(_jsonable(spec), indent=2, default=str) + "\n")
    return path


def iter_state_mismatch(
    expected: Iterable[str], got: Iterable[str], allowed_missing: Iterable[str]
) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)`` keys between a model and a checkpoint, ignoring ``allowed_missing``."""
    exp, have, ok = set(expected), set(got), set(allowed_missing)
    return sorted(exp - have - ok), sorted(have - exp)
