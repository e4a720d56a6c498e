"""Config sections → objects: zoo models, the user's own classes (``class_path``) and Hugging Face models.

Why one module: "which code does this config run?" must have one answer. A zoo name runs featdistill's code; a
``class_path`` imports and calls the user's (say so in ``docs/configs.md``: it runs that code); ``hf`` builds a
``transformers`` model from a config or loads one from a **local** folder (``local_files_only``: never a
download). Weights are loaded only through safetensors or ``torch.load(weights_only=True)`` — never pickle.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featdistill.config import ConfigError, ModelConfig
from featdistill.seeding import seeded

__all__ = [
    "import_object",
    "instantiate",
    "build_model_from_config",
    "build_hf_model",
    "load_weights",
    "sha256_file",
    "check_same_tokenizer",
    "tokenizer_fingerprint",
    "HF_AUTO_CLASSES",
]

#: the files a saved Hugging Face tokenizer is made of (fast tokenizer, BPE, SentencePiece, WordPiece)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt", "spiece.model")

#: the Auto class a task's Hugging Face model is built with (override with ``hf.auto``)
HF_AUTO_CLASSES = {
    "classification": "AutoModelForImageClassification",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "segmentation": "AutoModelForSemanticSegmentation",
}


def import_object(path: str, where: str = "class_path") -> Any:
    """``"pkg.mod:Name"`` (or ``"pkg.mod.Name"``, nested ``"pkg.mod:Outer.Inner"``) → the object."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where} = {path!r}: write it as 'package.module:Name' (e.g. 'mypkg.models:SmallCNN')")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"{where} = {path!r}: cannot import module {module_name!r} ({err}); install the package or add its "
            "folder to PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            raise ConfigError(
                f"{where} = {path!r}: {getattr(obj, '__name__', module_name)!r} has no attribute {part!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        obj = getattr(obj, part)
    return obj


def instantiate(path: str, init_args: Mapping[str, Any], where: str = "class_path") -> Any:
    """Import ``path`` and call it with ``init_args``; unknown arguments are named with the accepted ones."""
    target = import_object(path, where)
    if not callable(target):
        raise ConfigError(f"{where} = {path!r} is a {type(target).__name__}, not a class or function")
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        bad = [k for k in init_args if k not in sig.parameters]
        if bad:
            accepted = [n for n in sig.parameters if n != "self"]
            raise ConfigError(f"{where} = {path!r} takes no argument(s) {bad}; it takes {accepted}")
        missing = [
            n
            for n, p in sig.parameters.items()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in init_args
        ]
        if missing:
            raise ConfigError(f"{where} = {path!r} needs init_args {missing}")
    try:
        return target(**dict(init_args))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} = {path!r} with init_args {dict(init_args)} failed: {err}") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load weights safely: safetensors, or a torch file with ``weights_only=True`` (never plain pickle)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} does not exist; train the model first or fix the path")
    if sha256 is not None and sha256_file(p) != sha256.lower():
        raise ConfigError(f"checkpoint {p}: sha256 mismatch (expected {sha256}); refusing to load it")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {p} does not fit {type(model).__name__}: missing keys {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
        )
    return model


def build_hf_model(
    mc: ModelConfig, task: str | None, num_classes: int | None, where: str, info: Mapping[str, Any] | None = None
) -> nn.Module:
    """A ``transformers`` model from ``hf.config`` (random init) or ``hf.path`` (a local folder, offline).

    A config built here takes ``vocab_size`` and ``pad_token_id`` from the dataset (its tokenizer) unless given,
    and ``num_labels`` from the dataset's classes for labelled tasks."""
    assert mc.hf is not None
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{where}.hf needs transformers: pip install 'featdistill[hf]'") from None
    auto_name = mc.hf.auto or HF_AUTO_CLASSES.get(task or "", "AutoModel")
    auto = getattr(transformers, auto_name, None)
    if auto is None or not hasattr(auto, "from_config"):
        raise ConfigError(
            f"{where}.hf.auto = {auto_name!r} is not a transformers Auto class (e.g. AutoModelForCausalLM)"
        )
    if mc.hf.path is not None:
        folder = Path(mc.hf.path)
        if not folder.is_dir():
            raise ConfigError(
                f"{where}.hf.path = {mc.hf.path!r} is not a local folder; featdistill never downloads — save the "
                "model with save_pretrained() and point hf.path at that folder"
            )
        try:
            return auto.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}.hf.path = {mc.hf.path!r}: cannot load it with {auto_name} ({err})") from None
    cfg_kwargs = dict(mc.hf.config or {})
    model_type = cfg_kwargs.pop("model_type")
    labelled = task in ("sequence-classification", "token-classification", "classification", "segmentation")
    if labelled and num_classes and "num_labels" not in cfg_kwargs:
        cfg_kwargs["num_labels"] = int(num_classes)
    for key in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
        if info and key in info and key not in cfg_kwargs:
            cfg_kwargs[key] = info[key]
    try:
        config = transformers.AutoConfig.for_model(model_type, **cfg_kwargs)
        return auto.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}.hf.config: cannot build a {model_type!r} {auto_name} ({err})") from None


def tokenizer_fingerprint(mc: ModelConfig) -> str | None:
    """sha256 over the tokenizer files saved in a model's ``hf.path`` folder (``None`` when it ships none)."""
    if mc.hf is None or mc.hf.path is None:
        return None
    folder = Path(mc.hf.path)
    files = [folder / name for name in _TOKENIZER_FILES if (folder / name).is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def check_same_tokenizer(student: ModelConfig, teacher: ModelConfig) -> None:
    """Refuse a teacher and a student whose saved tokenizers differ.

    Why refuse rather than try: token distillation compares the two models' distributions position by
    position and id by id; with two vocabularies, id ``i`` names different strings, so the loss would be a
    silent wrong number (cross-tokenizer KD needs an alignment this library does not attempt). Both models
    read the same ``input_ids`` here, so they must share one tokenizer; models built from ``hf.config`` take
    the dataset's tokenizer and always agree."""
    s, t = tokenizer_fingerprint(student), tokenizer_fingerprint(teacher)
    if s is not None and t is not None and s != t:
        assert student.hf is not None and teacher.hf is not None
        raise ConfigError(
            f"teacher.hf.path = {teacher.hf.path!r} and student.hf.path = {student.hf.path!r} ship different "
            "tokenizers: cross-tokenizer distillation is not supported (token ids would not name the same "
            "strings, so per-token KD would compare unrelated tokens); use a student that shares the "
            "teacher's tokenizer"
        )


def _data_defaults(fn: Any, info: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments a zoo model can take from the dataset (``horizon``, ``scale``, ``vocab_size``…)."""
    if not info:
        return {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in info.items() if k in params and k not in given}


def build_model_from_config(
    mc: ModelConfig,
    num_classes: int,
    image_shape: tuple[int, ...],
    seed: int,
    role: str,
    task: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a model section with seeded initialisation (reproducible, no global RNG side effects), then load
    its checkpoint. Zoo models get ``num_classes``/``in_channels``/``image_size`` from the data (and any argument
    they take from the dataset's ``info``, e.g. a forecaster's ``horizon``); ``class_path`` models get exactly
    their ``init_args``; ``hf`` models their config (``num_labels`` from the data for labelled tasks)."""
    with seeded(seed, role):
        if mc.model is not None:
            from featdistill.models import MODELS, build_model

            c = image_shape[0] if image_shape else 1
            h = image_shape[-1] if image_shape else 1
            extra = _data_defaults(MODELS[mc.model], info, mc.kwargs)
            try:
                model = build_model(
                    mc.model, num_classes=max(int(num_classes), 1), in_channels=c, image_size=h, **extra, **mc.kwargs
                )
            except TypeError as err:
                raise ConfigError(f"{role}.kwargs: {err}") from None
        elif mc.class_path is not None:
            model = instantiate(mc.class_path, mc.init_args, f"{role}.class_path")
            if not isinstance(model, nn.Module):
                raise ConfigError(
                    f"{role}.class_path = {mc.class_path!r} built a {type(model).__name__}, not an nn.Module"
                )
        else:
            model = build_hf_model(mc, task, num_classes, role, info)
    if mc.checkpoint:
        load_weights(model, mc.checkpoint, mc.sha256)
    return model
