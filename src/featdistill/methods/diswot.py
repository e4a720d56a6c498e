"""DisWOT: rank candidate students for a teacher without training them (``featdistill search``)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.similarity import sp_gram, sp_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import generator
from featdistill.taps import Taps, TapSpec, resolve_module

__all__ = [
    "DisWOT",
    "gaussian_init",
    "relation_gram",
    "relation_distance",
    "semantic_gram",
    "semantic_distance",
    "diswot_score",
    "rank_students",
    "kendall_tau",
    "spearman_rho",
]


def gaussian_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """DisWOT's re-initialisation (in place): conv/linear weights ~ N(0, 1), biases 0, BN γ = 1, β = 0.

    Uses an explicit generator derived from ``(seed, module path)``, so two copies of one architecture get
    identical weights.
    """
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            g = generator(seed, "diswot", name)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g).to(m.weight))
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    m.bias.zero_()
    return model


def relation_gram(feat: torch.Tensor) -> torch.Tensor:
    """SP relation: ``G = rownorm_L2(F Fᵀ)`` with ``F`` the ``(B, C·H·W)`` flattened map (in float64 for the score;
    :func:`featdistill.losses.similarity.sp_gram`)."""
    return sp_gram(feat.double())


def relation_distance(feat_t: torch.Tensor, feat_s: torch.Tensor) -> torch.Tensor:
    """``M_r = ‖G_T − G_S‖_F² / B²`` (non-negative, symmetric, 0 for equal features): the SP loss
    (:func:`featdistill.losses.similarity.sp_loss`) in float64."""
    return sp_loss(feat_s.double(), feat_t.double())


def semantic_gram(grad_w: torch.Tensor, mode: str = "class") -> torch.Tensor:
    """From the classifier-weight gradient ``∇W (K, C)``.

    ``mode="channel"`` (as coded in DisWOT; needs equal C): per class ``g_k g_kᵀ`` with rows L2-normalised,
    stacked ``(K, C, C)``.  ``mode="class"`` (heterogeneous widths): the ``K × K`` class Gram
    ``∇W ∇Wᵀ`` with rows L2-normalised.
    """
    g = grad_w.double()
    if mode == "channel":
        outer = g[:, :, None] * g[:, None, :]
        return F.normalize(outer, dim=2)
    if mode == "class":
        return F.normalize(g @ g.T, dim=1)
    raise ValueError(f"semantic_gram: mode must be 'class' or 'channel', got {mode!r}")


def semantic_distance(grad_t: torch.Tensor, grad_s: torch.Tensor, mode: str = "class") -> torch.Tensor:
    """``M_s``: ``Σ_k ‖E_T,k − E_S,k‖_F² / (C·K)`` (channel mode) or ``‖E_T − E_S‖_F² / K²`` (class mode)."""
    e_t, e_s = semantic_gram(grad_t, mode), semantic_gram(grad_s, mode)
    if e_t.shape != e_s.shape:
        raise ValueError(
            f"diswot: semantic grams differ in shape {tuple(e_t.shape)} vs {tuple(e_s.shape)}; "
            "mode='channel' needs equal classifier widths, use mode='class'"
        )
    k = grad_t.shape[0]
    denom = grad_t.shape[1] * k if mode == "channel" else k * k
    return (e_t - e_s).pow(2).sum() / denom


def _probe(model: nn.Module, batch: Mapping[str, torch.Tensor], feature_path: str, classifier_path: str):
    """Pre-GAP map and classifier-weight gradient of CE(labels) on one batch (train-mode BN, as at init)."""
    model.train()
    fc = resolve_module(model, classifier_path)
    model.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device
    with Taps(model, {"feat": TapSpec(feature_path)}) as taps:
        logits, feats = taps(batch["input"].to(dev))
    F.cross_entropy(logits, batch["target"].to(dev)).backward()
    grad = fc.weight.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return feats["feat"].detach(), grad


def _feature_path(model: nn.Module) -> str:
    stages = getattr(model, "stage_paths", None)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no stage_paths; pass feature paths explicitly")
    return stages[-1]


def diswot_score(
    teacher: nn.Module,
    student: nn.Module,
    batch: Mapping[str, torch.Tensor],
    seed: int = 0,
    semantic: str = "class",
    teacher_path: str | None = None,
    student_path: str | None = None,
    student_init: str = "gaussian",
) -> dict[str, float]:
    """DisWOT score of one (trained teacher, candidate) pair: ``−(M_r + M_s)`` (higher is better; 0 is the maximum).

    The teacher is used **with its trained weights** (copied, never re-initialised): DisWOT asks which
    untrained student architecture already resembles the *trained* teacher's relations and semantics, so the
    score must move when the teacher's weights do (tested). The candidate is training-free: a copy re-initialised
    by :func:`gaussian_init` (``student_init="gaussian"``, the search setting) or taken as given (``"as_given"``).
    Both are probed on one real mini-batch with batch statistics in BatchNorm (the candidate has no trained
    running statistics; using the batch's on both keeps the two maps comparable). ``M_r`` compares the batch
    relation of the pre-GAP maps (last stage), ``M_s`` the class structure of the classifier-weight gradients.
    Returns ``{"score", "relation", "semantic"}``.
    """
    if student_init not in ("gaussian", "as_given"):
        raise ValueError(f"diswot_score: student_init must be 'gaussian' or 'as_given', got {student_init!r}")
    t = copy.deepcopy(teacher)
    s = copy.deepcopy(student)
    if student_init == "gaussian":
        gaussian_init(s, seed)
    for p in (*t.parameters(), *s.parameters()):  # a frozen teacher's copy must still give gradients
        p.requires_grad_(True)
    ft, gt = _probe(t, batch, teacher_path or _feature_path(t), t.classifier_path)
    fs, gs = _probe(s, batch, student_path or _feature_path(s), s.classifier_path)
    mr = float(relation_distance(ft, fs))
    ms = float(semantic_distance(gt, gs, semantic))
    return {"score": -(mr + ms), "relation": mr, "semantic": ms}


def rank_students(
    teacher: nn.Module,
    candidates: Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]],
    batch: Mapping[str, torch.Tensor],
    seed: int = 0,
    semantic: str = "class",
) -> list[dict[str, Any]]:
    """Score every candidate and return them best first: ``[{"name", "score", "relation", "semantic",
    "params", "rank"}]``.  Training-free: one forward/backward per network on one batch."""
    items = list(candidates.items()) if isinstance(candidates, Mapping) else list(candidates)
    rows = []
    for name, model in items:
        r = diswot_score(teacher, model, batch, seed=seed, semantic=semantic)
        rows.append({"name": name, **r, "params": sum(p.numel() for p in model.parameters())})
    rows.sort(key=lambda r: r["score"], reverse=True)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _ranks(x: Sequence[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    rx, ry = torch.tensor(_ranks(x), dtype=torch.float64), torch.tensor(_ranks(y), dtype=torch.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else 0.0


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall τ-b rank correlation."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            a = (x[i] > x[j]) - (x[i] < x[j])
            b = (y[i] > y[j]) - (y[i] < y[j])
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif a == b:
                conc += 1
            else:
                disc += 1
    den = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / den if den > 0 else 0.0


@register_method
class DisWOT(Method):
    """ "DisWOT: Student Architecture Search for Distillation WithOut Training" (Dong et al., CVPR 2023) —
    "DisWOT as distiller".

    The search itself is :func:`rank_students` (``featdistill search``).  As a training recipe, the same two
    similarity terms become losses between the trained networks: ``sp`` = ``‖G_T − G_S‖²/B²`` on the last-stage
    maps (SP relation) plus Hinton KD (T = 4), which is how DisWOT's selected students are trained.
    """

    name = "diswot"
    paper = "DisWOT: Student Architecture Search for Distillation WithOut Training (Dong et al., CVPR 2023)"
    default_weights = {"kd": 0.9, "sp": 3000.0}
    default_ce_weight = 0.1

    def __init__(
        self,
        temperature: float = 4.0,
        student_path: str | None = None,
        teacher_path: str | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.temperature, self.student_path, self.teacher_path = temperature, student_path, teacher_path

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or _feature_path(student)
        if teacher is not None:
            self.teacher_path = self.teacher_path or _feature_path(teacher)
        if not self.teacher_path:
            raise ValueError("diswot: give teacher_path (the teacher's last-stage map)")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.teacher_path or ""), "logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        from featdistill.losses.logits import kd_loss

        sp = sp_loss(student_feats["feat"], teacher_feats["feat"])
        return {"kd": kd_loss(student_feats["logits"], teacher_feats["logits"], self.temperature), "sp": sp}


def run_search_cli(args: Any) -> int:
    """``featdistill search TEACHER CANDIDATE...``: DisWOT ranking on one real batch of ``--dataset``.

    ``--validate`` (mnist5k only) also distils every candidate with KD and prints Kendall τ / Spearman ρ between
    the training-free score and the accuracy reached. The training goes through :func:`featdistill.run.run_experiment`
    (the same code as ``featdistill train``), so the accuracies it correlates against are those a user would get
    from a config, not from a private loop; see :func:`_validate_configs` for the budget.
    """
    from featdistill.data import load_dataset
    from featdistill.models import build_model

    train, _ = load_dataset(args.dataset)
    x = train.images[:64].float()
    if train.images.dtype == torch.uint8:
        x = x / 255.0
    mean = torch.tensor(train.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(train.std, dtype=torch.float32)[None, :, None, None]
    batch = {"input": (x - mean) / std, "target": train.targets[:64].long()}
    c, size = x.shape[1], x.shape[-1]
    nc = len(train.classes)

    def build(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
        return build_model(name, num_classes=nc, in_channels=c, image_size=size, **dict(kwargs or {}))

    if getattr(args, "space", None) is None and not args.candidates:
        from featdistill.config import ConfigError

        raise ConfigError("featdistill search: give candidate zoo names, or --space SPACE.yaml to search a space")

    teacher = build(args.teacher)
    if getattr(args, "teacher_checkpoint", None):
        from safetensors.torch import load_file

        teacher.load_state_dict(load_file(args.teacher_checkpoint))
    teacher_ckpt: str | None = getattr(args, "teacher_checkpoint", None)
    # the run directories (the trained teacher's checkpoint among them) live until the last KD run has read them
    with tempfile.TemporaryDirectory(prefix="featdistill-search-") as tmp:
        if getattr(args, "validate", False) and args.dataset == "mnist5k" and not teacher_ckpt:
            # DisWOT scores candidates against a *trained* teacher: train it first, and keep its weights for KD.
            from featdistill.components import load_weights

            teacher_ckpt = _train_validation_teacher(args.teacher, Path(tmp))
            load_weights(teacher, teacher_ckpt)
            teacher.eval()
        if getattr(args, "space", None) is not None:
            return _search_space(args, teacher, batch, build)
        return _rank_and_validate(args, teacher, teacher_ckpt, batch, build, Path(tmp))


def _search_space(
    args: Any, teacher: nn.Module, batch: dict[str, torch.Tensor], build: Callable[..., nn.Module]
) -> int:
    """``featdistill search TEACHER --space SPACE.yaml``: the evolutionary search, its best candidates printed."""
    from featdistill.config import ConfigError
    from featdistill.methods.diswot_search import evolutionary_search
    from featdistill.yaml_safe import load_yaml_file

    space = load_yaml_file(args.space)
    if not isinstance(space, Mapping):
        raise ConfigError(f"--space {args.space}: expected a mapping {{model, choices, max_params?}}, got {space!r}")
    try:
        out = evolutionary_search(
            teacher, space, batch, build, population=args.population, cycles=args.cycles, seed=args.seed
        )
    except (ValueError, TypeError, KeyError) as err:  # a bad space or argument: one message, exit 2
        raise ConfigError(f"--space {args.space}: {err}") from None
    print(
        f"DisWOT search for teacher {args.teacher} over {space['model']} ({out['scored']} candidates scored, "
        f"{out['rejected']} over the parameter budget; one batch of {len(batch['target'])} {args.dataset} images)"
    )
    if not getattr(args, "teacher_checkpoint", None):
        print("note: no --teacher-checkpoint: the teacher is untrained, so the scores say little (DisWOT compares")
        print("      candidates with a *trained* teacher)")
    print(f"{'rank':>4}  {'candidate':<36}{'score':>12}{'params':>10}")
    rows = sorted(out["history"], key=lambda r: r["score"], reverse=True)
    for i, r in enumerate(rows[:10]):
        kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        print(f"{i + 1:>4}  {space['model'] + '(' + kw + ')':<36}{r['score']:>12.4g}{r['params']:>10}")
    return 0


def _rank_and_validate(
    args: Any,
    teacher: nn.Module,
    teacher_ckpt: str | None,
    batch: dict[str, torch.Tensor],
    build: Callable[[str], nn.Module],
    tmp: Path,
) -> int:
    """Print the DisWOT ranking, then (``--validate``) the KD accuracy of every candidate and the correlations;
    the KD runs are written under ``tmp``."""
    rows = rank_students(teacher, {n: build(n) for n in args.candidates}, batch)
    print(f"DisWOT ranking for teacher {args.teacher} (one batch of {len(batch['target'])} {args.dataset} images)")
    print(f"{'rank':>4}  {'candidate':<16}{'score':>12}{'relation':>12}{'semantic':>12}{'params':>10}")
    for r in rows:
        print(
            f"{r['rank']:>4}  {r['name']:<16}{r['score']:>12.4g}{r['relation']:>12.4g}{r['semantic']:>12.4g}"
            f"{r['params']:>10}"
        )
    if getattr(args, "validate", False):
        if args.dataset != "mnist5k":
            print("--validate runs on mnist5k only (the dataset its budget was set for)")
            return 2
        assert teacher_ckpt is not None  # trained above when --validate runs on mnist5k without one
        accs = {r["name"]: _distilled_accuracy(args.teacher, teacher_ckpt, r["name"], tmp) for r in rows}
        scores = [r["score"] for r in rows]
        acc = [accs[r["name"]] for r in rows]
        for r in rows:
            print(f"  {r['name']:<16} KD accuracy {accs[r['name']]:.4f}")
        print(f"Kendall tau {kendall_tau(scores, acc):.3f}, Spearman rho {spearman_rho(scores, acc):.3f}")
    return 0


#: ``--validate`` budgets (those of docs/benchmarks.md §6): the teacher trains 6 epochs, each candidate distils 3
VALIDATE_TEACHER_EPOCHS = 6
VALIDATE_KD_EPOCHS = 3


def _validate_configs(teacher: str, teacher_ckpt: str | None, student: str | None, run_dir: Path) -> dict[str, Any]:
    """The experiment config of one ``--validate`` run on mnist5k (seed 0, no augmentation, library defaults
    otherwise): the teacher alone when ``student`` is ``None``, else ``student`` distilled from it with KD.

    One function for both so that the teacher and the candidates see the same data, split and schedule."""
    cfg: dict[str, Any] = {
        "experiment": f"diswot-{student or 'teacher'}",
        "seed": 0,
        "run_dir": str(run_dir),
        "data": {"name": "mnist5k"},
        "train": {"epochs": VALIDATE_KD_EPOCHS if student else VALIDATE_TEACHER_EPOCHS, "progress": False},
    }
    if student is None:
        cfg.update(student={"model": teacher}, method={"name": "none"})
    else:
        cfg.update(
            student={"model": student}, teacher={"model": teacher, "checkpoint": teacher_ckpt}, method={"name": "kd"}
        )
    return cfg


def _train_validation_teacher(teacher: str, tmp: Path) -> str:
    """Train ``teacher`` on mnist5k through :func:`~featdistill.run.run_experiment`; return its checkpoint path."""
    from featdistill.config import parse_config
    from featdistill.run import run_experiment

    result = run_experiment(parse_config(_validate_configs(teacher, None, None, tmp / "teacher")), progress=False)
    return str(result.run_dir / "student.safetensors")


def _distilled_accuracy(teacher: str, teacher_ckpt: str, student: str, tmp: Path) -> float:
    """Last-epoch test top-1 of ``student`` distilled with KD from the trained teacher (through ``run_experiment``)."""
    from featdistill.config import parse_config
    from featdistill.run import run_experiment

    cfg = parse_config(_validate_configs(teacher, teacher_ckpt, student, tmp / f"kd-{student}"))
    top1 = run_experiment(cfg, progress=False).test_top1
    assert top1 is not None  # mnist5k is a classification task
    return float(top1)
