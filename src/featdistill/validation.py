"""One readable line per config error, for every pydantic config in featdistill.

Pydantic's default text is accurate but noisy (URLs, type tags, ``Value error,`` prefixes); a user needs the
key, the value given and the fix. Every config (experiment, train section, cache section, condense) formats
its errors here, so they all read the same: ``train.lr = -1: Input should be greater than 0`` and
``data.batch_sise = 3: unknown key; did you mean batch_size?``. This module imports nothing from featdistill but
:mod:`featdistill.yaml_safe`, so any config module can use it without import cycles.  Values are shown with
:func:`featdistill.yaml_safe.short_repr` (a short, truncated ``repr`` computed with bounded work), never the
``repr`` of the whole value: a huge or alias-expanded value must not make the error message the slow part.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from featdistill.yaml_safe import short_repr

#: longest message text kept per error line (a validator may quote a long value)
MAX_MESSAGE = 2000

__all__ = ["format_validation_error"]


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested model class a location points into (``None`` past a dict, list or plain value)."""
    model: type[BaseModel] | None = root
    for part in path:
        field = getattr(model, "model_fields", {}).get(str(part)) if model is not None else None
        ann = getattr(field, "annotation", None)
        model = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if model is None:
            return None
    return model


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "", title: str = "") -> str:
    """Format ``err`` (raised validating ``model``) as a title line plus one line per error.

    ``prefix`` names the section the model was read from (``"train"``, ``"cache"``; empty for a whole file).
    Unknown keys get the closest valid keys of the (nested) model they were found in.
    """
    head = title or (f"invalid {prefix} config" if prefix else "invalid config")
    lines = [f"{head} ({err.error_count()} error(s)):"]
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        key = ".".join([prefix, *parts] if prefix else parts) or prefix or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, Mapping) or not parts else f" = {short_repr(value)}"
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, tuple(e["loc"][:-1]))
            keys = list(getattr(parent, "model_fields", {})) if parent is not None else []
            close = difflib.get_close_matches(str(e["loc"][-1]), keys, n=3)
            fix = f"did you mean {', '.join(close)}?" if close else f"valid keys here: {', '.join(keys)}"
            lines.append(f"  {key} = {short_repr(value)}: unknown key; {fix}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            msg = msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 1] + "…"
            lines.append(f"  {key}{shown}: {msg}")
    return "\n".join(lines)
