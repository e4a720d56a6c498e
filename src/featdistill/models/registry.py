"""The model registry: one explicit dict from zoo name to constructor.

Why a plain dict and a decorator: the design forbids hidden global state and string if-chains (the way
dataset-distillation repos pick networks). A name maps to exactly one constructor; registering the same
name twice is a bug and fails loudly instead of silently replacing a model.

Every constructor has the signature ``fn(num_classes, in_channels, image_size, **kwargs) -> nn.Module`` and
returns a model whose ``forward`` gives logits only and which carries ``stage_paths``, ``embedding_path``
and ``classifier_path`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

ModelFn = Callable[..., nn.Module]

MODELS: dict[str, ModelFn] = {}

# The three arguments every constructor takes; everything else is a model-specific keyword.
_COMMON_ARGS = ("num_classes", "in_channels", "image_size")


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Register ``fn`` under ``name`` in :data:`MODELS`.

    Raises ``ValueError`` on a duplicate name, because two models answering to one name would make a config
    mean different networks depending on import order.
    """

    def decorator(fn: ModelFn) -> ModelFn:
        if name in MODELS:
            raise ValueError(
                f"model name {name!r} is already registered (by {MODELS[name].__module__}."
                f"{MODELS[name].__qualname__}); pick another name"
            )
        MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(MODELS)


def _unknown_name_error(name: str) -> KeyError:
    # Match case-insensitively so that mdistiller spellings ("ShuffleV1", "MobileNetV2") find ours.
    lowered = {n.lower(): n for n in MODELS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(lowered[c]) for c in close)}?" if close else ""
    return KeyError(f"unknown model {name!r}{hint} Available models: {', '.join(list_models())}")


def _check_kwargs(name: str, fn: ModelFn, kwargs: dict[str, object]) -> None:
    """Reject unknown keyword arguments with a message naming the accepted ones.

    Checked against the signature before the call, so a ``TypeError`` raised deep inside a constructor is
    never mistaken for a bad config key.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in _COMMON_ARGS]
    bad = [k for k in kwargs if k not in params]
    if bad:
        raise TypeError(
            f"model {name!r} got unexpected keyword argument(s) {bad}; "
            f"it accepts {accepted if accepted else 'no extra keyword arguments'}"
        )


def build_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs: object
) -> nn.Module:
    """Build zoo model ``name`` for ``in_channels × image_size × image_size`` inputs and ``num_classes``.

    Unknown ``name`` raises ``KeyError`` listing the closest registered names; an unknown keyword raises
    ``TypeError`` listing the keywords the model accepts.
    """
    if name not in MODELS:
        raise _unknown_name_error(name)
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ValueError(
            f"build_model({name!r}): num_classes, in_channels and image_size must be positive, got "
            f"num_classes={num_classes}, in_channels={in_channels}, image_size={image_size}"
        )
    fn = MODELS[name]
    _check_kwargs(name, fn, kwargs)
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
