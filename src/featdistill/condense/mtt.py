"""MTT: expert trajectories (with the smooth-expert options) and the unrolled student.

Experts are trained on real data with plain SGD (no momentum, no weight decay, constant lr — the student
must be able to imitate them, MTT issue #8); the parameters after every epoch form a trajectory. The
smooth-expert paper (Shen et al., "Efficient Dataset Distillation through Alignment with Smooth and
High-Quality Expert Trajectories") regularises the experts with gradient clipping and a gradient-norm
penalty so that their trajectories are easier to match. Trajectories are saved with safetensors so the
expensive buffer is trained once and reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .augment import DSA
from .losses import trajectory_loss
from .nets import reinit_
from .real import RealData

__all__ = ["ExpertBuffer", "train_experts", "flat_params", "unflatten", "unrolled_student", "mtt_loss"]


def flat_params(model: nn.Module) -> Tensor:
    """All parameters of ``model`` concatenated (named_parameters order), detached, on CPU."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def unflatten(flat: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Split a flat vector into a ``{name: tensor}`` dict shaped like ``model``'s parameters (views, so
    gradients flow back to ``flat``)."""
    out: dict[str, Tensor] = {}
    offset = 0
    for name, p in model.named_parameters():
        n = p.numel()
        out[name] = flat[offset : offset + n].view_as(p)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} values, model has {offset} parameters")
    return out


@dataclass
class ExpertBuffer:
    """Trajectories ``(epochs + 1, P)`` (row 0 = initialisation) plus how they were trained."""

    trajectories: list[Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Number of training epochs recorded (rows − 1)."""
        return int(self.trajectories[0].shape[0]) - 1

    def save(self, path: str | Path) -> Path:
        """One safetensors file, ``expert_{i}`` per trajectory, metadata JSON-encoded."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"expert_{i}": t.contiguous() for i, t in enumerate(self.trajectories)}
        save_file(
            tensors,
            str(path),
            metadata={"format": "featdistill.experts/1", "metadata": json.dumps(self.metadata, default=repr)},
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExpertBuffer:
        """Read a buffer written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != "featdistill.experts/1":
                raise ValueError(f"{path} is not a featdistill expert buffer")
            keys = sorted(f.keys(), key=lambda k: int(k.split("_")[1]))
            trajs = [f.get_tensor(k) for k in keys]
        return cls(trajs, json.loads(header.get("metadata", "{}")))


def train_experts(
    real: RealData,
    net_factory: Callable[[], nn.Module],
    generator: torch.Generator,
    num_experts: int = 2,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 256,
    dsa: DSA | None = None,
    clip_grad_norm: float | None = None,
    grad_penalty: float = 0.0,
    device: str | torch.device = "cpu",
) -> ExpertBuffer:
    """Train ``num_experts`` networks from fresh initialisations and record their parameters every epoch.

    ``clip_grad_norm`` clips the total gradient norm of every expert step; ``grad_penalty`` adds
    ``λ‖∇_θ CE‖²`` to the expert loss (double backward). Both slow the experts' parameter changes, which is
    what makes the trajectories "smooth" and easier for a synthetic set to follow.
    """
    device = torch.device(device)
    net = net_factory().to(device)
    x_all = real.images.to(device)
    y_all = real.targets.to(device)
    trajs = []
    for _ in range(num_experts):
        reinit_(net, generator)
        net.train()
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
        rows = [flat_params(net)]
        for _epoch in range(epochs):
            perm = torch.randperm(x_all.shape[0], generator=generator).to(device)
            for start in range(0, x_all.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                x = x_all[idx]
                if dsa is not None:
                    x = dsa(x, generator, per_sample=True)
                loss = F.cross_entropy(net(x), y_all[idx])
                if grad_penalty > 0:
                    grads = torch.autograd.grad(loss, params, create_graph=True)
                    loss = loss + grad_penalty * sum((g**2).sum() for g in grads)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, clip_grad_norm)
                opt.step()
            rows.append(flat_params(net))
        trajs.append(torch.stack(rows))
    meta = {
        "num_experts": num_experts,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "dsa": None if dsa is None else dsa.strategy,
        "clip_grad_norm": clip_grad_norm,
        "grad_penalty": grad_penalty,
        "num_params": int(trajs[0].shape[1]),
    }
    return ExpertBuffer(trajs, meta)


def unrolled_student(
    net: nn.Module,
    start: Tensor,
    syn: Tensor,
    labels: Tensor,
    syn_lr: Tensor,
    steps: int,
    generator: torch.Generator,
    batch_syn: int | None = None,
    dsa: DSA | None = None,
) -> Tensor:
    """θ after ``steps`` SGD steps on (augmented) synthetic minibatches with step size ``syn_lr``, kept on
    the autograd graph (``create_graph``) so the trajectory loss reaches the pixels and the lr."""
    theta = start.detach().clone().requires_grad_(True)
    n = syn.shape[0]
    bs = n if batch_syn is None else min(batch_syn, n)
    soft = labels.dim() == 2
    for _ in range(steps):
        idx = torch.randperm(n, generator=generator)[:bs].to(syn.device)
        x = syn[idx]
        if dsa is not None:
            x = dsa(x, generator, per_sample=True)
        out = functional_call(net, unflatten(theta, net), (x,))
        y = labels[idx]
        ce = -(y * F.log_softmax(out, 1)).sum(1).mean() if soft else F.cross_entropy(out, y)
        (g,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - syn_lr * g
    return theta


def mtt_loss(
    net: nn.Module,
    syn: Tensor,
    labels: Tensor,
    syn_lr: Tensor,
    expert_start: Tensor,
    expert_target: Tensor,
    steps: int,
    generator: torch.Generator,
    batch_syn: int | None = None,
    dsa: DSA | None = None,
) -> Tensor:
    """The normalised trajectory-matching loss for one (expert, start epoch) draw."""
    end = unrolled_student(net, expert_start.to(syn.device), syn, labels, syn_lr, steps, generator, batch_syn, dsa)
    return trajectory_loss(end, expert_start.to(syn.device), expert_target.to(syn.device))
