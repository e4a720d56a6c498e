"""``condense()``: one loop, one explicit generator, a method registry.

Each method is a :class:`Condenser` — how to initialise the synthetic set, which network policy it uses
(a fresh random network per iteration for DC/DSA/DM/DataDAM, an expert buffer for MTT) and one matching
loss. The loop owns the optimiser, seeding, the time budget and the provenance record, so the methods
cannot drift apart in those details (the anchor scripts each re-implement them).

Gradients are taken with ``torch.autograd.grad`` with respect to the synthetic tensors only: the network
never accumulates ``.grad``, which is both cheaper and a property the tests check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import DSA, default_strategy, flip_pairs
from .coreset import herding_order, kmeans_representatives, random_indices
from .losses import attention_distance, get_loops, gradient_distance, mean_embedding_distance
from .mtt import ExpertBuffer, mtt_loss, train_experts
from .nets import capture, embed, has_batchnorm, make_backbone_factory, reinit_, stage_paths
from .real import RealData, as_real_data, check_ipc
from .synthetic import SyntheticSet

__all__ = [
    "condense",
    "CONDENSERS",
    "Condenser",
    "CondenseContext",
    "METHODS",
    "register_condenser",
    "dm_loss",
    "datadam_loss",
    "dc_loss",
    "class_features",
]


# ---------------------------------------------------------------------------------------------- losses
def _split(x: Tensor, sizes: list[int]) -> list[Tensor]:
    return list(torch.split(x, sizes))


def class_features(
    net: nn.Module,
    batches: list[Tensor],
    paths: list[str],
    dsa: DSA | None,
    params: list[Any] | None,
) -> list[dict[str, Tensor]]:
    """Per-class features at ``paths`` for a list of class batches, all classes in one forward.

    Each class batch is augmented with its own DSA draw (``params[c]``) first. One joint forward is what
    the BN variants need (BN must see several classes) and is equivalent for instance norm, which has no
    cross-sample interaction; it is also faster on CPU than ten small forwards.
    """
    if dsa is not None and params is not None:
        batches = [dsa.apply(b, p) for b, p in zip(batches, params)]
    sizes = [b.shape[0] for b in batches]
    with capture(net, paths) as feats:
        net(torch.cat(batches))
    return [dict(zip(paths, parts)) for parts in zip(*(_split(feats[p], sizes) for p in paths))]


def _draw(dsa: DSA | None, generator: torch.Generator, k: int, hw: tuple[int, int]) -> list[Any] | None:
    return None if dsa is None else [dsa.sample(generator, 1, hw) for _ in range(k)]


def dm_loss(
    net: nn.Module,
    real_by_class: list[Tensor],
    syn_by_class: list[Tensor],
    generator: torch.Generator,
    dsa: DSA | None = None,
    fyi: bool = False,
) -> Tensor:
    """DM: Σ_c ‖mean φ(DSA(real_c)) − mean φ(DSA(S_c))‖², the same DSA draw for both sides of a class.

    Real features are computed without a graph (φ is frozen and the real images are constants).
    """
    path = getattr(net, "embedding_path", None)
    if path is None:
        raise AttributeError(f"{type(net).__name__} needs an `embedding_path` for DM")
    hw = (syn_by_class[0].shape[2], syn_by_class[0].shape[3])
    params = _draw(dsa, generator, len(real_by_class), hw)
    syn_in = [flip_pairs(s) for s in syn_by_class] if fyi else syn_by_class
    with torch.no_grad():
        real_f = class_features(net, real_by_class, [path], dsa, params)
    syn_f = class_features(net, syn_in, [path], dsa, params)
    total = syn_by_class[0].new_zeros(())
    for rf, sf in zip(real_f, syn_f):
        total = total + mean_embedding_distance(rf[path], sf[path])
    return total


def datadam_loss(
    net: nn.Module,
    real_by_class: list[Tensor],
    syn_by_class: list[Tensor],
    generator: torch.Generator,
    dsa: DSA | None = None,
    p: float = 4.0,
    lam: float = 0.01,
    layers: list[str] | None = None,
) -> Tensor:
    """DataDAM: Σ_c [ 100·Σ_l MSE(mean attention maps) + 100·λ·MSE(mean embeddings) ].

    ``layers`` default to the model's stages except the last (DataDAM excludes the final ReLU because the
    embedding term already covers it).
    """
    path = net.embedding_path
    layers = list(layers) if layers is not None else stage_paths(net)[:-1]
    paths = [*layers, path]
    hw = (syn_by_class[0].shape[2], syn_by_class[0].shape[3])
    params = _draw(dsa, generator, len(real_by_class), hw)
    with torch.no_grad():
        real_f = class_features(net, real_by_class, paths, dsa, params)
    syn_f = class_features(net, syn_by_class, paths, dsa, params)
    total = syn_by_class[0].new_zeros(())
    for rf, sf in zip(real_f, syn_f):
        if layers:
            total = total + 100.0 * attention_distance([rf[lp] for lp in layers], [sf[lp] for lp in layers], p)
        total = total + 100.0 * lam * F.mse_loss(rf[path].flatten(1).mean(0), sf[path].flatten(1).mean(0))
    return total


def dc_loss(
    net: nn.Module,
    real_by_class: list[Tensor],
    syn_by_class: list[Tensor],
    generator: torch.Generator,
    dsa: DSA | None = None,
    fyi: bool = False,
    metric: str = "ours",
    syn_labels_by_class: list[Tensor] | None = None,
) -> Tensor:
    """DC/DSA: Σ_c D(∇θ CE(real_c), ∇θ CE(S_c)); the synthetic gradient keeps its graph (second order).

    With soft labels the synthetic CE is the soft cross-entropy against them.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("DC needs a network with trainable parameters (requires_grad=True)")
    hw = (syn_by_class[0].shape[2], syn_by_class[0].shape[3])
    total = syn_by_class[0].new_zeros(())
    for c, (real_c, syn_c) in enumerate(zip(real_by_class, syn_by_class)):
        draw = None if dsa is None else dsa.sample(generator, 1, hw)
        xr = real_c if draw is None else dsa.apply(real_c, draw)
        s = flip_pairs(syn_c) if fyi else syn_c
        xs = s if draw is None else dsa.apply(s, draw)
        yr = torch.full((xr.shape[0],), c, dtype=torch.long, device=xr.device)
        g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
        out_s = net(xs)
        if syn_labels_by_class is not None and syn_labels_by_class[c].dim() == 2:
            ys = syn_labels_by_class[c]
            ys = torch.cat([ys, ys]) if fyi else ys
            ce_s = -(ys * F.log_softmax(out_s, 1)).sum(1).mean()
        else:
            ce_s = F.cross_entropy(out_s, torch.full((xs.shape[0],), c, dtype=torch.long, device=xs.device))
        g_syn = torch.autograd.grad(ce_s, params, create_graph=True)
        total = total + gradient_distance(g_real, list(g_syn), metric)
    return total


# ---------------------------------------------------------------------------------------------- context
def _frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with ``requires_grad`` off: a teacher is read, never trained, by a condenser."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class CondenseContext:
    """What every condenser needs: the real data, the generator, one network re-drawn on demand."""

    def __init__(
        self,
        real: RealData,
        ipc: int,
        net_factory: Callable[[], nn.Module],
        generator: torch.Generator,
        device: torch.device,
        dsa: DSA | None,
        batch_real: int,
        fyi: bool = False,
        teachers: list[nn.Module] | None = None,
    ) -> None:
        self.real = real
        self.ipc = ipc
        self.net_factory = net_factory
        self.generator = generator
        self.device = device
        self.dsa = dsa
        self.batch_real = batch_real
        self.fyi = fyi
        self.net = net_factory().to(device)
        self.real_images = real.images.to(device)
        self.labels = torch.arange(real.num_classes).repeat_interleave(ipc).to(device)
        #: trained teachers (frozen, eval mode) for the methods that synthesise from a model (SRe2L, CV-DD, ...)
        self.teachers: list[nn.Module] = [_frozen(t).to(device) for t in (teachers or [])]

    def fresh_net(self, trainable: bool = False) -> nn.Module:
        """The run's network with parameters re-drawn from the generator (a "fresh random network")."""
        reinit_(self.net, self.generator)
        for p in self.net.parameters():
            p.requires_grad_(trainable)
        return self.net.train()

    def real_batches(self, n: int | None = None) -> list[Tensor]:
        """One random real batch per class (``batch_real`` or ``n`` images, fewer if the class is small)."""
        n = self.batch_real if n is None else n
        out = []
        for idx in self.real.class_indices:
            perm = torch.randperm(idx.numel(), generator=self.generator)[:n]
            out.append(self.real_images[idx[perm].to(self.device)])
        return out

    def by_class(self, syn: Tensor) -> list[Tensor]:
        """Class-major synthetic tensor split into per-class views (gradients flow back to ``syn``)."""
        return list(torch.split(syn, self.ipc))

    def embeddings(self, x: Tensor, chunk: int = 512) -> Tensor:
        """Embeddings of ``x`` under the current network (no graph), in chunks to bound memory."""
        net = self.net.eval()
        with torch.no_grad():
            out = torch.cat([embed(net, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        net.train()
        return out


# ---------------------------------------------------------------------------------------------- condensers
class Condenser:
    """Base: initialise the synthetic set, then one matching loss per iteration."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    optimises: ClassVar[bool] = True
    needs_real_init: ClassVar[bool] = True
    #: the fewest trained teachers the method needs (``condense(teachers=[...])``; config ``teachers:``)
    min_teachers: ClassVar[int] = 0

    def __init__(self, ctx: CondenseContext, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"method {self.name!r} got unknown option(s) {sorted(unknown)}; valid: {sorted(self.defaults)}"
            )
        self.ctx = ctx
        self.opts = {**self.defaults, **kwargs}

    def extra_tensors(self) -> list[Tensor]:
        """Learned tensors besides the images (MTT's lr)."""
        return []

    def loss(self, syn: Tensor) -> Tensor:
        """One matching loss (with whatever fresh network the method's policy prescribes)."""
        raise NotImplementedError

    def iteration(self, syn: Tensor, opt_img: torch.optim.Optimizer, opt_extra: torch.optim.Optimizer | None) -> float:
        """Loss → gradients of the synthetic tensors only → one optimiser step."""
        tensors = [syn, *self.extra_tensors()]
        loss = self.loss(syn)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for t, g in zip(tensors, grads):
            t.grad = None if g is None else g.detach()
        opt_img.step()
        if opt_extra is not None:
            opt_extra.step()
        return float(loss.detach())


class DMCondenser(Condenser):
    """Distribution matching: a fresh frozen random network per iteration, class-mean embeddings."""

    name = "dm"
    defaults = {}

    def loss(self, syn: Tensor) -> Tensor:
        net = self.ctx.fresh_net(trainable=False)
        return dm_loss(
            net,
            self.ctx.real_batches(),
            self.ctx.by_class(syn),
            self.ctx.generator,
            self.ctx.dsa,
            self.ctx.fyi,
        )


class DataDAMCondenser(Condenser):
    """Attention matching on intermediate stages plus the embedding mean; a fresh frozen network each step."""

    name = "datadam"
    defaults = {"p": 4.0, "lam": 0.01, "layers": None}

    def loss(self, syn: Tensor) -> Tensor:
        net = self.ctx.fresh_net(trainable=False)
        return datadam_loss(
            net,
            self.ctx.real_batches(),
            self.ctx.by_class(syn),
            self.ctx.generator,
            self.ctx.dsa,
            self.opts["p"],
            self.opts["lam"],
            self.opts["layers"],
        )


class DCCondenser(Condenser):
    """Gradient matching with DC's outer/inner loops (the network trains on S between matches)."""

    name = "dc"
    defaults = {
        "outer_loop": None,
        "inner_loop": None,
        "lr_net": 0.01,
        "batch_train": 256,
        "metric": "ours",
        "bn_real": 16,
    }

    def loops(self) -> tuple[int, int]:
        """``get_loops(ipc)`` unless both loops are given."""
        o, i = self.opts["outer_loop"], self.opts["inner_loop"]
        if o is None or i is None:
            go, gi = get_loops(self.ctx.ipc)
            o = go if o is None else o
            i = gi if i is None else i
        return int(o), int(i)

    def loss(self, syn: Tensor) -> Tensor:
        """One matching loss on the current network (used by tests; the loop calls :meth:`iteration`)."""
        return dc_loss(
            self.ctx.net,
            self.ctx.real_batches(),
            self.ctx.by_class(syn),
            self.ctx.generator,
            self.ctx.dsa,
            self.ctx.fyi,
            self.opts["metric"],
        )

    def _freeze_bn(self, net: nn.Module) -> None:
        """DC: BN statistics from a small real batch of every class, then frozen for the matching step."""
        if not has_batchnorm(net):
            return
        with torch.no_grad():
            net.train()
            net(torch.cat(self.ctx.real_batches(self.opts["bn_real"])))
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def iteration(self, syn: Tensor, opt_img: torch.optim.Optimizer, opt_extra: torch.optim.Optimizer | None) -> float:
        """A fresh network; ``outer_loop`` × (match + image step + ``inner_loop`` epochs of training on S)."""
        ctx = self.ctx
        net = ctx.fresh_net(trainable=True)
        opt_net = torch.optim.SGD(net.parameters(), lr=self.opts["lr_net"])
        outer, inner = self.loops()
        losses = []
        for ol in range(outer):
            self._freeze_bn(net)
            loss = self.loss(syn)
            (g,) = torch.autograd.grad(loss, [syn])
            syn.grad = g.detach()
            opt_img.step()
            losses.append(float(loss.detach()))
            net.train()
            if ol == outer - 1:
                break
            x_all, y_all = syn.detach(), ctx.labels
            for _ in range(inner):
                perm = torch.randperm(x_all.shape[0], generator=ctx.generator).to(x_all.device)
                for s in range(0, x_all.shape[0], self.opts["batch_train"]):
                    idx = perm[s : s + self.opts["batch_train"]]
                    x = x_all[idx]
                    if ctx.dsa is not None:
                        x = ctx.dsa(x, ctx.generator, per_sample=True)
                    opt_net.zero_grad(set_to_none=True)
                    F.cross_entropy(net(x), y_all[idx]).backward()
                    opt_net.step()
        for p in net.parameters():
            p.grad = None
        return sum(losses) / len(losses)


class MTTCondenser(Condenser):
    """Trajectory matching against an expert buffer; the synthetic lr is learned alongside the pixels."""

    name = "mtt"
    defaults = {
        "experts": None,  # ExpertBuffer, path to one, or None to train them here
        "num_experts": 2,
        "buffer_epochs": 10,
        "expert_lr": 0.01,
        "expert_batch": 256,
        "expert_clip": None,
        "expert_grad_penalty": 0.0,
        "save_experts": None,
        "syn_steps": 20,
        "expert_epochs": 2,
        "max_start_epoch": 5,
        "lr_teacher": 0.01,
        "lr_lr": 1e-5,
        "batch_syn": None,
    }

    def __init__(self, ctx: CondenseContext, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        o = self.opts
        experts = o["experts"]
        if isinstance(experts, ExpertBuffer):
            self.buffer = experts
        elif experts is not None:
            self.buffer = ExpertBuffer.load(experts)
        else:
            self.buffer = train_experts(
                ctx.real,
                ctx.net_factory,
                ctx.generator,
                o["num_experts"],
                o["buffer_epochs"],
                o["expert_lr"],
                o["expert_batch"],
                ctx.dsa,
                o["expert_clip"],
                o["expert_grad_penalty"],
                ctx.device,
            )
            if o["save_experts"]:
                self.buffer.save(o["save_experts"])
        n_params = sum(p.numel() for p in ctx.net.parameters())
        if self.buffer.trajectories[0].shape[1] != n_params:
            raise ValueError(
                f"expert buffer has {self.buffer.trajectories[0].shape[1]} parameters per network, "
                f"the backbone "
                f"has {n_params}: train the experts with the same backbone"
            )
        if o["expert_epochs"] > self.buffer.epochs:
            raise ValueError(f"expert_epochs={o['expert_epochs']} exceeds the buffer's {self.buffer.epochs} epochs")
        self.syn_lr = torch.tensor(float(o["lr_teacher"]), device=ctx.device, requires_grad=True)
        for p in ctx.net.parameters():
            p.requires_grad_(False)

    def extra_tensors(self) -> list[Tensor]:
        return [self.syn_lr]

    def draw(self) -> tuple[Tensor, Tensor]:
        """A random expert and start epoch ``t < max_start_epoch`` (capped so ``t + M`` is recorded)."""
        g = self.ctx.generator
        traj = self.buffer.trajectories[int(torch.randint(len(self.buffer.trajectories), (1,), generator=g))]
        m = self.opts["expert_epochs"]
        hi = max(1, min(self.opts["max_start_epoch"], self.buffer.epochs - m + 1))
        t = int(torch.randint(hi, (1,), generator=g))
        return traj[t], traj[t + m]

    def loss(self, syn: Tensor) -> Tensor:
        start, target = self.draw()
        return mtt_loss(
            self.ctx.net.train(),
            syn,
            self.ctx.labels,
            self.syn_lr,
            start,
            target,
            self.opts["syn_steps"],
            self.ctx.generator,
            self.opts["batch_syn"],
            self.ctx.dsa,
        )


CONDENSERS: dict[str, tuple[type[Condenser], dict[str, Any]]] = {}
#: every name ``condense(method=...)`` accepts: the two coreset baselines, then each registered condenser
METHODS: list[str] = ["random", "herding"]


def register_condenser(cls: type[Condenser], **loop_defaults: Any) -> None:
    """Register ``cls`` under ``cls.name`` with its loop defaults (``default=`` or one entry per name).

    Loop defaults are the keys :func:`condense` reads: ``iterations``, ``lr_img``, ``batch_real``, ``init``,
    ``dsa``. Modules of further condensers (the large-scale family) call this at import; the package
    ``__init__`` imports them, so ``METHODS`` is complete whenever ``featdistill.condense`` is.
    """
    for name in [cls.name] if cls.name != "dc" else ["dc", "dsa"]:
        if name in CONDENSERS:
            raise ValueError(f"condenser {name!r} registered twice")
        CONDENSERS[name] = (cls, loop_defaults[name] if name in loop_defaults else loop_defaults["default"])
        METHODS.append(name)


# Loop defaults from the reference code (benchmarks.md §5.6); all are overridable keyword arguments.
register_condenser(
    DMCondenser, default={"iterations": 20000, "lr_img": 1.0, "batch_real": 256, "init": "real", "dsa": True}
)
register_condenser(
    DataDAMCondenser,
    default={"iterations": 20000, "lr_img": 1.0, "batch_real": 64, "init": "real", "dsa": True},
)
register_condenser(
    DCCondenser,
    dc={"iterations": 1000, "lr_img": 0.1, "batch_real": 256, "init": "noise", "dsa": False},
    dsa={"iterations": 1000, "lr_img": 0.1, "batch_real": 256, "init": "real", "dsa": True},
)
register_condenser(
    MTTCondenser,
    default={"iterations": 5000, "lr_img": 1000.0, "batch_real": 256, "init": "real", "dsa": True},
)


# ---------------------------------------------------------------------------------------------- condense
def _initial_images(ctx: CondenseContext, init: str) -> tuple[Tensor, Tensor | None]:
    """Class-major initial synthetic images: ``real`` (random real), ``noise`` (N(0,1) in normalised space),
    ``herding`` / ``representative`` (real images chosen on random-network embeddings), with the indices of
    the real images taken (``None`` for noise) — a coreset's provenance, used to find its teacher labels."""
    real, ipc, g = ctx.real, ctx.ipc, ctx.generator
    c, h, w = real.shape
    if init == "noise":
        return torch.randn(real.num_classes * ipc, c, h, w, generator=g).to(ctx.device), None
    if init == "real":
        idx = random_indices(real.class_indices, ipc, g)
        return ctx.real_images[idx.to(ctx.device)].clone(), idx
    if init in ("herding", "representative"):
        ctx.fresh_net(trainable=False)
        picks = []
        for idx in real.class_indices:
            feats = ctx.embeddings(ctx.real_images[idx.to(ctx.device)]).cpu()
            pos = herding_order(feats, ipc) if init == "herding" else kmeans_representatives(feats, ipc, g)
            picks.append(idx[pos])
        idx = torch.cat(picks)
        return ctx.real_images[idx.to(ctx.device)].clone(), idx
    raise ValueError(f"unknown init {init!r}; use 'real', 'noise', 'herding' or 'representative'")


def condense(
    dataset: Any,
    ipc: int,
    method: str = "dm",
    backbone: str | Callable[[], nn.Module] | nn.Module = "convnet",
    iterations: int | None = None,
    seed: int = 0,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    init: str | None = None,
    lr_img: float | None = None,
    momentum_img: float = 0.5,
    batch_real: int | None = None,
    dsa: bool | None = None,
    dsa_strategy: str | None = None,
    fyi: bool = False,
    soft_label_teacher: nn.Module | Callable[[Tensor], Tensor] | None = None,
    soft_label_temperature: float = 1.0,
    budget_s: float | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, float], None] | None = None,
    teachers: list[nn.Module] | None = None,
    **method_kwargs: Any,
) -> SyntheticSet:
    """Distil ``dataset`` into ``ipc`` images per class with ``method``.

    Args:
        dataset: an ``ImageDataset``, a :class:`RealData` or an ``(images, targets)`` pair
            (normalised floats).
        ipc: images per class.
        method: ``random``, ``herding``, ``dm``, ``datadam``, ``dc``, ``dsa`` or ``mtt``.
        backbone: zoo name (``build_model``), a factory or a template module; ConvNet-3 with instance norm
            by default. Its parameters are always re-drawn from the run's generator.
        iterations: outer iterations; ``None`` → the reference default of the method (large; pass a budget).
        seed: the only source of randomness (one ``torch.Generator`` for everything).
        init: ``real`` / ``noise`` / ``herding`` / ``representative`` (smooth-expert MTT's init).
        lr_img, momentum_img: SGD on the pixels (reference defaults per method).
        batch_real: real images per class per matching step.
        dsa: Siamese DSA during matching (default per method); ``dsa_strategy`` overrides the op list
            (default: no flip for digit datasets).
        fyi: pair every synthetic image with its flip while matching (DM / DC / DSA only).
        soft_label_teacher: a model whose ``softmax(logits / T)`` on the final images becomes the labels.
        budget_s: stop after this many seconds (iterations done are recorded in the metadata).
        teachers: trained models the method synthesises from (SRe2L, CV-DD's committee, ...); they are
            frozen and moved to ``device``. A method needing more than given is refused before any work.
        method_kwargs: method options (see ``CONDENSERS[name][0].defaults``).

    Returns:
        A class-major :class:`SyntheticSet`; ``metadata`` records every setting, losses and wall time.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown condensation method {method!r}; choose from {list(METHODS)}")
    real = as_real_data(dataset)
    generator = torch.Generator().manual_seed(int(seed))
    device = torch.device(device)
    c, h, w = real.shape
    if fyi and method not in ("dm", "dc", "dsa"):
        raise ValueError(f"fyi (flip pairs) is implemented for dm, dc and dsa, not {method!r}")

    if method in CONDENSERS:
        cls, loop = CONDENSERS[method]
        if len(teachers or []) < cls.min_teachers:
            raise ValueError(
                f"method {method!r} synthesises from trained teachers: it needs at least {cls.min_teachers}, "
                f"got {len(teachers or [])} — pass teachers=[model, ...] (config: `teachers:` entries with "
                "model + checkpoint, trained by `featdistill train`)"
            )
    else:
        cls, loop = (
            None,
            {
                "iterations": 0,
                "lr_img": 0.0,
                "batch_real": 0,
                "init": "real" if method == "random" else method,
                "dsa": False,
            },
        )
    init = init or loop["init"]
    use_dsa = loop["dsa"] if dsa is None else bool(dsa)
    if method == "dc" and dsa:
        raise ValueError("method 'dc' has no augmentation by definition; use method='dsa' for DC + DSA")
    strategy = dsa_strategy or default_strategy(real.name, c)
    dsa_obj = DSA(strategy) if use_dsa else None
    check_ipc(real, ipc, needs_real=(init != "noise"))
    factory = make_backbone_factory(backbone, real.num_classes, c, max(h, w), backbone_kwargs)
    ctx = CondenseContext(
        real, ipc, factory, generator, device, dsa_obj, int(batch_real or loop["batch_real"]), fyi, teachers
    )
    iterations = int(loop["iterations"] if iterations is None else iterations)
    lr_img = float(loop["lr_img"] if lr_img is None else lr_img)

    losses: list[float] = []
    done = 0
    if cls is None:
        if method_kwargs:
            raise TypeError(f"method {method!r} takes no options; got {sorted(method_kwargs)}")
        images, source = _initial_images(ctx, init)
        extra: dict[str, Any] = {}
        lr_out = None
    else:
        images, source = _initial_images(ctx, init)
        source = None  # the images are optimised away from the real ones they started as
        syn = images.detach().clone().requires_grad_(True)
        condenser = cls(ctx, **method_kwargs)
        opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=momentum_img)
        extras = condenser.extra_tensors()
        opt_extra = torch.optim.SGD(extras, lr=condenser.opts["lr_lr"], momentum=0.5) if extras else None
        for it in range(iterations):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            loss = condenser.iteration(syn, opt_img, opt_extra)
            losses.append(loss)
            done = it + 1
            if callback is not None:
                callback(it, loss)
        images = syn.detach()
        lr_out = float(condenser.syn_lr.detach()) if isinstance(condenser, MTTCondenser) else None
        extra = {k: v for k, v in condenser.opts.items() if k not in ("experts",)}
        if isinstance(condenser, MTTCondenser):
            extra["experts"] = condenser.buffer.metadata
            extra["experts_source"] = str(condenser.opts["experts"]) if condenser.opts["experts"] else "trained"
        for p in ctx.net.parameters():
            p.grad = None

    labels: Tensor = ctx.labels.clone().cpu()
    meta: dict[str, Any] = {
        "method": method,
        "ipc": ipc,
        "seed": int(seed),
        "dataset": real.name,
        "num_classes": real.num_classes,
        "classes": real.classes,
        "image_shape": [c, h, w],
        "backbone": backbone if isinstance(backbone, str) else type(ctx.net).__name__,
        "backbone_kwargs": dict(backbone_kwargs or {}),
        "init": init,
        "iterations": iterations,
        "iterations_done": done if cls is not None else 0,
        "lr_img": lr_img,
        "momentum_img": momentum_img,
        "batch_real": ctx.batch_real,
        "dsa": strategy if use_dsa else None,
        "fyi": fyi,
        "teachers": [type(t).__name__ for t in ctx.teachers],
        "options": extra,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_curve": _downsample(losses, 200),
        "torch": torch.__version__,
    }
    if source is not None:
        meta["source_indices"] = source.tolist()
    out = SyntheticSet(images.cpu(), labels, lr_out, real.mean, real.std, meta)
    if soft_label_teacher is not None:
        out = with_teacher_labels(out, soft_label_teacher, soft_label_temperature, device)
    out.metadata["wall_s"] = time.perf_counter() - t0
    return out


def with_teacher_labels(
    synthetic: SyntheticSet,
    teacher: nn.Module | Callable[[Tensor], Tensor],
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    teacher_name: str | None = None,
) -> SyntheticSet:
    """``synthetic`` with static soft labels ``softmax(teacher(x) / T)`` of its un-augmented images, the
    temperature and teacher recorded in ``metadata["soft_labels"]`` (evaluation trains at that temperature).
    Per-view labels from a teacher store: :mod:`featdistill.condense.relabel`."""
    labels = soft_labels(teacher, synthetic.images, temperature, device)
    if labels.shape[1] != synthetic.num_classes:
        raise ValueError(f"the teacher predicts {labels.shape[1]} classes; the set has {synthetic.num_classes}")
    name = teacher_name or type(teacher).__name__
    return synthetic.with_labels(labels, soft_labels={"temperature": float(temperature), "teacher": name})


def soft_labels(
    teacher: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    chunk: int = 256,
) -> Tensor:
    """``softmax(teacher(x) / T)`` for every image; the teacher is run frozen in eval mode."""
    was_training = isinstance(teacher, nn.Module) and teacher.training
    if isinstance(teacher, nn.Module):
        teacher.eval()
    with torch.inference_mode():
        outs = [teacher(images[i : i + chunk].to(device)).float().cpu() for i in range(0, images.shape[0], chunk)]
    if was_training:
        teacher.train()
    return torch.softmax(torch.cat(outs) / temperature, dim=1).clone()


def _downsample(values: list[float], n: int) -> list[float]:
    if len(values) <= n:
        return list(values)
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]
