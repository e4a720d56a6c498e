"""Validated configuration for ``featdistill condense`` and the two functions the CLI wraps.

The CLI stays a thin wrapper: ``featdistill condense CONFIG.yaml`` → :func:`run_condense_config`,
``featdistill condense eval SYN.safetensors --dataset NAME ...`` → :func:`run_condense_eval`. Unknown keys
are errors (a typo in a hyper-parameter must not silently fall back to a default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .core import METHODS, condense, with_teacher_labels
from .evaluate import EvalProtocol, evaluate
from .relabel import ViewLabels, build_label_store, default_label_views, open_view_labels, relabel
from .synthetic import SyntheticSet

__all__ = [
    "CondenseConfig",
    "TeacherConfig",
    "TeacherModelConfig",
    "LabelStoreConfig",
    "EvalConfig",
    "run_condense_config",
    "run_condense_eval",
    "run_condense_relabel",
]


class LabelStoreConfig(BaseModel):
    """Per-view soft labels kept in a teacher store (see :mod:`featdistill.condense.relabel`).

    When ``dir`` holds a store valid for the synthetic images (or, for a random/herding set, a store over the
    training set built by ``featdistill cache``) it is used and no teacher is built; otherwise the teacher
    builds it there. A store built for anything else is refused with the reason.
    """

    model_config = ConfigDict(extra="forbid")
    dir: str
    num_views: int = Field(default=8, ge=1, description="V stored views per image (a present store needs ≥ V)")
    pad_crop: int | None = Field(default=None, ge=0, description="None → 1/8 of the image side")
    flip: bool | None = Field(default=None, description="None → on, except for digit datasets")
    resized_crop: tuple[float, float] | None = None
    seed: int = 0
    topk: int | None = Field(default=None, ge=1)


class TeacherModelConfig(BaseModel):
    """A trained zoo model a condenser synthesises from (SRe2L's teacher, one member of CV-DD's committee)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    checkpoint: str = Field(description="safetensors (or torch state-dict) file written by `featdistill train`")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)


class TeacherConfig(BaseModel):
    """A zoo model + checkpoint whose softened predictions become the synthetic labels, optionally through a
    teacher store of augmented views (``store``); with a present store the model is not needed."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    checkpoint: str | None = Field(
        default=None, description="safetensors (or torch state-dict) file of the teacher's weights"
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    temperature: float = Field(default=1.0, gt=0)
    store: LabelStoreConfig | None = None

    @model_validator(mode="after")
    def _teacher_or_store(self) -> TeacherConfig:
        if (self.model is None) != (self.checkpoint is None):
            raise ValueError("soft_label_teacher needs both model and checkpoint (or neither, with a store)")
        if self.model is None and self.store is None:
            raise ValueError("soft_label_teacher needs model + checkpoint, or store.dir holding a teacher store")
        return self


class EvalConfig(BaseModel):
    """:class:`EvalProtocol` fields; see its docstring for meanings and defaults."""

    model_config = ConfigDict(extra="forbid")
    num_nets: int = Field(5, ge=1, description="fresh networks trained on the set (0 would report NaN)")
    epochs: int = Field(300, ge=1)
    lr: float = Field(0.01, gt=0, allow_inf_nan=False)
    use_learned_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = Field(256, ge=1)
    decay_at: float = 0.5
    decay_factor: float = 0.1
    dsa: bool = True
    dsa_strategy: str | None = None
    backbone: str | None = None  # None → the condensation backbone
    backbone_kwargs: dict[str, Any] | None = None
    baselines: list[Literal["random", "herding"]] = Field(default_factory=lambda: ["random", "herding"])
    robust_scores: bool = True
    full_data_acc: float | None = None
    full_epochs: int = Field(20, ge=1)
    full_nets: int = Field(1, ge=1)
    w: float = 0.5
    gamma: float = 0.5
    lr_grid: list[float] | None = None
    val_fraction: float = 0.1


class CondenseConfig(BaseModel):
    """One condensation run: data, method, budget, outputs, optional evaluation."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(description="a featdistill.data name: digits, mnist5k, cifar10, ...")
    data_root: str | None = None
    ipc: int = Field(ge=1)
    method: str = "dm"
    backbone: str = "convnet"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    iterations: int | None = Field(default=None, ge=0)
    seed: int = Field(0, ge=0)
    init: Literal["real", "noise", "herding", "representative"] | None = None
    # a finite, positive step: `.nan` or 1e30 used to write a set of NaN images and exit 0
    lr_img: float | None = Field(default=None, gt=0, le=1e4, allow_inf_nan=False)
    momentum_img: float = Field(0.5, ge=0, lt=1)
    batch_real: int | None = Field(default=None, ge=1)
    dsa: bool | None = None
    dsa_strategy: str | None = None
    fyi: bool = False
    budget_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    device: str = "cpu"
    method_kwargs: dict[str, Any] = Field(default_factory=dict)
    soft_label_teacher: TeacherConfig | None = None
    teachers: list[TeacherModelConfig] = Field(
        default_factory=list, description="trained models the method synthesises from (sre2l, cvdd, ...)"
    )
    out_dir: str = "runs/condense"
    png: bool = True
    evaluate: EvalConfig | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose from {list(METHODS)}")
        return v


def _load_config(cfg: CondenseConfig | dict[str, Any] | str | Path) -> CondenseConfig:
    if isinstance(cfg, CondenseConfig):
        return cfg
    if isinstance(cfg, dict):
        return CondenseConfig.model_validate(cfg)
    from featdistill.yaml_safe import load_yaml_file

    data = load_yaml_file(cfg)  # safe_load-based and bounded: a config never executes code while loading
    if not isinstance(data, dict):
        raise ValueError(f"{cfg}: expected a mapping at the top level, found {type(data).__name__}")
    return CondenseConfig.model_validate(data)


def _load_teacher(
    t: TeacherConfig | TeacherModelConfig, num_classes: int, in_channels: int, image_size: int
) -> torch.nn.Module:
    """The zoo teacher with its checkpoint, loaded as ``featdistill train`` loads one (safe formats only)."""
    from featdistill.models import build_model
    from featdistill.run import load_weights

    assert t.model is not None and t.checkpoint is not None
    model = build_model(
        t.model, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **t.model_kwargs
    )
    return load_weights(model, t.checkpoint).eval()


def _store_labels(
    syn: SyntheticSet, st: TeacherConfig, teacher: torch.nn.Module | None, train: Any, device: str
) -> ViewLabels:
    """Use the store at ``st.store.dir`` when it is there (refusing a stale one), else build it with the teacher."""
    from dataclasses import replace

    from featdistill.cache.format import MANIFEST

    sc = st.store
    assert sc is not None
    root = Path(sc.dir)
    overrides: dict[str, Any] = {k: v for k, v in (("pad_crop", sc.pad_crop), ("flip", sc.flip)) if v is not None}
    if sc.resized_crop is not None:
        overrides["resized_crop"] = tuple(sc.resized_crop)
    views = replace(default_label_views(syn), **overrides)
    expect: dict[str, Any] = {"num_views": sc.num_views}
    if overrides:  # asked-for views must be the stored ones; unspecified views accept what the store has
        expect["augmentation"] = views.config_hash()
    if not (root / MANIFEST).exists():
        if teacher is None:
            raise ValueError(
                f"soft_label_teacher.store.dir {str(root)!r} holds no teacher store, and no teacher "
                "(soft_label_teacher.model + checkpoint) is given to build one"
            )
        build_label_store(
            syn,
            teacher,
            root,
            num_views=sc.num_views,
            views=views,
            seed=sc.seed,
            topk=sc.topk,
            model_name=st.model,
            device=device,
        )
    return open_view_labels(root, syn, train, st.temperature, teacher, expect=expect)


def run_condense_config(cfg: CondenseConfig | dict[str, Any] | str | Path) -> Path:
    """Run one condensation from a config (object, dict or YAML path); returns the ``.safetensors`` path.

    Writes ``out_dir/synthetic.safetensors``, ``synthetic.png`` (unless ``png: false``), the resolved
    ``config.json`` and, when ``evaluate`` is set, ``eval.json``.
    """
    from featdistill.data.datasets import load_dataset

    c = _load_config(cfg)
    train, test = load_dataset(c.dataset, c.data_root)
    st = c.soft_label_teacher
    ch, h, w = train.images.shape[1:]
    teacher = None
    if st is not None and st.model is not None:
        teacher = _load_teacher(st, len(train.classes), int(ch), int(max(h, w)))
    teachers = [_load_teacher(t, len(train.classes), int(ch), int(max(h, w))) for t in c.teachers]
    syn = condense(
        train,
        c.ipc,
        c.method,
        c.backbone,
        c.iterations,
        c.seed,
        backbone_kwargs=c.backbone_kwargs,
        init=c.init,
        lr_img=c.lr_img,
        momentum_img=c.momentum_img,
        batch_real=c.batch_real,
        dsa=c.dsa,
        dsa_strategy=c.dsa_strategy,
        fyi=c.fyi,
        soft_label_teacher=teacher if st is not None and st.store is None else None,
        soft_label_temperature=st.temperature if st is not None else 1.0,
        budget_s=c.budget_s,
        device=c.device,
        teachers=teachers,
        **c.method_kwargs,
    )
    views = None
    if st is not None and st.store is not None:
        views = _store_labels(syn, st, teacher, train, c.device)
        syn = relabel(syn, views)
    syn.metadata["config"] = c.model_dump()
    bad = int((~torch.isfinite(syn.images)).sum())
    if bad:  # a diverged condensation is a failed run, never a saved set (it used to be written and scored 0.1)
        raise FloatingPointError(
            f"condensation diverged: {bad} of {syn.images.numel()} synthetic pixel values are not finite "
            f"(method {c.method}, lr_img {c.lr_img}); nothing was written — lower lr_img or iterations"
        )
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = syn.save(out / "synthetic.safetensors")
    if c.png:
        syn.save_grid_png(out / "synthetic.png")
    (out / "config.json").write_text(json.dumps(c.model_dump(), indent=2))
    if c.evaluate is not None:
        kw = c.evaluate.model_dump()
        kw["backbone"] = kw["backbone"] or c.backbone
        kw["backbone_kwargs"] = kw["backbone_kwargs"] if kw["backbone_kwargs"] is not None else c.backbone_kwargs
        kw["baselines"] = tuple(kw["baselines"])
        kw["lr_grid"] = tuple(kw["lr_grid"]) if kw["lr_grid"] else None
        report = evaluate(syn, test, EvalProtocol(device=c.device, **kw), train_set=train, label_store=views)
        (out / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    return path


def _recorded_dataset(name: Any) -> str | None:
    """The registry name of the dataset a set records (``digits-train`` → ``digits``)."""
    if not isinstance(name, str) or not name:
        return None
    return name[: -len("-train")] if name.endswith("-train") else name


def run_condense_eval(
    synthetic_path: str | Path,
    dataset: str | None,
    data_root: str | None = None,
    out: str | Path | None = None,
    label_store: str | Path | None = "auto",
    **protocol_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate a saved synthetic set on ``dataset``'s test split (baselines from its train split).

    ``dataset=None`` uses the dataset the set records (``metadata["dataset"]``; ``mnist5k`` for sets that record
    none); a dataset whose images do not have the set's shape is refused, naming both.

    ``protocol_kwargs`` are :class:`EvalProtocol` fields (validated through :class:`EvalConfig`); the
    backbone defaults to the one the set was condensed with. ``label_store``: ``"auto"`` uses the teacher store
    recorded in the set's ``soft_labels`` metadata when it is present on disk (else the set's own labels, with
    a note), a path uses that store, ``None`` never uses one. Writes the report to ``out`` if given.
    """
    from featdistill.data.datasets import load_dataset

    syn = SyntheticSet.load(synthetic_path)
    protocol_kwargs = dict(protocol_kwargs)
    device = str(protocol_kwargs.pop("device", "cpu"))
    kw = EvalConfig.model_validate(protocol_kwargs).model_dump()
    meta_backbone = syn.metadata.get("backbone")
    kw["backbone"] = kw["backbone"] or (meta_backbone if isinstance(meta_backbone, str) else "convnet")
    if kw["backbone_kwargs"] is None:
        kw["backbone_kwargs"] = syn.metadata.get("backbone_kwargs", {})
    kw["baselines"] = tuple(kw["baselines"])
    kw["lr_grid"] = tuple(kw["lr_grid"]) if kw["lr_grid"] else None
    recorded_ds = _recorded_dataset(syn.metadata.get("dataset"))
    dataset = dataset or recorded_ds or "mnist5k"
    train, test = load_dataset(dataset, data_root)
    if tuple(syn.images.shape[1:]) != tuple(train.images.shape[1:]):
        from featdistill.config import ConfigError

        raise ConfigError(
            f"{synthetic_path}: the synthetic images are {tuple(syn.images.shape[1:])} but {dataset!r} has "
            f"{tuple(train.images.shape[1:])} images (the set was condensed on "
            f"{recorded_ds or 'an unrecorded dataset'}); "
            f"evaluate it on its own dataset (--dataset {recorded_ds or 'NAME'})"
        )
    note = None
    if label_store == "auto":
        from featdistill.cache.format import MANIFEST

        recorded = (syn.metadata.get("soft_labels") or {}).get("store")
        label_store = recorded if recorded and (Path(recorded) / MANIFEST).exists() else None
        if recorded and label_store is None:
            note = f"label store {recorded} recorded in the set is absent: trained on the set's own (static) labels"
    report = evaluate(syn, test, EvalProtocol(device=device, **kw), train_set=train, label_store=label_store)
    if note:
        report["notes"].append(note)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2, default=str))
    return report


def run_condense_relabel(
    synthetic_path: str | Path,
    teacher: TeacherConfig | dict[str, Any] | str | Path,
    dataset: str | None = None,
    data_root: str | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Give a saved synthetic set teacher soft labels without condensing it again.

    ``teacher`` is a ``soft_label_teacher`` section (object, dict or YAML file): without ``store`` the live
    teacher labels the un-augmented images (static labels); with ``store`` the labels are per view, from the
    store at ``store.dir`` when present, else built there by the teacher. ``dataset`` (its training split) is
    needed only to label a random/herding set from a training-set store. Writes ``out`` (default
    ``<name>_soft.safetensors`` next to the input; the input is never overwritten) and returns its path.
    """
    from featdistill.data.datasets import load_dataset

    if isinstance(teacher, (str, Path)):
        from featdistill.yaml_safe import load_yaml_file

        raw = load_yaml_file(teacher)  # safe_load-based and bounded: never executes code
        teacher = raw.get("soft_label_teacher", raw) if isinstance(raw, dict) else raw
    st = teacher if isinstance(teacher, TeacherConfig) else TeacherConfig.model_validate(teacher)
    src = Path(synthetic_path)
    syn = SyntheticSet.load(src)
    c, h, w = syn.images.shape[1:]
    model = _load_teacher(st, syn.num_classes, int(c), int(max(h, w))) if st.model is not None else None
    if st.store is not None:
        train = load_dataset(dataset, data_root)[0] if dataset else None
        labelled = relabel(syn, _store_labels(syn, st, model, train, device))
    else:
        assert model is not None  # the validator requires model + checkpoint without a store
        labelled = with_teacher_labels(syn, model, st.temperature, device, teacher_name=st.model)
    target = Path(out) if out is not None else src.with_name(f"{src.stem}_soft.safetensors")
    if target.resolve() == src.resolve():
        raise ValueError(f"refusing to overwrite the input set {src}; choose another --out")
    return labelled.save(target)
