"""Directory locks for run directories and teacher stores (``filelock``: an OS lock, released when the holder dies).

Why: two ``featdistill train`` into one run directory used to both exit 0 and leave one seed's weights beside
the other's ``config.yaml`` and epoch records; two store builds into one folder raced on its manifest.  Every
writer of such a directory now holds ``DIR/.featdistill.lock`` for as long as it writes:

- a training run (:func:`featdistill.run.run_experiment`, rank 0) refuses at once when the lock is held
  (:class:`DirectoryLockedError`, naming the holder);
- a store build (:func:`featdistill.cache.build_store`, rank 0 of the build) waits for the holder to finish
  and then resumes the finished store (which it verifies and finds complete), or is refused after
  ``lock_timeout`` seconds.

The lock is an advisory ``flock`` (``filelock.FileLock``), so a killed holder never leaves a stale lock.  Who
holds it (pid, host, command, since when) is written beside it in ``.featdistill.lock.owner`` — for the
message only; the OS lock is the truth.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["LOCK_NAME", "DirectoryLockedError", "directory_lock", "lock_holder"]

LOCK_NAME = ".featdistill.lock"
_OWNER = LOCK_NAME + ".owner"


class DirectoryLockedError(RuntimeError):
    """Another process is writing this directory (a run or a store build); the message names it."""


def lock_holder(directory: str | Path) -> str:
    """A short description of the last recorded holder of ``directory``'s lock ("" when unknown)."""
    try:
        info = json.loads((Path(directory) / _OWNER).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {info['pid']} on {info['host']} ({info['what']}) since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _refusal(directory: Path, what: str, waited: float | None) -> DirectoryLockedError:
    holder = lock_holder(directory)
    after = f" after waiting {waited:g} s" if waited else ""
    return DirectoryLockedError(
        f"{directory} is in use by another process{f' — {holder}' if holder else ''}{after}: {what} refused "
        f"(lock {directory / LOCK_NAME}). Wait for it to finish, or use another directory"
    )


@contextmanager
def directory_lock(
    directory: str | Path,
    what: str,
    timeout: float | None = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold ``directory``'s lock (creating the directory) for the ``with`` block.

    ``timeout``: 0 refuses at once when another process holds it, ``None`` waits for as long as it takes,
    a number waits that many seconds; a refusal raises :class:`DirectoryLockedError` naming the holder.
    ``on_wait(message)`` is called once before waiting.  ``what`` names the writer in messages
    (``"featdistill train"``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout is not None and timeout <= 0:
            raise _refusal(d, what, None) from None
        if on_wait is not None:
            holder = lock_holder(d)
            on_wait(f"{d} is in use{f' by {holder}' if holder else ''}; waiting for it to finish")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise _refusal(d, what, timeout) from None
    try:
        try:
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
            owner["argv"] = sys.argv[:8]
            (d / _OWNER).write_text(json.dumps(owner))
        except OSError:
            pass  # informative only
        yield d
    finally:
        lock.release()
