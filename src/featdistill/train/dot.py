"""DOT — the Distillation-Oriented Trainer (Zhao et al., ICCV 2023): separate momenta for the task and the
distillation gradients.

"DOT: A Distillation-Oriented Trainer" (Borui Zhao, Quan Cui, Renjie Song, Jiajun Liang, ICCV 2023); official code
``megvii-research/mdistiller`` ``mdistiller/engine/dot.py`` (``DistillationOrientedTrainer``) and the ``DOT``
trainer in ``mdistiller/engine/trainer.py``.  SGD keeps one momentum buffer for the gradient of the total loss;
DOT back-propagates the distillation loss and the task loss **separately** and keeps one buffer for each, with a
larger momentum for distillation (``μ + Δ``) than for the task (``μ − Δ``), which the paper shows lets the
distillation loss converge further ("breaking the trade-off" between the two).  Usable with any method: the
Trainer calls :func:`dot_step` with the Distiller's named terms (``train.optimizer: dot``, ``train.dot_delta``).

Per parameter ``p`` with task gradient ``g`` and distillation gradient ``k`` (weight decay λ, lr η), as coded::

    task buffer  b ← g + λp                       on the first step
                 b ← (μ−Δ)·b + g + λp             when p also has a distillation gradient
                 b ← μ·b + g + λp                 when it has only a task gradient   (μ = the mean of the momenta)
    distill buf  c ← k                            on the first step (no weight decay, as in the code)
                 c ← (μ+Δ)·c + k                  when p also has a task gradient (λp is in the task part)
                 c ← μ·c + k + λp                 when it has only a distillation gradient (an adapter)
    p ← p − η·b − η·c

With Δ = 0 this is SGD with momentum μ on the summed gradient (the two buffers add up to SGD's buffer; equal up to
float rounding).  Differences from the code: parameter groups are supported (each with its own lr, e.g. an
adapter's ``lr_scale``; the code asserts a single group), dampening is 0 (the code's default), and the two
gradients come from two backward passes of one forward, the first retaining the graph, as the code does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["DOT", "dot_step"]


class DOT(torch.optim.Optimizer):
    """SGD with separate task / distillation momentum buffers (see the module docstring).

    Use: ``zero_grad(); distill.backward(retain_graph=True); step_kd(); zero_grad(); task.backward(); step()``
    (:func:`dot_step` does exactly this).  ``momentum`` is the task momentum ``μ − Δ``, ``momentum_kd`` the
    distillation momentum ``μ + Δ`` (:meth:`from_delta` builds both from μ and Δ).  The buffers are optimiser
    state (``momentum_buffer``, ``momentum_kd_buffer``), so they are in ``state_dict()`` and a checkpoint resumes
    exactly; the captured distillation gradients live only between :meth:`step_kd` and :meth:`step`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        momentum_kd: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        for name, v in (
            ("lr", lr),
            ("momentum", momentum),
            ("momentum_kd", momentum_kd),
            ("weight_decay", weight_decay),
        ):
            if not v >= 0.0:
                raise ValueError(f"DOT: {name} must be >= 0, got {v!r}")
        defaults = {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._kd_grads: dict[Tensor, Tensor] = {}

    @classmethod
    def from_delta(
        cls, params: Iterable[Any], lr: float, momentum: float = 0.9, delta: float = 0.075, weight_decay: float = 0.0
    ) -> DOT:
        """mdistiller's construction: task momentum ``μ − Δ``, distillation momentum ``μ + Δ`` (CIFAR: Δ 0.075)."""
        if not (0.0 <= momentum - delta and momentum + delta < 1.0):
            raise ValueError(f"DOT: momentum ± delta must stay in [0, 1), got momentum {momentum} and delta {delta}")
        return cls(params, lr=lr, momentum=momentum - delta, momentum_kd=momentum + delta, weight_decay=weight_decay)

    @torch.no_grad()
    def step_kd(self) -> None:
        """Capture the current gradients (of the distillation loss) for the next :meth:`step`."""
        self._kd_grads = {
            p: p.grad.detach().clone() for group in self.param_groups for p in group["params"] if p.grad is not None
        }

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Update with the current gradients (of the task loss) and the captured distillation gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads, self._kd_grads = self._kd_grads, {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_kd = group["momentum"], group["momentum_kd"]
            m_mean = (m_task + m_kd) / 2.0
            for p in group["params"]:
                g, k = p.grad, kd_grads.get(p)
                state = self.state[p]
                if g is not None:  # the task gradient (weight decay belongs to it)
                    d = g.add(p, alpha=wd) if wd != 0 else g
                    if m_task != 0:
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = torch.clone(d).detach()
                        else:
                            buf.mul_(m_task if k is not None else m_mean).add_(d)
                        d = buf
                    p.add_(d, alpha=-lr)
                if k is not None:  # the distillation gradient
                    buf = state.get("momentum_kd_buffer")
                    if buf is None:
                        buf = state["momentum_kd_buffer"] = torch.clone(k).detach()
                    elif g is not None:
                        buf.mul_(m_kd).add_(k)
                    else:
                        buf.mul_(m_mean).add_(k.add(p, alpha=wd) if wd != 0 else k)
                    p.add_(buf, alpha=-lr)
        return loss


def dot_step(optimizer: DOT, losses: Mapping[str, Tensor], task_term: str) -> None:
    """One DOT update from a Distiller's named terms: ``task_term`` (``ce``, ``mse``, …) is the task loss, every
    other term is summed into the distillation loss.  Two backward passes over the one forward (the first keeps
    the graph), as mdistiller's ``DOT.train_iter``; a step without distillation terms is an ordinary SGD step
    at the mean momentum."""
    task = losses.get(task_term)
    distill = [v.float() for k, v in losses.items() if k != task_term and v.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    if distill:
        torch.stack([d.reshape(()) for d in distill]).sum().backward(retain_graph=task is not None)
    optimizer.step_kd()
    optimizer.zero_grad(set_to_none=True)
    if task is not None and task.requires_grad:
        task.float().backward()
    optimizer.step()
