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
in eval mode and moved to the student's device. Not supported here: DeepSpeed/FSDP sharding of the teacher.

On-policy distillation (GKD, Agarwal et al., ICLR 2024, as TRL's ``GKDTrainer``): with ``lmbda = λ`` a fraction
λ of the training batches is replaced by the *student's own* continuations of the batch's prompts
(``prompt_input_ids``/``prompt_attention_mask`` in the batch, or the first ``prompt_length`` tokens of
``input_ids``), sampled at ``generation_temperature`` for ``max_new_tokens`` tokens with the KV cache, under
``no_grad`` — then scored by the teacher through the same loss (labels: the generated tokens; prompt and
padding −100). ``seq_kd=True`` first replaces every batch by the *teacher's* continuations (sequence-level KD).
Which steps are on-policy, and what is sampled, is seeded from ``args.seed`` and the step, so a run repeats.
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
    model_inputs = {k: v for k, v in inputs.items() if k != "labels" and not k.startswith("prompt_")}
    return {"input": model_inputs, "target": inputs["labels"]}


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
        lmbda: float = 0.0,
        seq_kd: bool = False,
        prompt_length: int | None = None,
        max_new_tokens: int = 16,
        generation_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"DistillationTrainer: lmbda is a fraction of batches in [0, 1], got {lmbda!r}")
        if (lmbda > 0 or seq_kd) and max_new_tokens < 1:
            raise ValueError(f"DistillationTrainer: max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if not generation_temperature > 0:
            raise ValueError(f"DistillationTrainer: generation_temperature must be > 0, got {generation_temperature!r}")
        super().__init__(*args, **kwargs)
        self.lmbda, self.seq_kd = float(lmbda), bool(seq_kd)
        self.prompt_length, self.max_new_tokens = prompt_length, int(max_new_tokens)
        self.generation_temperature = float(generation_temperature)
        self.on_policy_steps = 0
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

    # -- on-policy and sequence-level data ------------------------------------------------------------------
    def _prompts(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "prompt_input_ids" in inputs:
            ids = inputs["prompt_input_ids"]
            return ids, inputs.get("prompt_attention_mask", torch.ones_like(ids))
        if self.prompt_length is None:
            raise KeyError(
                "on-policy / sequence-level distillation needs prompts: give batches 'prompt_input_ids' "
                "(+ 'prompt_attention_mask'), or DistillationTrainer(prompt_length=N) to use the first N tokens"
            )
        ids = inputs["input_ids"][:, : self.prompt_length]
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))[:, : self.prompt_length]
        return ids, mask

    def generate_batch(self, generator: nn.Module, inputs: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """``generator``'s sampled continuations of the batch's prompts as a training batch (no gradient)."""
        prompt, prompt_mask = self._prompts(inputs)
        config = getattr(generator, "generation_config", None)
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(config, "eos_token_id", None)
        was_training = generator.training
        generator.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = generator.generate(
                input_ids=prompt,
                attention_mask=prompt_mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.generation_temperature,
                top_k=0,
                use_cache=True,
                pad_token_id=pad,
            )
        generator.train(was_training)
        new = out[:, prompt.shape[1] :]
        mask = torch.cat([prompt_mask, torch.ones_like(new)], dim=1)
        labels = torch.cat([torch.full_like(prompt, -100), new], dim=1)
        if pad is not None:  # tokens after a sequence ended are padding: no loss, not attended
            done = torch.cumsum((new == pad).long(), dim=1) > 1
            mask[:, prompt.shape[1] :][done] = 0
            labels[:, prompt.shape[1] :][done] = -100
        return {"input_ids": out, "attention_mask": mask, "labels": labels}

    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        seed = int(self.args.seed) * 1_000_003 + int(self.state.global_step)
        if self.seq_kd:
            inputs = {**inputs, **self.generate_batch(self.teacher_model, inputs, seed)}
        draw = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        if self.lmbda > 0 and draw < self.lmbda:
            unwrapped = self.accelerator.unwrap_model(model)
            inputs = {**inputs, **self.generate_batch(unwrapped, inputs, seed + 1)}
            self.on_policy_steps += 1
        inputs = {k: v for k, v in inputs.items() if not k.startswith("prompt_")}
        return super().training_step(model, inputs, *args, **kwargs)

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
