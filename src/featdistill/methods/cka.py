"""CKA: a loss term (1 − linear CKA between paired features) and a teacher × student layer diagnostic.

``featdistill inspect --cka`` calls :func:`cka_matrix` and prints :func:`format_cka_matrix`; :func:`plot_cka`
writes the heatmap PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featdistill.losses.relations import cka_loss, linear_cka
from featdistill.methods._paired import embedding
from featdistill.methods._util import model_device, pool_tokens
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import Taps, TapSpec

__all__ = ["CKA", "default_cka_paths", "cka_matrix", "hsic_unbiased", "minibatch_cka", "format_cka_matrix", "plot_cka"]


@register_method
class CKA(Method):
    """CKA as a distillation loss, from "Similarity of Neural Network Representations Revisited"
    (Kornblith, Norouzi, Lee, Hinton; ICML 2019).

    ``L = CE + w·Σ_pairs (1 − CKA(f_s, f_t))`` on the batch (biased linear CKA).  CKA compares representations of
    any widths and is invariant to rotations and isotropic scaling, so no adapter is needed: the student is only
    asked to reproduce the teacher's *similarity structure* over the batch.  Default pairs: the pooled embeddings;
    ``student_paths``/``teacher_paths`` select stage maps instead (flattened per sample).
    """

    name = "cka"
    applies_to = frozenset({"any"})
    paper = "Similarity of Neural Network Representations Revisited (Kornblith et al., ICML 2019)"
    default_weights = {"cka": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or [embedding(student, "cka")]
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or [embedding(teacher, "cka")]
        if not self.teacher_paths or len(self.student_paths) != len(self.teacher_paths):
            raise ValueError(f"cka: pair the paths: student {self.student_paths}, teacher {self.teacher_paths}")

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"cka{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"cka{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        mask = batch.get("position_mask")  # sequence tasks: each sample is its mean over non-padding tokens
        terms = [
            cka_loss(pool_tokens(student_feats[f"cka{i}"], mask), pool_tokens(teacher_feats[f"cka{i}"], mask))
            for i in range(n)
        ]
        return {"cka": torch.stack(terms).sum()}


# ---------------------------------------------------------------------------------------------------------------
# Diagnostic
# ---------------------------------------------------------------------------------------------------------------


def hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al., 2012) of two ``n × n`` Gram matrices, ``n ≥ 4``.

    With ``K̃, L̃`` the Grams with zeroed diagonals:
    ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3))``.
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"hsic_unbiased needs n >= 4 samples, got {n}")
    k = k.clone().fill_diagonal_(0)
    l_ = l_.clone().fill_diagonal_(0)
    trace = (k * l_.T).sum()
    middle = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    last = 2.0 * (k.sum(0) @ l_.sum(1)) / (n - 2)
    return (trace + middle - last) / (n * (n - 3))


def minibatch_cka(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mini-batch linear CKA (Nguyen et al., ICLR 2021): unbiased HSIC averaged over batches, then normalised."""
    hxy = hxx = hyy = 0.0
    out_dtype = torch.float64 if any(x.dtype == torch.float64 for x in (*xs, *ys)) else torch.float32
    for x, y in zip(xs, ys):
        x = x.reshape(x.shape[0], -1).double()
        y = y.reshape(y.shape[0], -1).double()
        k, l_ = x @ x.T, y @ y.T
        hxy = hxy + hsic_unbiased(k, l_)
        hxx = hxx + hsic_unbiased(k, k)
        hyy = hyy + hsic_unbiased(l_, l_)
    # computed in float64; returned in the inputs' precision (float64 in → float64 out)
    return torch.as_tensor(hxy / (hxx * hyy).clamp_min(1e-30).sqrt()).to(out_dtype)


def default_cka_paths(model: nn.Module) -> list[str]:
    """The layers ``cka_matrix`` compares by default: the stage outputs, then the pooled embedding."""
    paths = list(getattr(model, "stage_paths", []))
    emb = getattr(model, "embedding_path", None)
    if emb:
        paths.append(emb)
    if not paths:
        raise ValueError(f"{type(model).__name__} has no stage_paths; pass the layer paths explicitly")
    return paths


@torch.no_grad()
def cka_matrix(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    teacher_paths: Sequence[str] | None = None,
    student_paths: Sequence[str] | None = None,
    max_batches: int | None = 8,
    unbiased: bool = False,
) -> torch.Tensor:
    """The ``(len(teacher_paths), len(student_paths))`` linear-CKA matrix between the two models' layers.

    Both models run in eval mode on the same batches (default paths: the stages plus the embedding).  The default
    estimator gathers up to ``max_batches`` batches and computes the exact (biased) linear CKA on all those
    samples; ``unbiased=True`` averages unbiased HSIC over mini-batches instead (memory-light, for big maps).
    """
    t_paths = list(teacher_paths) if teacher_paths else default_cka_paths(teacher)
    s_paths = list(student_paths) if student_paths else default_cka_paths(student)
    t_feats: dict[str, list[torch.Tensor]] = {p: [] for p in t_paths}
    s_feats: dict[str, list[torch.Tensor]] = {p: [] for p in s_paths}
    states = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    t_dev, s_dev = model_device(teacher), model_device(student)
    try:
        with (
            Taps(teacher, {p: TapSpec(p) for p in t_paths}, stop_early=True) as tt,
            Taps(student, {p: TapSpec(p) for p in s_paths}, stop_early=True) as st,
        ):
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                _, tf = tt(batch["input"].to(t_dev))
                _, sf = st(batch["input"].to(s_dev))
                for p in t_paths:
                    t_feats[p].append(tf[p].flatten(1).float().cpu())
                for p in s_paths:
                    s_feats[p].append(sf[p].flatten(1).float().cpu())
    finally:
        teacher.train(states[0])
        student.train(states[1])
    out = torch.zeros(len(t_paths), len(s_paths))
    for a, tp in enumerate(t_paths):
        for b, sp in enumerate(s_paths):
            if unbiased:
                out[a, b] = minibatch_cka(t_feats[tp], s_feats[sp])
            else:
                out[a, b] = linear_cka(torch.cat(t_feats[tp]).double(), torch.cat(s_feats[sp]).double()).float()
    return out


def format_cka_matrix(matrix: torch.Tensor, teacher_paths: Sequence[str], student_paths: Sequence[str]) -> str:
    """A plain-text table: rows = teacher layers, columns = student layers."""
    w = max(8, *(len(p) for p in student_paths))
    first = max(12, *(len(p) for p in teacher_paths))
    lines = ["teacher \\ student".ljust(first) + "".join(p.rjust(w + 1) for p in student_paths)]
    for i, tp in enumerate(teacher_paths):
        lines.append(tp.ljust(first) + "".join(f"{float(v):.3f}".rjust(w + 1) for v in matrix[i]))
    return "\n".join(lines)


def plot_cka(
    matrix: torch.Tensor,
    teacher_paths: Sequence[str],
    student_paths: Sequence[str],
    path: str | Path,
    title: str = "linear CKA (teacher × student)",
) -> Path:
    """Write the heatmap PNG (matplotlib, headless) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * m.shape[1], 1.0 + 0.7 * m.shape[0]))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(student_paths)), student_paths, rotation=45, ha="right")
    ax.set_yticks(range(len(teacher_paths)), teacher_paths)
    ax.set_xlabel("student layer")
    ax.set_ylabel("teacher layer")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cka_cli(
    teacher_name: str,
    student_name: str,
    input_shape: tuple[int, ...],
    num_classes: int = 10,
    out: str | Path | None = None,
    batches: int = 4,
    batch_size: int = 64,
    seed: int = 0,
) -> int:
    """``featdistill inspect TEACHER --cka STUDENT``: print the layer CKA matrix of two zoo models (freshly built,
    on seeded random inputs of ``input_shape``) and write the heatmap PNG to ``out`` if given.

    For trained models call :func:`cka_matrix` from Python with your own loader.
    """
    from featdistill.models import build_model
    from featdistill.seeding import generator, seeded

    c, h = input_shape[0], input_shape[-1]
    with seeded(seed, "cka-models"):
        teacher = build_model(teacher_name, num_classes=num_classes, in_channels=c, image_size=h)
        student = build_model(student_name, num_classes=num_classes, in_channels=c, image_size=h)
    g = generator(seed, "cka-inputs")
    loader = [{"input": torch.randn(batch_size, *input_shape, generator=g)} for _ in range(batches)]
    t_paths, s_paths = default_cka_paths(teacher), default_cka_paths(student)
    m = cka_matrix(teacher, student, loader, t_paths, s_paths, max_batches=None)
    print(f"linear CKA, {teacher_name} (rows) × {student_name} (columns), {batches * batch_size} random inputs")
    print(format_cka_matrix(m, t_paths, s_paths))
    if out:
        path = Path(out)
        if path.suffix.lower() != ".png":
            path = path / f"cka_{teacher_name}_{student_name}.png"
        print(f"heatmap: {plot_cka(m, t_paths, s_paths, path)}")
    return 0
