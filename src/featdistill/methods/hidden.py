"""``hidden``: hidden-state distillation between transformer blocks with a layer map (student i ↔ teacher j)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.adapters import AdapterKind
from featdistill.losses.features import fitnet_loss
from featdistill.methods._util import valid_tokens
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["HiddenStates", "block_paths", "uniform_layer_map"]

#: where the stack of transformer blocks lives in common Hugging Face models (GPT-2, Llama/Mistral/Qwen,
#: BERT/RoBERTa, GPT-NeoX, OPT/BART decoders, DistilBERT)
_BLOCK_LISTS = (
    "transformer.h",
    "model.layers",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "encoder.layer",
    "gpt_neox.layers",
    "model.decoder.layers",
    "distilbert.transformer.layer",
)


def block_paths(model: nn.Module) -> list[str]:
    """Module paths of the model's transformer blocks, in order (``transformer.h.0``, ``transformer.h.1``, …).

    Found by the Hugging Face layouts in ``_BLOCK_LISTS``; a model without one must be given explicit paths."""
    for prefix in _BLOCK_LISTS:
        try:
            blocks = model.get_submodule(prefix)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return [f"{prefix}.{i}" for i in range(len(blocks))]
    raise ValueError(
        f"hidden: no transformer block list found in {type(model).__name__} (looked for {list(_BLOCK_LISTS)}); "
        "give student_paths and teacher_paths (module paths, see `featdistill inspect`)"
    )


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student block ``i`` ↔ teacher block ``⌈(i + 1)·L_t / L_s⌉ − 1``: evenly spaced, last block to last block
    (the "uniform" strategy of TinyBERT/DistilBERT-style layer mapping)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"hidden: need at least one block on each side, got {student_layers} and {teacher_layers}")
    return [(i, -(-(i + 1) * teacher_layers // student_layers) - 1) for i in range(student_layers)]


@register_method
class HiddenStates(Method):
    """Match student block outputs to teacher block outputs: ``L = CE + w·mean_pairs MSE(r_k(h_s^i), h_t^j)``
    over non-padding tokens (``batch["position_mask"]``), ``r_k`` an auto adapter (a linear map when the
    widths differ; identity when they agree).

    The pairs come from ``layer_map`` (``{student_block: teacher_block}`` indices, negative indices allowed),
    from explicit ``student_paths``/``teacher_paths``, or by default from :func:`uniform_layer_map` over the
    blocks :func:`block_paths` finds. The loss is the *mean* over pairs (TinyBERT sums; the mean keeps the
    weight independent of depth). A teacher served from a store has no modules: give ``teacher_paths`` (the
    store's tap paths) then.
    """

    name = "hidden"
    applies_to = frozenset({"any"})
    paper = "TinyBERT (Jiao et al., Findings of EMNLP 2020) / DistilBERT (Sanh et al., 2019): hidden-state KD"
    default_weights = {"hidden": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        layer_map: Mapping[Any, Any] | None = None,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        adapter: AdapterKind | None = "auto",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if (student_paths is None) != (teacher_paths is None):
            raise ValueError("hidden: give both student_paths and teacher_paths, or neither")
        if student_paths is not None and len(student_paths) != len(teacher_paths or []):
            raise ValueError(
                f"hidden: {len(student_paths)} student paths vs {len(teacher_paths or [])} teacher paths; "
                "give one teacher path per student path"
            )
        if layer_map is not None and student_paths is not None:
            raise ValueError("hidden: give layer_map or student_paths/teacher_paths, not both")
        self.layer_map = {int(k): int(v) for k, v in (layer_map or {}).items()} or None
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.adapter = adapter

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.student_paths is not None:
            return
        s_blocks = block_paths(student)
        if teacher is None:
            raise ValueError("hidden: the teacher is not a live model; give student_paths and teacher_paths")
        t_blocks = block_paths(teacher)
        pairs = sorted(self.layer_map.items()) if self.layer_map else uniform_layer_map(len(s_blocks), len(t_blocks))
        try:
            self.student_paths = [s_blocks[i] for i, _ in pairs]
            self.teacher_paths = [t_blocks[j] for _, j in pairs]
        except IndexError:
            raise ValueError(
                f"hidden: layer_map {dict(pairs)} names a block outside the student's {len(s_blocks)} or the "
                f"teacher's {len(t_blocks)} blocks"
            ) from None

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"hidden{k}": TapSpec(p) for k, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"hidden{k}": TapSpec(p) for k, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        for key in self.student_taps():
            self.add_adapter(key, student_feats[key], teacher_feats[key], self.adapter)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        mask = batch.get("position_mask")
        terms = [
            fitnet_loss(
                valid_tokens(self.adapters[key](student_feats[key]), mask), valid_tokens(teacher_feats[key], mask)
            )
            for key in self.student_taps()
        ]
        return {"hidden": torch.stack(terms).mean()}
