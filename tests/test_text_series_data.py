"""The offline real-data builders: stdlib-source language modelling / classification and bundled time series.

Small budgets (``max_chars`` 200k, vocab 512) keep the whole file to a few seconds; the properties checked are
the ones a distillation run relies on: masks and labels agree, builds are bit-identical, splits never share a
file or a time step, and the series normalisation only ever looks at the train period.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featdistill.data import text as T
from featdistill.data import timeseries as TS
from featdistill.data.arrays import ArrayDataset
from featdistill.data.task_registry import TASK_DATASETS, TASK_OF_DATASET

LM_KW = {"seq_len": 32, "vocab_size": 512, "max_chars": 200_000, "test_fraction": 0.1}
CLS_KW = {"seq_len": 32, "vocab_size": 512, "max_chars_per_class": 60_000}

needs_statsmodels = pytest.mark.skipif(
    importlib.util.find_spec("statsmodels") is None,
    reason='statsmodels data files not installed (pip install --no-deps "statsmodels>=0.14")',
)


@pytest.fixture(scope="module")
def lm() -> tuple[ArrayDataset, ArrayDataset]:
    return T.load_pystdlib_lm(**LM_KW)


@pytest.fixture(scope="module")
def cls() -> tuple[ArrayDataset, ArrayDataset]:
    return T.load_pystdlib_classification(**CLS_KW)


# ------------------------------------------------------------------------------------------------------
# corpus
# ------------------------------------------------------------------------------------------------------


def test_corpus_reader_skips_tests_generated_big_and_non_utf8(tmp_path: Path) -> None:
    files = {
        "a.py": "x = 1\n",
        "pkg/__init__.py": "y = 2\r\n",
        "pkg/mod.py": "z = 3\n",
        "test/t.py": "skip\n",
        "pkg/tests/t.py": "skip\n",
        "idlelib/i.py": "skip\n",
        "site-packages/third.py": "skip\n",
        "encodings/cp.py": "skip\n",
        "config-3.11-x86_64-linux-gnu/python-config.py": "skip\n",
        "_sysconfigdata__linux.py": "skip\n",
        "notes.txt": "not python\n",
    }
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(body.encode())
    (tmp_path / "big.py").write_bytes(b"#" * 200_001)
    (tmp_path / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    corpus = T.read_stdlib_corpus(None, root=tmp_path)
    assert [rel for rel, _ in corpus.files] == ["a.py", "pkg/__init__.py", "pkg/mod.py"]
    assert corpus.files[1][1] == "y = 2\n"  # CRLF normalised: the same file on Windows is the same dataset
    # the budget is a prefix of the sorted list: stop before the first file that does not fit
    assert [rel for rel, _ in T.read_stdlib_corpus(12, root=tmp_path).files] == ["a.py", "pkg/__init__.py"]
    assert T.read_stdlib_corpus(None, root=tmp_path).sha256 == corpus.sha256
    assert T.read_stdlib_corpus(12, root=tmp_path).sha256 != corpus.sha256
    with pytest.raises(FileNotFoundError, match="root="):
        T.read_stdlib_corpus(root=tmp_path / "missing")


def test_real_stdlib_corpus_is_the_running_python(lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    corpus = T.read_stdlib_corpus(LM_KW["max_chars"])
    assert 0 < corpus.chars <= LM_KW["max_chars"]
    names = [rel for rel, _ in corpus.files]
    assert names == sorted(names)
    assert not any(part in ("test", "tests", "idlelib", "site-packages") for n in names for part in n.split("/"))
    train, test = lm
    assert train.info["corpus_sha256"] == corpus.sha256 == test.info["corpus_sha256"]
    assert train.info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


# ------------------------------------------------------------------------------------------------------
# language modelling
# ------------------------------------------------------------------------------------------------------


def test_lm_shapes_masks_and_labels(lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    for ds in lm:
        assert isinstance(ds.inputs, dict) and set(ds.inputs) == {"input_ids", "attention_mask"}
        ids, mask, labels = ds.inputs["input_ids"], ds.inputs["attention_mask"], ds.targets
        assert ids.dtype == mask.dtype == labels.dtype == torch.long
        assert ids.shape == mask.shape == labels.shape == (len(ds), LM_KW["seq_len"])
        assert ds.target_kind == "tokens" and ds.ignore_index == -100
        assert ((labels == -100) == (mask == 0)).all()
        assert (labels[mask == 1] == ids[mask == 1]).all()
        assert (ids[mask == 0] == T.PAD_ID).all()
        assert int(ids.max()) < ds.info["vocab_size"] == ds.num_classes == 512
        # only the last window can be padded, and its mask is a prefix of ones
        assert bool(mask[:-1].all())
        last = mask[-1]
        assert (last[:-1] >= last[1:]).all() and int(last.sum()) >= 1
        assert ds.info["pad_token_id"] == 0 and ds.info["seq_len"] == LM_KW["seq_len"]
    batch = lm[0].batch(torch.tensor([0, 1]), torch.tensor([0, 0]), None)
    assert set(batch["input"]) == {"input_ids", "attention_mask"} and batch["target"].shape == (2, 32)


def test_lm_windows_lose_nothing_and_split_by_file(lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    corpus = dict(T.read_stdlib_corpus(LM_KW["max_chars"]).files)
    train, test = lm
    tr_files, te_files = train.info["file_list"], test.info["file_list"]
    assert not set(tr_files) & set(te_files)
    assert sorted(tr_files + te_files) == sorted(corpus)
    assert train.info["files"] == len(tr_files) and test.info["files"] >= 1
    assert test.info["chars"] <= LM_KW["test_fraction"] * (train.info["chars"] + test.info["chars"])
    tok = T.tokenizer_from_info(train.info)
    for ds, files in ((train, tr_files), (test, te_files)):
        stream = ds.inputs["input_ids"][ds.inputs["attention_mask"].bool()].tolist()
        assert len(stream) == ds.info["tokens"]
        segments, cur = [], []
        for t in stream:
            if t == T.EOS_ID:
                segments.append(cur)
                cur = []
            else:
                cur.append(t)
        assert cur == []  # every file, the last included, ends with <eos>
        assert [tok.decode(s) for s in segments] == [corpus[f] for f in files]


def test_lm_is_deterministic_across_builds_and_processes(lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    again = T.load_pystdlib_lm(**LM_KW)
    for a, b in zip(lm, again):
        assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
        assert torch.equal(a.targets, b.targets)
        assert a.fingerprint() == b.fingerprint()
        assert a.info == b.info
    code = (
        "from featdistill.data.text import load_pystdlib_lm as f; "
        f"tr, te = f(**{LM_KW!r}); print(tr.fingerprint(), te.fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [lm[0].fingerprint(), lm[1].fingerprint()]  # BPE training has no per-process randomness
    other_seed = T.load_pystdlib_lm(**{**LM_KW, "seed": 1})
    assert other_seed[1].info["file_list"] != lm[1].info["file_list"]


def test_lm_stride_and_caps() -> None:
    kw = {**LM_KW, "max_chars": 60_000}
    full, _ = T.load_pystdlib_lm(**kw)
    half, _ = T.load_pystdlib_lm(**kw, stride=16)
    ids = half.inputs["input_ids"]
    assert torch.equal(ids[:-2, 16:], ids[1:-1, :16])  # consecutive windows overlap by seq_len - stride
    assert torch.equal(ids[::2][: len(full) - 1], full.inputs["input_ids"][:-1])
    capped, capped_test = T.load_pystdlib_lm(**kw, max_train=10, max_test=3)
    assert len(capped) == 10 and len(capped_test) == 3
    rows = {tuple(r) for r in full.inputs["input_ids"].tolist()}
    assert all(tuple(r) in rows for r in capped.inputs["input_ids"].tolist())
    with pytest.raises(ValueError, match="stride"):
        T.load_pystdlib_lm(**kw, stride=64)
    with pytest.raises(ValueError, match="vocab_size"):
        T.load_pystdlib_lm(**{**kw, "vocab_size": 100})


def test_tokenizer_round_trips_python_source_and_wraps_for_hf(lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    tok = T.tokenizer_from_info(lm[0].info)
    line = "        return {k: v for k, v in sorted(self._items.items()) if v is not None}  # é ✓\n"
    assert tok.decode(tok.encode(line).ids) == line
    assert [tok.token_to_id(s) for s in T.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert T.UNK_ID not in tok.encode(line).ids  # byte-level: nothing is unknown
    texts = ["def f(x):\n    return x + 1\n"] * 20
    assert T.train_tokenizer(texts, 300).to_str() == T.train_tokenizer(texts, 300, seed=5).to_str()
    hf = T.as_hf_tokenizer(tok)
    assert hf.pad_token_id == 0 and hf.eos_token_id == 2
    assert hf.decode(hf(line)["input_ids"]) == line


def test_save_tokenizer(tmp_path: Path, lm: tuple[ArrayDataset, ArrayDataset]) -> None:
    from tokenizers import Tokenizer

    tok = T.tokenizer_from_info(lm[0].info)
    path = T.save_tokenizer(tok, tmp_path / "tok" / "tokenizer.json")
    assert Tokenizer.from_file(str(path)).to_str() == tok.to_str()
    with pytest.raises(KeyError, match="tokenizer_json"):
        T.tokenizer_from_info({})


# ------------------------------------------------------------------------------------------------------
# sequence classification
# ------------------------------------------------------------------------------------------------------


def test_classification_balanced_labels_and_shapes(cls: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = cls
    assert train.classes == test.classes and len(train.classes) == 4
    assert set(train.classes) <= set(T.CLASSIFICATION_PACKAGES)
    for ds in cls:
        ids = ds.inputs["input_ids"]
        assert ids.dtype == torch.long and ids.shape == (len(ds), CLS_KW["seq_len"])
        assert bool(ds.inputs["attention_mask"].all())
        assert ds.targets.dtype == torch.long and ds.targets.shape == (len(ds),)
        assert ds.target_kind == "class" and ds.num_classes == 4
        counts = torch.bincount(ds.targets, minlength=4)
        assert int(counts.min()) == int(counts.max()) > 0
        assert int(ds.targets.min()) >= 0 and int(ds.targets.max()) < 4
        assert int(ids.max()) < ds.info["vocab_size"]
    assert torch.equal(train.stratify_labels, train.targets)


def test_classification_splits_by_file_and_snippets_come_from_their_package(
    cls: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, test = cls
    tr, te = set(train.info["file_list"]), set(test.info["file_list"])
    assert tr and te and not tr & te
    for pkg in train.classes:
        assert any(f.startswith(pkg + "/") for f in te), f"class {pkg} has no test file"
    texts = dict(T.read_stdlib_corpus(CLS_KW["max_chars_per_class"], packages=train.classes).files)
    tok = T.tokenizer_from_info(train.info)
    for ds, files in ((train, tr), (test, te)):
        for i in range(0, len(ds), max(1, len(ds) // 12)):
            pkg = ds.classes[int(ds.targets[i])]
            snippet = tok.decode(ds.inputs["input_ids"][i].tolist())
            own = [texts[f] for f in files if f.startswith(pkg + "/")]
            assert any(snippet in t for t in own), f"snippet {i} of {ds.name} is not from {pkg}"


def test_classification_determinism_cap_and_errors(cls: tuple[ArrayDataset, ArrayDataset]) -> None:
    again = T.load_pystdlib_classification(**CLS_KW)
    assert [d.fingerprint() for d in again] == [d.fingerprint() for d in cls]
    capped, _ = T.load_pystdlib_classification(**CLS_KW, per_class=7, num_classes=3)
    assert torch.equal(torch.bincount(capped.targets), torch.tensor([7, 7, 7]))
    assert capped.classes == cls[0].classes[:3]
    with pytest.raises(ValueError, match="num_classes=99"):
        T.load_pystdlib_classification(**CLS_KW, num_classes=99)


def test_text_datasets_are_registered() -> None:
    assert TASK_OF_DATASET["pystdlib-lm"] == "causal-lm"
    assert TASK_OF_DATASET["pystdlib-cls"] == "sequence-classification"
    train, _ = TASK_DATASETS["pystdlib-lm"](None, **{**LM_KW, "max_chars": 30_000})
    assert train.name == "pystdlib-lm-train"
    with pytest.raises(ValueError, match="takes no root"):
        TASK_DATASETS["pystdlib-cls"]("/somewhere")


# ------------------------------------------------------------------------------------------------------
# time series
# ------------------------------------------------------------------------------------------------------


@needs_statsmodels
def test_sunspots_shapes_and_chronological_split() -> None:
    raw = TS.read_sunspots()
    assert raw.values.shape == (309, 1) and raw.times[0] == "1700" and raw.times[-1] == "2008"
    train, test = TS.load_sunspots()
    assert train.inputs.shape == (192, 48, 1) and train.targets.shape == (192, 8, 1)
    assert test.inputs.shape == (7, 48, 1) and test.targets.shape == (7, 8, 1)
    for ds in (train, test):
        assert ds.inputs.dtype == ds.targets.dtype == torch.float32 and ds.target_kind == "series"
        assert ds.info["window"] == 48 and ds.info["horizon"] == 8 and ds.info["num_features"] == 1
        assert ds.info["source"] == "statsmodels/datasets/sunspots/sunspots.csv" and len(ds.info["source_sha256"]) == 64
    n_train = 309 - math.ceil(0.2 * 309)
    last_train_end = train.info["offset"] + (len(train) - 1) + 48 + 8 - 1
    assert last_train_end == n_train - 1
    assert test.info["offset"] > last_train_end  # the first test window starts after the last train window ends
    assert int(train.info["last_time"]) < int(test.info["first_time"])


@needs_statsmodels
def test_sunspots_normalisation_uses_train_statistics_only() -> None:
    raw = TS.read_sunspots().values
    train, test = TS.load_sunspots()
    n_train = train.info["steps"]
    assert train.info["mean"][0] == pytest.approx(raw[:n_train].mean())
    assert train.info["std"][0] == pytest.approx(raw[:n_train].std())
    assert train.info["mean"][0] != pytest.approx(raw.mean(), rel=1e-3)  # not the whole series' mean
    assert test.info["mean"] == train.info["mean"] and test.info["std"] == train.info["std"]
    # each train step appears in the windows; the first column alone covers steps 0 … N-1 exactly once
    first_steps = torch.cat([train.inputs[:, 0, 0], train.inputs[-1, 1:, 0], train.targets[-1, :, 0]])
    assert first_steps.numel() == n_train
    assert float(first_steps.double().mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(first_steps.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


@needs_statsmodels
@pytest.mark.parametrize("normalize", [False, True])
def test_series_target_continues_its_input(normalize: bool) -> None:
    raw = TS.read_sunspots().values
    for ds in TS.load_sunspots(normalize=normalize, test_history=True):
        mean, std = np.asarray(ds.info["mean"]), np.asarray(ds.info["std"])
        for i in (0, len(ds) // 2, len(ds) - 1):
            s = ds.info["offset"] + i
            x = ds.inputs[i].double().numpy() * std + mean
            y = ds.targets[i].double().numpy() * std + mean
            np.testing.assert_allclose(x, raw[s : s + 48], rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(y, raw[s + 48 : s + 56], rtol=1e-5, atol=1e-3)
    train, test = TS.load_sunspots(test_history=True)
    n_train = train.info["steps"]
    assert len(test) == 309 - n_train - 8 + 1
    assert test.info["offset"] + 48 == n_train  # the first test target is the first test year


@needs_statsmodels
def test_macrodata_multivariate() -> None:
    raw = TS.read_macrodata()
    assert raw.values.shape == (202, 6) and raw.times[0] == "1959Q2" and raw.times[-1] == "2009Q3"
    assert raw.values[0, 0] == pytest.approx(400 * math.log(2778.801 / 2710.349))
    train, test = TS.load_macrodata()
    assert train.inputs.shape == (142, 16, 6) and train.targets.shape == (142, 4, 6)
    assert test.inputs.shape == (22, 16, 6) and test.targets.shape == (22, 4, 6)
    assert train.info["features"] == list(TS.MACRO_FEATURES) and train.info["num_features"] == 6
    two, _ = TS.load_macrodata(features=("infl", "unemp"))
    assert two.inputs.shape[-1] == 2
    np.testing.assert_allclose(two.info["mean"], train.info["mean"][3:5])
    with pytest.raises(ValueError, match="choose from"):
        TS.load_macrodata(features=("gdp",))
    assert TASK_OF_DATASET["macrodata"] == TASK_OF_DATASET["sunspots"] == "regression"
    assert TASK_DATASETS["macrodata"](None)[0].fingerprint() == train.fingerprint()


@needs_statsmodels
def test_series_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="window\\+horizon=108.*lower window/horizon"):
        TS.load_sunspots(window=100)
    with pytest.raises(ValueError, match="test_fraction"):
        TS.load_sunspots(test_fraction=1.0)


def test_missing_statsmodels_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kw: object) -> object:
        return None if name == "statsmodels" else real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"pip install --no-deps \"statsmodels>=0.14\""):
        TS.load_sunspots()
