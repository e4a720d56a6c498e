"""Capture intermediate features of any ``nn.Module`` by dotted module path.

Why hooks and not a feature contract: users bring their own models (a zoo network, a Hugging Face
transformer built from a config, anything), and rewriting every model to return a list of features by
position is what made the anchor libraries fragile.  A tap names a module path; a forward hook records
its output (or input) while the model runs unchanged.

Partial execution: a teacher whose last tap is ``layer2`` does not need ``layer3`` or the classifier.
With ``stop_early=True`` the hook of the last tap to fire raises a private exception that aborts the
forward pass; :class:`Taps` catches it, so the deeper layers never run.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["TapSpec", "Taps", "TapPathError", "resolve_module", "module_paths", "as_tap_spec"]

LOGITS = ""  # the empty path names the model's own output


class TapPathError(KeyError):
    """A module path that does not exist in the model; the message lists the closest valid paths."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TapSpec:
    """What to capture: the output (or input) of the module at ``path``.

    ``select`` picks one element when the captured value is a tuple/list (an ``int``) or a dict /
    Hugging Face ``ModelOutput`` (a ``str`` key), e.g. ``TapSpec("encoder.layer.3", select=0)`` for the
    hidden states of a BERT layer.  ``select`` applies to containers only: a module that already returns a
    tensor (newer transformers versions do for some layers) is captured as is, so one config works across
    library versions.
    """

    path: str
    kind: Literal["output", "input"] = "output"
    select: int | str | None = None


def as_tap_spec(spec: TapSpec | str | Mapping[str, Any]) -> TapSpec:
    """Accept the short forms used in configs: a bare path string or a mapping of TapSpec fields."""
    if isinstance(spec, TapSpec):
        return spec
    if isinstance(spec, str):
        return TapSpec(spec)
    if isinstance(spec, Mapping):
        return TapSpec(**dict(spec))
    raise TypeError(f"a tap is a path string, a TapSpec or a mapping; got {type(spec).__name__}")


def module_paths(model: nn.Module) -> list[str]:
    """All dotted submodule paths of ``model`` (the root excluded), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at ``path`` or raise :class:`TapPathError` naming the closest valid paths."""
    if path == LOGITS:
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    paths = module_paths(model)
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.4)
    if not close:  # fall back to the paths sharing the longest prefix, then the top level
        head = path.split(".")[0]
        close = [p for p in paths if p.startswith(head)][:5] or [p for p in paths if "." not in p][:8]
    raise TapPathError(
        f"no module at path {path!r} in {type(model).__name__}; closest valid paths: "
        + ", ".join(repr(p) for p in close)
        + " (run `featdistill inspect MODEL` to list every path with its output shape)"
    )


def _select(value: Any, select: int | str | None, where: str) -> torch.Tensor:
    if select is None and isinstance(value, Mapping) and not torch.is_tensor(value):
        # a Hugging Face ModelOutput (or dict): its first tensor, as ``output[0]`` means in transformers
        # (``last_hidden_state`` of an encoder); pass select=<key> for another field
        first = next((v for v in value.values() if torch.is_tensor(v)), None)
        if first is not None:
            value = first
    if select is not None and not torch.is_tensor(value):
        try:
            value = value[select]
        except (KeyError, IndexError, TypeError) as err:
            raise TapPathError(
                f"tap {where!r}: cannot select {select!r} from a {type(value).__name__}"
                + (f" with keys {list(value.keys())}" if isinstance(value, Mapping) else "")
            ) from err
    if isinstance(value, (tuple, list)) and len(value) > 0 and torch.is_tensor(value[0]):
        value = value[0]  # module inputs arrive as an args tuple; the first is the feature
    if not torch.is_tensor(value):
        hint = ", pass select=<key>" if isinstance(value, Mapping) else ", pass select=<index>"
        raise TypeError(f"tap {where!r} captured a {type(value).__name__}, not a tensor{hint}")
    return value


class _StopForward(Exception):
    """Raised inside a hook to abort the forward pass once every tap has fired (partial execution)."""


class Taps:
    """Forward hooks on named module paths.

    Use as a context manager (hooks are removed on exit) or call :meth:`close`::

        with Taps(teacher, {"mid": "layer2"}, stop_early=True) as taps:
            _, feats = taps(x)            # layer3 and fc never run
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Mapping[str, TapSpec | str | Mapping[str, Any]],
        stop_early: bool = False,
    ) -> None:
        self.model = model
        self.specs: dict[str, TapSpec] = {name: as_tap_spec(s) for name, s in taps.items()}
        self.stop_early = stop_early
        self._features: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._wants_output = any(s.path == LOGITS for s in self.specs.values())
        for name, spec in self.specs.items():
            module = resolve_module(model, spec.path)
            if spec.path == LOGITS:
                continue  # taken from the return value
            self._handles.append(module.register_forward_hook(self._make_hook(name, spec), with_kwargs=False))

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def _make_hook(self, name: str, spec: TapSpec):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self._active:
                return  # the model is being called directly, not through these taps: stay out of the way
            if name in self._features:
                # A module called twice per forward (e.g. a shared ReLU) would silently keep only the
                # last call, the fragility torchdistill documents; refuse instead.
                raise RuntimeError(
                    f"tap {name!r}: module {spec.path!r} ran more than once in one forward pass; tap a "
                    "module that runs once (the enclosing block, or a dedicated nn.Identity)"
                )
            value = output if spec.kind == "output" else args
            self._features[name] = _select(value, spec.select, f"{name}={spec.path}")
            if self.stop_early and not self._wants_output and len(self._features) == len(self.specs):
                raise _StopForward

        return hook

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run the model; return ``(output or None if stopped early, {tap name: tensor})``."""
        self._features = {}
        output = None
        self._active = True
        try:
            output = self.model(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            self._active = False
        for name, spec in self.specs.items():
            if spec.path == LOGITS:  # the prediction: a tensor, a tuple element or a ModelOutput key
                from featdistill.tasks.base import read_output

                self._features[name] = read_output(output, spec.select, f"{type(self.model).__name__} (tap {name!r})")
        missing = [n for n in self.specs if n not in self._features]
        if missing:
            raise RuntimeError(
                f"taps {missing} did not fire: their modules were not called in this forward pass "
                "(a module defined but unused, or reached only on another code path)"
            )
        feats, self._features = self._features, {}
        return output, feats

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() or `with` is the contract
        try:
            self.close()
        except Exception:
            pass
