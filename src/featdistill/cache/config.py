"""``featdistill cache CONFIG.yaml``: build the teacher store a training config will read.

The cache config *is* a training config plus a ``cache:`` section, so the store is built for exactly the
training split (``data.val_fraction``, ``data.subset``, the same seed) and the same augmentation
(``data.augment`` with seed ``seed``) that ``featdistill train`` will use with ``teacher.source: store``::

    seed: 0
    data: {name: mnist5k, val_fraction: 0.1, augment: {pad_crop: 2}, views: cycle}
    teacher: {model: convnet, kwargs: {width: 64}, checkpoint: runs/teacher/student.safetensors,
              source: store, store: stores/mnist5k-w64-V8}
    student: {model: convnet, kwargs: {width: 8}}          # optional here (used to resolve method taps)
    method: {name: kd}                                      # optional: its teacher taps are stored too
    cache: {num_views: 8, topk: null}                       # out defaults to teacher.store

Every other section is validated by :mod:`featdistill.config` as usual; the ``cache:`` keys by
:class:`CacheSection` (unknown keys fail with the valid ones listed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featdistill.validation import format_validation_error

__all__ = ["CacheSection", "build_store_from_config"]


class CacheSection(BaseModel):
    """The ``cache:`` section; each key is one :func:`featdistill.cache.build_store` argument."""

    model_config = ConfigDict(extra="forbid")

    out: str | None = Field(None, description="store folder (default: teacher.store)")
    num_views: int = Field(8, ge=1, description="V, stored views per sample")
    topk: int | None = Field(None, ge=1, description="top-k logits (null = full logits)")
    logits: bool = True
    taps: dict[str, Any] | None = Field(
        None, description="{name: module path}; null = the model's embedding + the method's teacher taps"
    )
    project_dim: int | dict[str, int] | None = None
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = Field(256, ge=1)
    shard_size: int | None = Field(None, ge=1)
    autocast: bool | Literal["auto"] = Field(
        "auto", description="run the teacher in bf16 (CPU) / fp16 (CUDA); auto = where the hardware has bf16"
    )
    logits_size: tuple[int, int] | None = Field(
        None, description="segmentation: store per-pixel logits at this (h, w) instead of the teacher's output size"
    )
    channels_last: bool = False
    store_view_params: bool = False
    resume: bool = True
    device: str | None = None


def build_store_from_config(path: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> Path:
    """Read a YAML config (or take a config mapping) + ``--set key=value`` overrides, build its teacher store,
    return the folder."""
    from featdistill.config import ConfigError, apply_overrides, parse_config

    if isinstance(path, Mapping):
        p, raw = Path("<config>"), dict(path)
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        from featdistill.yaml_safe import YAMLLoadError, load_yaml_file

        try:
            raw = load_yaml_file(p) or {}
        except YAMLLoadError as err:
            raise ConfigError(str(err)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (data, teacher, cache, …)")
    raw = apply_overrides(raw, overrides)
    section = raw.pop("cache", None)
    if section is None:
        raise ConfigError(f"{p}: no `cache:` section (e.g. `cache: {{num_views: 8, topk: 10}}`)")
    try:
        cc = CacheSection.model_validate(section)
    except ValidationError as err:
        raise ConfigError(
            format_validation_error(err, CacheSection, prefix="cache", title="invalid cache section")
        ) from None
    teacher_raw = raw.get("teacher")
    if not isinstance(teacher_raw, Mapping):
        raise ConfigError(f"{p}: a teacher store needs a `teacher:` section (model, kwargs, checkpoint)")
    out = cc.out or teacher_raw.get("store")
    if not out:
        raise ConfigError(f"{p}: say where the store goes: cache.out or teacher.store")
    # the build runs the live teacher; the rest of the config is parsed exactly as `featdistill train` does
    raw["teacher"] = {k: v for k, v in teacher_raw.items() if k not in ("source", "store")}
    raw.setdefault("student", {k: v for k, v in raw["teacher"].items() if k not in ("checkpoint", "sha256")})
    cfg = parse_config(raw)
    assert cfg.teacher is not None and cfg.task is not None
    trained_hf = cfg.teacher.hf is not None and cfg.teacher.hf.path is not None
    if not cfg.teacher.checkpoint and not trained_hf:
        raise ConfigError(
            "teacher.checkpoint is required to build a store: a randomly initialised teacher teaches nothing"
        )
    from featdistill.errors import StartupGuard

    guard = StartupGuard("the store build")  # values failing in constructors / the first shard → ConfigError
    with guard.watch():
        return _build(cfg, cc, out, guard)


def _build(cfg: Any, cc: CacheSection, out: str, guard: Any) -> Path:
    from featdistill.cache.builder import build_store
    from featdistill.errors import phase
    from featdistill.run import build_data, build_model, data_meta

    phase("the data (data.*)")
    train_set, _, augmenter, train_loader, _, _ = build_data(cfg, num_views=cc.num_views)
    meta = data_meta(cfg, train_set)
    task = cfg.task.build(meta["num_classes"] or None)
    phase("the teacher (teacher.*)")
    teacher = build_model(cfg.teacher, meta, cfg.seed, "teacher")
    phase("the first shard (cache.*)")
    taps = cc.taps
    if taps is None:
        taps = _default_taps(cfg, teacher, meta)
    build_store(
        teacher,
        train_set,
        augmenter,
        cc.num_views,
        out,
        taps=taps,
        topk=cc.topk,
        logits=cc.logits,
        project_dim=cc.project_dim,
        batch_size=cc.batch_size,
        shard_size=cc.shard_size,
        indices=train_loader.indices,
        resume=cc.resume,
        model_name=cfg.teacher.display_name,
        dtype=cc.dtype,
        device=cc.device,
        autocast=cc.autocast,
        channels_last=cc.channels_last,
        store_view_params=cc.store_view_params,
        task=task,
        logits_size=cc.logits_size,
        on_shard=guard.started,
    )
    return Path(out)


def _default_taps(cfg: Any, teacher: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The model's pooled embedding plus whatever the configured method asks of the teacher."""
    from featdistill.methods import METHODS, build_method
    from featdistill.run import build_model
    from featdistill.taps import LOGITS

    taps: dict[str, Any] = {}
    emb = getattr(teacher, "embedding_path", None)
    if emb and cfg.task.name == "classification":  # a pooled vector per image; dense tasks store only what is asked
        taps["embedding"] = emb
    m = cfg.method
    if m.name in METHODS and METHODS[m.name].needs_teacher:
        method = build_method(m.name, **m.params, weights=m.weights or None)
        student = build_model(cfg.student, meta, cfg.seed, "student")
        method.bind(student, teacher)
        taps.update({k: v for k, v in method.teacher_taps().items() if v.path != LOGITS})
    return taps
