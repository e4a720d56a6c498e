"""DOT (Distillation-Oriented Trainer): separate task / distillation momenta, as mdistiller's ``dot.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from _trainer_toys import ToyDistiller, ToyLoader, make_data
from featdistill.train import TrainConfig, TrainConfigError, Trainer, TrainerCallback, latest_checkpoint
from featdistill.train.checkpoint import checkpoint_path, load_checkpoint, trainable_state_dict
from featdistill.train.dot import DOT, dot_step
from featdistill.train.trainer import build_optimizer


class _Net(nn.Module):
    """body + head (both losses) and an adapter (distillation loss only) and an aux head (task loss only)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Linear(4, 3).double()
        self.adapter = nn.Linear(3, 2).double()
        self.aux = nn.Linear(3, 1).double()
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def losses(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.body(x))
        task = ((h.sum(1) - y) ** 2).mean() + (self.aux(h.detach()) ** 2).mean()
        kd = ((self.adapter(h) - t) ** 2).mean() + 0.1 * (h**2).mean()
        return {"ce": task, "kd": kd}


def _batches(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(5, 4, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64),
            torch.randn(5, 2, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_delta_zero_equals_sgd_momentum_on_the_summed_loss(wd):
    a, b = _Net(), _Net()
    # two groups (an adapter at another lr, as Method.lr_scales gives); the adapter gets only distillation
    # gradients: with weight decay the code skips it on that buffer's first step, so compare it at wd = 0
    groups = lambda m: [  # noqa: E731
        {"params": [*m.body.parameters(), *m.aux.parameters()], "weight_decay": wd},
        {"params": list(m.adapter.parameters()), "lr": 0.02, "weight_decay": 0.0},
    ]
    dot = DOT.from_delta(groups(a), lr=0.1, momentum=0.9, delta=0.0)
    sgd = torch.optim.SGD(groups(b), lr=0.1, momentum=0.9)
    for x, y, t in _batches():
        dot_step(dot, a.losses(x, y, t), "ce")
        sgd.zero_grad()
        sum(b.losses(x, y, t).values()).backward()
        sgd.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12), n
    state = dot.state[a.body.weight]
    assert set(state) == {"momentum_buffer", "momentum_kd_buffer"}
    assert "momentum_kd_buffer" not in dot.state[a.aux.weight]  # task-only parameter
    assert "momentum_buffer" not in dot.state[a.adapter.weight]  # distillation-only parameter


def test_two_steps_by_hand():
    # one scalar p; task loss 3p (g = 3), distillation loss p² (k = 2p); lr 0.1, wd 0.01, momenta 0.8 / 0.95
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = DOT([p], lr=0.1, momentum=0.8, momentum_kd=0.95, weight_decay=0.01)
    for _ in range(2):
        dot_step(opt, {"ce": 3 * p.sum(), "kd": (p**2).sum()}, "ce")
    # step 1 at p = 1: b = 3 + 0.01·1 = 3.01, c = k = 2           → p = 1 − 0.1·3.01 − 0.1·2 = 0.499
    # step 2 at p = 0.499: b = 0.8·3.01 + 3 + 0.01·0.499, c = 0.95·2 + 2·0.499
    b2 = 0.8 * 3.01 + 3 + 0.01 * 0.499
    c2 = 0.95 * 2 + 2 * 0.499
    want = 0.499 - 0.1 * b2 - 0.1 * c2
    assert p.item() == pytest.approx(want, abs=1e-14)
    assert opt.state[p]["momentum_buffer"].item() == pytest.approx(b2, abs=1e-14)
    assert opt.state[p]["momentum_kd_buffer"].item() == pytest.approx(c2, abs=1e-14)


def test_distillation_only_and_task_only_parameters_use_the_mean_momentum():
    # the code: a parameter with one of the two gradients uses (m_task + m_kd)/2, and a distillation-only one gets
    # its weight decay from the second step on
    p = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    q = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = DOT([p, q], lr=0.5, momentum=0.7, momentum_kd=0.9, weight_decay=0.1)
    for _ in range(2):
        dot_step(opt, {"ce": q.sum(), "kd": p.sum()}, "ce")
    # p (kd only): c1 = 1 → p = 1.5; c2 = 0.8·1 + 1 + 0.1·1.5 = 1.95 → p = 1.5 − 0.975
    assert p.item() == pytest.approx(1.5 - 0.5 * 1.95, abs=1e-14)
    # q (task only): b1 = 1 + 0.1 = 1.1 → q = 0.45; b2 = 0.8·1.1 + 1 + 0.045 → q = 0.45 − 0.5·b2
    assert q.item() == pytest.approx(0.45 - 0.5 * (0.8 * 1.1 + 1 + 0.045), abs=1e-14)


def test_config_validation():
    with pytest.raises(ValueError, match="momentum ± dot_delta"):
        TrainConfig(optimizer="dot", momentum=0.95, dot_delta=0.075)
    with pytest.raises(ValueError, match="unset grad_clip"):
        TrainConfig(optimizer="dot", grad_clip=1.0)
    cfg = TrainConfig(optimizer="dot", momentum=0.9, dot_delta=0.075, weight_decay=5e-4, lr=0.05)
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], cfg)
    g = opt.param_groups[0]
    assert isinstance(opt, DOT) and g["momentum"] == pytest.approx(0.825) and g["momentum_kd"] == pytest.approx(0.975)
    with pytest.raises(TrainConfigError):
        TrainConfig.from_dict({"optimizer": "dot", "dot_delta": 1.5})


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.step:
            raise _Killed


def _loaders():
    x, y = make_data(40)
    xe, ye = make_data(20, seed=1)
    return ToyLoader(x, y, 8, seed=5), ToyLoader(xe, ye, 10, shuffle=False)


def test_trainer_with_dot_resumes_bit_identically(tmp_path: Path):
    cfg = TrainConfig(
        epochs=3, optimizer="dot", lr=0.1, momentum=0.9, dot_delta=0.075, schedule="cosine", precision="fp32",
        device="cpu", progress=False, log_every=2, seed=7,
    )  # fmt: skip
    full_d = ToyDistiller(seed=0, dropout=0.3)
    train, ev = _loaders()
    full = Trainer(full_d, train, ev, cfg, tmp_path / "full").fit()
    killed = tmp_path / "killed"
    train, ev = _loaders()
    with pytest.raises(_Killed):
        Trainer(ToyDistiller(seed=0, dropout=0.3), train, ev, cfg, killed, callbacks=[_KillAt(7)]).fit()
    assert latest_checkpoint(killed) == checkpoint_path(killed, 1)
    state = load_checkpoint(checkpoint_path(killed, 1))["optimizer"]["state"]
    assert any("momentum_kd_buffer" in s for s in state.values())  # the distillation momentum is checkpointed
    resumed_d = ToyDistiller(seed=99, dropout=0.3)
    train, ev = _loaders()
    resumed = Trainer(resumed_d, train, ev, cfg, killed, resume=True).fit()
    want, got = trainable_state_dict(full_d), trainable_state_dict(resumed_d)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert resumed.global_step == full.global_step == 15
    # and DOT is not SGD: the same run with plain SGD ends elsewhere
    sgd_d = ToyDistiller(seed=0, dropout=0.3)
    train, ev = _loaders()
    Trainer(sgd_d, train, ev, cfg.model_copy(update={"optimizer": "sgd"}), tmp_path / "sgd").fit()
    assert not torch.equal(trainable_state_dict(sgd_d)["student.fc.weight"], want["student.fc.weight"])


def test_a_cifar100_dot_config_trains_two_dot_steps_with_a_real_method():
    import featdistill
    from featdistill.config import load_config
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.models import build_model

    path = Path(featdistill.__file__).parent / "configs" / "cifar100" / "dotkd_resnet56_resnet20.yaml"
    cfg = load_config(path)
    assert cfg.train.optimizer == "dot" and cfg.train.dot_delta == 0.075
    torch.manual_seed(0)
    teacher, student = build_model(cfg.teacher.model, num_classes=100), build_model(cfg.student.model, num_classes=100)
    m = cfg.method
    d = Distiller(student, build_method(m.name, **m.params, weights=m.weights), teacher, ce_weight=m.ce_weight)
    batch = {"input": torch.randn(4, 3, 32, 32), "target": torch.tensor([1, 2, 3, 4])}
    d.prepare(batch)
    opt = build_optimizer(d.param_groups(), cfg.train)
    before = student.fc.weight.detach().clone()
    for step in range(2):
        _, losses = d(batch, epoch=float(step))
        assert set(losses) == {"ce", "kd"}
        dot_step(opt, losses, d.task_term)
    assert not torch.equal(before, student.fc.weight)
    assert {"momentum_buffer", "momentum_kd_buffer"} <= set(opt.state[student.fc.weight])
