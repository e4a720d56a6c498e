"""``DistillationTrainer``: featdistill's methods inside a Hugging Face ``transformers.Trainer``.

Why: many LLM users already train with ``Trainer`` (its data collators, gradient accumulation, checkpoints,
logging integrations). This subclass keeps all of that and replaces only ``compute_loss`` with a featdistill
:class:`~featdistill.distiller.Distiller`: the task loss (shifted next-token CE for ``causal-lm``) plus any
recipe — ``kd``, ``divergence`` (forward/reverse KL, JSD(β), skew KL), ``hidden`` (a block layer map with
adapters), ``fitnet``, ``compose`` of several — over the non-padding positions, exactly as ``featdistill
train`` computes them. The method's adapters are trained in an extra optimiser group; they are not part of the
saved student (``save_model`` writes the plain HF model).

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=TrainingArguments(...), train_dataset=ds,
        data_collator=collator, method="divergence", method_params={"kind": "jsd", "beta": 0.5},
    )
    trainer.train()

Batches are the HF convention: ``input_ids``, ``attention_mask`` (and any other model inputs) plus ``labels``
with -100 where no loss is taken. Single process or the Trainer's own DDP launch; the teacher is frozen, kept
in eval mode and moved to the student's device. Not supported here: on-policy generation (GKD's λ) and
DeepSpeed/FSDP sharding of the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

try:
    import transformers
except ImportError as err:  # pragma: no cover - the hf extra is a test dependency
    raise ImportError("featdistill.hf_trainer needs transformers: pip install 'featdistill[hf]'") from err

from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.methods.base import Method
from featdistill.tasks import build_task
from featdistill.tasks.base import Task

__all__ = ["DistillationTrainer", "hf_batch"]


def hf_batch(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face batch (model inputs + ``labels``) as featdistill's ``{"input": {...}, "target": labels}``."""
    if "labels" not in inputs:
        raise KeyError(
            f"DistillationTrainer needs batch['labels'] (token ids, -100 where no loss is taken); the batch has "
            f"{sorted(inputs)} — use a collator that adds labels (e.g. DataCollatorForLanguageModeling(mlm=False))"
        )
    return {"input": {k: v for k, v in inputs.items() if k != "labels"}, "target": inputs["labels"]}


class DistillationTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is a featdistill distillation objective (see the module docstring).

    Args (beyond ``Trainer``'s): ``teacher_model`` (frozen), ``method`` (a registered recipe name or a
    :class:`~featdistill.methods.base.Method`), ``method_params`` (its arguments), ``task`` (name or
    :class:`~featdistill.tasks.base.Task`; default ``causal-lm``), ``ce_weight`` (task-loss weight; ``None``
    = the method's reference value).
    """

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module,
        method: str | Method = "kd",
        method_params: Mapping[str, Any] | None = None,
        task: str | Task = "causal-lm",
        ce_weight: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: let Trainer scale accumulation
        teacher_model.eval().requires_grad_(False)
        recipe = method if isinstance(method, Method) else build_method(method, **dict(method_params or {}))
        self.distiller = Distiller(
            self.model,
            recipe,
            teacher_model,
            ce_weight=ce_weight,
            task=task if isinstance(task, Task) else build_task(task),
        )
        self.teacher_model = teacher_model
        self.last_terms: dict[str, float] = {}

    # -- the method's own parameters (adapters) train beside the student ------------------------------------
    def prepare_distiller(self, inputs: Mapping[str, Any] | None = None) -> None:
        """Build the method's adapters from one batch's shapes (the first train examples, collated: no RNG is
        drawn, so the Trainer's data order is untouched) and put the teacher on the student's device."""
        if self.distiller.prepared:
            return
        device = next(self.model.parameters()).device
        self.teacher_model.to(device)
        if inputs is None:
            examples = [self.train_dataset[i] for i in range(min(2, len(self.train_dataset)))]
            inputs = self._prepare_inputs(self.data_collator(examples))
        self.distiller.prepare(hf_batch(inputs))
        self.distiller.method.to(device)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """Trainer's optimiser plus one group for the method's adapters, created before the scheduler so the
        schedule covers them too."""
        self.prepare_distiller()
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for p in self.distiller.method.parameters() if p.requires_grad]
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        extra = [p for p in extra if id(p) not in known]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        self.prepare_distiller(inputs)
        was_training = self.distiller.method.training
        self.distiller.method.train(model.training)
        pred, losses = self.distiller(hf_batch(inputs))
        self.distiller.method.train(was_training)
        loss = torch.stack([v.float().reshape(()) for v in losses.values()]).sum()
        self.last_terms = {k: float(v.detach()) for k, v in losses.items()}
        return (loss, {"logits": pred}) if return_outputs else loss
