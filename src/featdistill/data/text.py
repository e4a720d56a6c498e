"""Real text that ships offline: the Python standard library's own source, for language modelling and
sequence classification.

Why this corpus: the project may not download anything at run time, yet a language task needs *real* text —
synthetic token streams have no structure worth distilling. Every Python installation carries megabytes of
carefully written, human-authored source under ``sysconfig.get_paths()["stdlib"]``. It is code rather than
prose, but it has everything a causal LM has to learn (vocabulary, long-range structure, indentation), and its
packages give a natural, hard-to-fake labelling (which package does a snippet come from?).

Why the stdlib of the *running* interpreter is acceptable: it differs between Python versions, so every
dataset records a SHA-256 of exactly the text it used (``info["corpus_sha256"]``) and the interpreter version
(``info["python"]``); a different stdlib is then visibly a different dataset, never silently the same name.

Why a tokenizer trained here: a pretrained one would have to be downloaded. A byte-level BPE
(:func:`train_tokenizer`) trains on ~2 M characters in well under a second, covers every byte (no unknown
tokens) and is deterministic — merges are chosen by count with ties broken by the symbol pair, so the same
texts give the same tokenizer in every process. It is trained on the *train* files only, so the test split
measures generalisation to unseen files, not to files whose merges it has memorised.

Why splits are by file: windows of one file on both sides of the split would leak (identical boilerplate,
shared identifiers). Which files are held out follows a hash of ``(seed, path)`` — a seeded choice that needs no
generator state and does not depend on the order files are found in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featdistill.data._seeding import generator_for
from featdistill.data.arrays import ArrayDataset

if TYPE_CHECKING:  # heavy or optional imports, only for type hints
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CLASSIFICATION_PACKAGES",
    "SPECIAL_TOKENS",
    "StdlibCorpus",
    "as_hf_tokenizer",
    "load_pystdlib_classification",
    "load_pystdlib_lm",
    "read_stdlib_corpus",
    "save_tokenizer",
    "tokenizer_from_info",
    "train_tokenizer",
]

#: special tokens, in id order: ``<pad>`` must be 0 (the padding id the tasks and models assume)
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the specials and at least one merge

#: packages a classification label may name, in order of preference (all big, long-lived stdlib packages)
CLASSIFICATION_PACKAGES: tuple[str, ...] = (
    "asyncio",
    "email",
    "xml",
    "multiprocessing",
    "unittest",
    "importlib",
    "http",
    "logging",
    "json",
    "concurrent",
)

_MAX_FILE_BYTES = 200_000
# Directories skipped at any depth. test/tests/lib2to3's test data: deliberately odd code (and huge);
# idlelib: a GUI app rather than library code; site-packages: third-party code installed into this stdlib;
# encodings: machine-generated codec tables (long runs of escaped characters, not source anyone wrote);
# pydoc_data: one generated documentation blob; __pycache__: bytecode.
_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "encodings", "pydoc_data", "__pycache__"})


# ------------------------------------------------------------------------------------------------------
# corpus
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StdlibCorpus:
    """Selected stdlib source files: ``files`` are ``(relative POSIX path, text)`` in sorted path order."""

    root: str
    files: tuple[tuple[str, str], ...]
    sha256: str

    @property
    def chars(self) -> int:
        return sum(len(t) for _, t in self.files)


def _skip_dir(name: str) -> bool:
    # config-3.X-<platform>: the build's python-config script, different on every platform and build
    return name in _SKIP_DIRS or name.startswith("config-") or name.startswith(".")


def _skip_file(name: str) -> bool:
    # _sysconfigdata_*: generated at build time (compiler flags, install paths), differs between machines
    return not name.endswith(".py") or name.startswith("_sysconfigdata")


def _source_paths(root: Path) -> list[str]:
    """Every candidate ``.py`` file under ``root`` as a sorted relative POSIX path (skipped folders pruned)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skip_dir(d)]
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        out.extend(prefix + f for f in filenames if not _skip_file(f))
    return sorted(out)


def _read_source(path: Path) -> str | None:
    """The file's text with LF line ends, or ``None`` when it is too big or not UTF-8 (both are skipped)."""
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            return None
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.replace("\r\n", "\n")


def _corpus_sha(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over each file's path, length and text, so that file boundaries are part of the identity."""
    h = hashlib.sha256()
    for rel, text in files:
        data = text.encode("utf-8")
        h.update(f"{rel}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def _stdlib_root(root: str | os.PathLike[str] | None) -> Path:
    path = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"the Python source folder {str(path)!r} does not exist; pass root=<a folder of .py files> "
            "(the default is sysconfig.get_paths()['stdlib'])"
        )
    return path


def read_stdlib_corpus(
    max_chars: int | None = 2_000_000,
    packages: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> StdlibCorpus:
    """The stdlib source files used as a corpus, chosen deterministically.

    Files are taken in sorted relative-path order (tests, ``idlelib``, ``site-packages``, generated files,
    files over 200 kB and files that are not UTF-8 are skipped) until the next file would exceed
    ``max_chars`` characters; a budget keeps building fast and makes the corpus a fixed prefix of the sorted
    list. ``packages`` restricts the choice to files under those top-level packages, with the budget applied
    *per package* (so a big package cannot crowd out the others); there a file that does not fit is skipped
    and smaller later files still join, so one large first module cannot leave a package nearly empty.
    ``root`` replaces the stdlib folder (tests).
    """
    base = _stdlib_root(root)
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be a positive number of characters (or None for all), got {max_chars}")
    paths = _source_paths(base)
    groups: dict[str, list[str]]
    if packages is None:
        groups = {"": paths}
    else:
        groups = {p: [r for r in paths if r.startswith(p + "/")] for p in packages}
    files: list[tuple[str, str]] = []
    for group in groups.values():
        total = 0
        for rel in group:
            text = _read_source(base / rel)
            if text is None or not text.strip():
                continue
            if max_chars is not None and total + len(text) > max_chars:
                if packages is None:
                    break  # the whole corpus: a clean prefix of the sorted list
                continue  # per package: a big file must not end the package (it would lose its class)
            files.append((rel, text))
            total += len(text)
    return StdlibCorpus(str(base), tuple(files), _corpus_sha(files))


def _file_uniform(rel: str, seed: int, tag: str) -> float:
    """A uniform number in ``[0, 1)`` that is a pure function of ``(tag, seed, path)`` (the split key)."""
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def _split_files(
    files: Sequence[tuple[str, str]], test_fraction: float, seed: int, tag: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` by whole files: the test share of the *characters* is at most ``test_fraction``.

    Files are visited in the order of a hash of ``(tag, seed, path)`` and a file joins test when it still fits
    in the ``test_fraction`` budget. Why a character budget rather than a coin per file: file sizes vary by
    100x, so a coin gives test shares anywhere from 2 % to 20 % (and may leave a small package's class with
    no test file). Test gets at least one file (the smallest, if none fits) and train keeps at least one.
    Each side keeps sorted path order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(files) < 2:
        raise ValueError(
            f"only {len(files)} source file(s) selected; a file-level split needs at least 2 — raise max_chars"
        )
    budget = test_fraction * sum(len(t) for _, t in files)
    order = sorted(files, key=lambda f: (_file_uniform(f[0], seed, tag), f[0]))
    test_names: set[str] = set()
    used = 0
    for rel, text in order:
        if used + len(text) <= budget and len(test_names) < len(files) - 1:
            test_names.add(rel)
            used += len(text)
    if not test_names:
        test_names.add(min(order, key=lambda f: len(f[1]))[0])
    train = [f for f in files if f[0] not in test_names]
    test = [f for f in files if f[0] in test_names]
    return train, test


# ------------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------------


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ImportError("the text datasets need the 'tokenizers' library: pip install tokenizers") from None
    return tokenizers


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, seed: int = 0) -> Tokenizer:
    """A byte-level BPE trained on ``texts``: ids 0–3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

    Byte-level (GPT-2 style) so every string encodes and decodes back exactly — whitespace and indentation
    included, which matters for source code — and ``<unk>`` is never produced (it exists for models and
    wrappers that expect one). Pairs seen once are not merged (``min_frequency=2``), so on a tiny corpus the
    vocabulary may stay below ``vocab_size``; read the real size from ``get_vocab_size()``.

    ``seed`` does not change the result: BPE training makes no random choice (merges are chosen by count,
    ties by the pair), which the tests check across processes. It is accepted so that every builder here
    takes the run's seed the same way.
    """
    del seed  # deterministic by construction, see above
    if vocab_size < _MIN_VOCAB:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {_MIN_VOCAB} "
            f"(256 byte symbols + {len(SPECIAL_TOKENS)} special tokens + 1 merge)"
        )
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    for want, name in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(name)
        if got != want:  # guards the <pad> = 0 contract against a change in the trainer's id order
            raise RuntimeError(f"tokenizer training put {name!r} at id {got}, expected {want}")
    return tok


def tokenizer_from_info(info: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer a text dataset was built with (from ``info["tokenizer_json"]``)."""
    if "tokenizer_json" not in info:
        raise KeyError("this dataset's info has no 'tokenizer_json'; it was not built by featdistill.data.text")
    return _tokenizers().Tokenizer.from_str(info["tokenizer_json"])


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer.json`` (loadable by ``tokenizers.Tokenizer.from_file`` and by Hugging Face's
    ``PreTrainedTokenizerFast(tokenizer_file=...)``) so a trained model can be used on new text."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out


def as_hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The tokenizer as a Hugging Face ``PreTrainedTokenizerFast`` (needs ``transformers``, imported here only)."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise ImportError("as_hf_tokenizer needs transformers: pip install transformers") from None
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _encode(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(list(texts))]


# ------------------------------------------------------------------------------------------------------
# language modelling
# ------------------------------------------------------------------------------------------------------


def _windows(stream: np.ndarray, seq_len: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into windows of ``seq_len`` starting every ``stride`` tokens.

    Windows continue until one reaches the end of the stream; the part of the last window past the end is
    ``<pad>`` with ``attention_mask`` 0, so no token is dropped and none is invented.
    """
    n = int(stream.shape[0])
    starts = np.arange(0, max(n - seq_len, 0) + 1, stride, dtype=np.int64)
    if starts[-1] + seq_len < n:
        starts = np.append(starts, starts[-1] + stride)
    pos = starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]
    padded = (
        np.concatenate([stream, np.full(int(pos.max()) + 1 - n, PAD_ID, dtype=np.int64)]) if pos.max() >= n else stream
    )
    ids = padded[pos]
    mask = (pos < n).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(ids)), torch.from_numpy(mask)


def _labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hugging Face convention: the ids themselves, -100 where ``attention_mask`` is 0."""
    return torch.where(mask.bool(), ids, torch.full_like(ids, -100))


def _cap(n: int, limit: int | None, tag: str, seed: int, split: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of ``limit`` rows (in their original order), or ``None`` for all."""
    if limit is None or limit >= n:
        return None
    if limit <= 0:
        raise ValueError(f"{tag}: a cap on the number of samples must be positive, got {limit}")
    perm = torch.randperm(n, generator=generator_for(tag, seed, split))
    return perm[:limit].sort().values


def _check_common(seq_len: int, vocab_size: int) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 tokens (one to predict from, one to predict), got {seq_len}")
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small: use at least {_MIN_VOCAB}")


def load_pystdlib_lm(
    seq_len: int = 64,
    vocab_size: int = 2048,
    max_chars: int = 2_000_000,
    test_fraction: float = 0.1,
    stride: int | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Causal language modelling on the stdlib's source: ``(train, test)`` windows of ``seq_len`` tokens.

    Files are split by a hash of ``(seed, path)`` (about ``test_fraction`` of the files go to test), the
    tokenizer is trained on the train files, and each split's files are tokenised and concatenated in path
    order with ``<eos>`` after every file — the usual pretraining layout, so a window may span a file boundary
    and the model learns where files end. ``stride`` (default ``seq_len``: no overlap) sets the step between
    windows. ``max_train`` / ``max_test`` keep a seeded random subset of the windows (in stream order).

    Batches are ``{"input": {"input_ids", "attention_mask"}, "target": labels}``, all ``long (B, L)``, labels
    equal to ``input_ids`` except -100 at padding (only the last window of a split can have padding).
    ``info`` carries ``vocab_size`` (also as ``num_classes``: the width of the LM head), ``pad_token_id``,
    ``seq_len``, ``corpus_sha256``, ``files`` (count) and ``file_list``, and ``tokenizer_json`` (rebuild it
    with :func:`tokenizer_from_info` to decode or to save beside a trained model).
    """
    _check_common(seq_len, vocab_size)
    stride = seq_len if stride is None else int(stride)
    if not 1 <= stride <= seq_len:
        raise ValueError(
            f"stride must be between 1 and seq_len={seq_len} (windows may overlap, not skip), got {stride}"
        )
    corpus = read_stdlib_corpus(max_chars)
    train_files, test_files = _split_files(corpus.files, test_fraction, seed, "pystdlib-lm-split")
    tok = train_tokenizer([t for _, t in train_files], vocab_size, seed)
    tok_json = tok.to_str()
    common: dict[str, Any] = {
        "vocab_size": tok.get_vocab_size(),
        "num_classes": tok.get_vocab_size(),
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "seq_len": seq_len,
        "stride": stride,
        "corpus_sha256": corpus.sha256,
        "python": platform.python_version(),
        "tokenizer_json": tok_json,
    }
    out: list[ArrayDataset] = []
    for split, (name, files, limit) in enumerate((("train", train_files, max_train), ("test", test_files, max_test))):
        eos = np.asarray([EOS_ID], dtype=np.int64)
        parts = [p for ids in _encode(tok, [t for _, t in files]) for p in (ids, eos)]
        stream = np.concatenate(parts)
        ids, mask = _windows(stream, seq_len, stride)
        keep = _cap(int(ids.shape[0]), limit, "pystdlib-lm-cap", seed, split)
        if keep is not None:
            ids, mask = ids[keep], mask[keep]
        info = dict(common)
        info.update(
            split=name,
            files=len(files),
            file_list=[rel for rel, _ in files],
            chars=sum(len(t) for _, t in files),
            tokens=int(stream.shape[0]),
        )
        out.append(
            ArrayDataset(
                {"input_ids": ids, "attention_mask": mask},
                _labels(ids, mask),
                name=f"pystdlib-lm-{name}",
                target_kind="tokens",
                ignore_index=-100,
                info=info,
            )
        )
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------------
# sequence classification
# ------------------------------------------------------------------------------------------------------


def _file_snippets(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping full windows of one file's tokens (a tail shorter than ``seq_len`` is dropped)."""
    n = int(ids.shape[0]) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def load_pystdlib_classification(
    num_classes: int = 4,
    seq_len: int = 64,
    vocab_size: int = 2048,
    per_class: int | None = None,
    test_fraction: float = 0.2,
    max_chars_per_class: int | None = 400_000,
    seed: int = 0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Which stdlib package does a snippet of ``seq_len`` tokens come from? ``(train, test)``, balanced.

    The classes are the first ``num_classes`` of :data:`CLASSIFICATION_PACKAGES` present with at least 3
    usable files (fixed preference order, so the same interpreter gives the same classes). Each package's
    files — at most ``max_chars_per_class`` characters, in path order — are split by file (test snippets
    come from files the model never saw), the tokenizer is trained on the train files of all classes, and
    each file is cut into non-overlapping full windows. Classes are balanced by keeping, per split, the
    smallest class's count of snippets (``per_class`` caps the train count further), chosen by a seeded
    generator. Targets are class ids ``long (N,)``; ``classes`` are the package names; the attention mask
    is all ones (every snippet is full) but is provided so batches look like any tokenised input.
    """
    _check_common(seq_len, vocab_size)
    if per_class is not None and per_class <= 0:
        raise ValueError(f"per_class must be a positive number of train snippets per class (or None), got {per_class}")
    corpus = read_stdlib_corpus(max_chars_per_class, packages=CLASSIFICATION_PACKAGES)
    by_pkg: dict[str, list[tuple[str, str]]] = {p: [] for p in CLASSIFICATION_PACKAGES}
    for rel, text in corpus.files:
        by_pkg[rel.split("/", 1)[0]].append((rel, text))
    available = [p for p in CLASSIFICATION_PACKAGES if len(by_pkg[p]) >= 3]
    if not 2 <= num_classes <= len(available):
        raise ValueError(
            f"num_classes={num_classes}: this Python's stdlib has {len(available)} usable packages "
            f"({', '.join(available)}); choose num_classes between 2 and {len(available)}"
        )
    classes = available[:num_classes]
    splits = {p: _split_files(by_pkg[p], test_fraction, seed, "pystdlib-cls-split") for p in classes}
    chosen = [f for p in classes for f in by_pkg[p]]
    tok = train_tokenizer([t for p in classes for _, t in splits[p][0]], vocab_size, seed)
    common: dict[str, Any] = {
        "vocab_size": tok.get_vocab_size(),
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "seq_len": seq_len,
        "corpus_sha256": _corpus_sha(chosen),
        "python": platform.python_version(),
        "tokenizer_json": tok.to_str(),
    }
    out: list[ArrayDataset] = []
    for split, name in enumerate(("train", "test")):
        snippets = [
            np.concatenate([_file_snippets(ids, seq_len) for ids in _encode(tok, [t for _, t in splits[p][split]])])
            for p in classes
        ]
        counts = [int(s.shape[0]) for s in snippets]
        cap = min(counts)
        if split == 0 and per_class is not None:
            cap = min(cap, per_class)
        if cap == 0:
            empty = [p for p, c in zip(classes, counts) if c == 0]
            raise ValueError(
                f"no {name} snippet of seq_len={seq_len} tokens for package(s) {', '.join(empty)}; "
                "lower seq_len or raise max_chars_per_class"
            )
        xs, ys = [], []
        for c, s in enumerate(snippets):
            keep = torch.randperm(s.shape[0], generator=generator_for("pystdlib-cls-keep", seed, split, c))[:cap]
            xs.append(torch.from_numpy(s)[keep.sort().values])
            ys.append(torch.full((cap,), c, dtype=torch.long))
        ids = torch.cat(xs)
        info = dict(common)
        files = [rel for p in classes for rel, _ in splits[p][split]]
        info.update(split=name, files=len(files), file_list=files, available_per_class=dict(zip(classes, counts)))
        out.append(
            ArrayDataset(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                torch.cat(ys),
                name=f"pystdlib-cls-{name}",
                target_kind="class",
                classes=list(classes),
                info=info,
            )
        )
    return out[0], out[1]
