"""Real time series that ship offline, for multi-step forecasting: yearly sunspots and US macro data.

Why these files: nothing may be downloaded at run time, and a forecasting benchmark on synthetic sines says
little. statsmodels bundles small, classic, public-domain series as CSV files inside its wheel. They are read
here *directly* (``importlib.util.find_spec`` locates the package without importing it): importing
statsmodels needs scipy, pandas and patsy, while the files need nothing, so the package is installed with
``pip install --no-deps statsmodels`` and stays inert.

Why the split is chronological and the statistics are the train part's: a forecaster must be judged on a
future it has not seen. The test part is the last ``test_fraction`` of the series, no window crosses the
split (unless ``test_history=True`` lets test inputs look back into the train period — only the targets must
be in the future), and the mean/std used to normalise both parts are computed on the train part only, so no
test value leaks into training through the scaling. Every dataset records the source file and its SHA-256.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featdistill.data.arrays import ArrayDataset

__all__ = ["MACRO_FEATURES", "Series", "load_macrodata", "load_sunspots", "read_macrodata", "read_sunspots"]

_INSTALL_HINT = 'pip install --no-deps "statsmodels>=0.14"'

#: the derived macro features: growth rates are annualised quarter-on-quarter log changes in percent
MACRO_FEATURES: tuple[str, ...] = ("gdp_growth", "cons_growth", "inv_growth", "infl", "unemp", "tbilrate")


@dataclass(frozen=True)
class Series:
    """A raw series: ``values`` float64 ``(T, D)``, ``times`` one label per step, where it was read from."""

    values: np.ndarray
    times: tuple[str, ...]
    features: tuple[str, ...]
    source: str
    sha256: str


def _statsmodels_file(relpath: str) -> Path:
    """The path of a data file inside the installed statsmodels package, found without importing it."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the bundled time series are read from statsmodels' data files, but statsmodels is not installed; "
            f"install it with: {_INSTALL_HINT} (--no-deps: only the CSV files are used, no scipy/pandas)"
        )
    tried = []
    for base in spec.submodule_search_locations:
        path = Path(base) / relpath
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(
        f"statsmodels is installed but has no {relpath!r} (looked at {', '.join(tried)}); "
        f"this statsmodels may be too old or trimmed — reinstall it with: {_INSTALL_HINT}"
    )


def _read_csv(relpath: str) -> tuple[list[str], list[list[str]], str, str]:
    path = _statsmodels_file(relpath)
    data = path.read_bytes()
    rows = list(csv.reader(data.decode("utf-8").splitlines()))
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header and data rows, found {len(rows)} line(s)")
    return rows[0], rows[1:], f"statsmodels/{relpath}", hashlib.sha256(data).hexdigest()


def _column(header: list[str], rows: list[list[str]], name: str, source: str) -> np.ndarray:
    try:
        j = [h.strip().lower() for h in header].index(name.lower())
    except ValueError:
        raise ValueError(f"{source}: no column {name!r} (columns: {', '.join(header)})") from None
    try:
        return np.asarray([float(r[j]) for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{source}: column {name!r} is not numeric on every row ({e})") from None


def read_sunspots() -> Series:
    """Yearly sunspot activity 1700–2008 (309 values, NOAA/NGDC via statsmodels), ``(309, 1)``."""
    header, rows, source, sha = _read_csv("datasets/sunspots/sunspots.csv")
    years = _column(header, rows, "YEAR", source)
    values = _column(header, rows, "SUNACTIVITY", source)[:, None]
    return Series(values, tuple(str(int(y)) for y in years), ("sunactivity",), source, sha)


def read_macrodata(features: Sequence[str] = MACRO_FEATURES) -> Series:
    """US quarterly macro data 1959Q2–2009Q3 (202 quarters, FRED/BLS via statsmodels), ``(202, D)``.

    Why derived features rather than the raw columns: GDP, consumption and investment are trending levels —
    normalised by the train period's statistics, the test period would lie far outside anything seen. Their
    annualised growth rates (``400 · Δ ln x``), inflation, unemployment and the T-bill rate are the usual
    stationary-ish forecasting targets. The first quarter is dropped (it has no growth rate).
    """
    header, rows, source, sha = _read_csv("datasets/macrodata/macrodata.csv")
    unknown = [f for f in features if f not in MACRO_FEATURES]
    if unknown or not features:
        raise ValueError(
            f"read_macrodata: unknown feature(s) {unknown or list(features)}; choose from {', '.join(MACRO_FEATURES)}"
        )
    col = {name: _column(header, rows, name, source) for name in ("realgdp", "realcons", "realinv")}
    derived = {
        "gdp_growth": 400.0 * np.diff(np.log(col["realgdp"])),
        "cons_growth": 400.0 * np.diff(np.log(col["realcons"])),
        "inv_growth": 400.0 * np.diff(np.log(col["realinv"])),
        "infl": _column(header, rows, "infl", source)[1:],
        "unemp": _column(header, rows, "unemp", source)[1:],
        "tbilrate": _column(header, rows, "tbilrate", source)[1:],
    }
    years = _column(header, rows, "year", source)[1:]
    quarters = _column(header, rows, "quarter", source)[1:]
    times = tuple(f"{int(y)}Q{int(q)}" for y, q in zip(years, quarters))
    return Series(np.stack([derived[f] for f in features], axis=1), times, tuple(features), source, sha)


def _windows(values: np.ndarray, window: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(window, horizon)`` pairs starting every ``stride`` steps: inputs ``(N, window, D)``, targets
    ``(N, horizon, D)``, the target being the ``horizon`` steps right after the input."""
    span = window + horizon
    starts = np.arange(0, values.shape[0] - span + 1, stride)
    pos = starts[:, None] + np.arange(span)[None, :]
    w = values[pos]
    return w[:, :window], w[:, window:]


def _forecast_pair(
    series: Series,
    name: str,
    window: int,
    horizon: int,
    test_fraction: float,
    normalize: bool,
    stride: int,
    test_history: bool,
) -> tuple[ArrayDataset, ArrayDataset]:
    if window < 1 or horizon < 1 or stride < 1:
        raise ValueError(
            f"{name}: window, horizon and stride must be positive, got window={window}, horizon={horizon}, "
            f"stride={stride}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    t = int(series.values.shape[0])
    n_test = int(math.ceil(test_fraction * t))
    n_train = t - n_test
    span = window + horizon
    test_start = n_train - window if test_history else n_train  # first index a test window may read
    if n_train < span or t - test_start < span:
        short = "train" if n_train < span else "test"
        raise ValueError(
            f"{name}: {t} steps with test_fraction={test_fraction} leave {n_train} train and {n_test} test steps, "
            f"too few for one {short} window of window+horizon={span} steps; lower window/horizon"
            + ("" if test_history else " or pass test_history=True")
            + (" or lower test_fraction" if short == "train" else " or raise test_fraction")
        )
    train_raw = series.values[:n_train]
    if normalize:
        mean = train_raw.mean(axis=0)
        std = train_raw.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant feature is centred, not divided by zero
    else:
        mean, std = np.zeros(series.values.shape[1]), np.ones(series.values.shape[1])
    scaled = (series.values - mean) / std
    common: dict[str, Any] = {
        "window": window,
        "horizon": horizon,
        "stride": stride,
        "num_features": int(series.values.shape[1]),
        "features": list(series.features),
        "normalized": bool(normalize),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "source": series.source,
        "source_sha256": series.sha256,
        "test_history": bool(test_history),
    }
    out: list[ArrayDataset] = []
    for split, lo, hi in (("train", 0, n_train), ("test", test_start, t)):
        x, y = _windows(scaled[lo:hi], window, horizon, stride)
        info = dict(common)
        # window i reads raw steps offset + i*stride … offset + i*stride + window + horizon - 1
        info.update(split=split, offset=lo, steps=hi - lo, first_time=series.times[lo], last_time=series.times[hi - 1])
        out.append(
            ArrayDataset(
                torch.from_numpy(x.astype(np.float32)),
                torch.from_numpy(y.astype(np.float32)),
                name=f"{name}-{split}",
                target_kind="series",
                info=info,
            )
        )
    return out[0], out[1]


def load_sunspots(
    window: int = 48,
    horizon: int = 8,
    test_fraction: float = 0.2,
    normalize: bool = True,
    seed: int = 0,
    stride: int = 1,
    test_history: bool = False,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Forecast ``horizon`` years of sunspot activity from the previous ``window`` (the ~11-year cycle).

    Inputs ``float32 (N, window, 1)``, targets ``float32 (N, horizon, 1)``; the test part is the last
    ``test_fraction`` of 1700–2008 (defaults: 192 train and 7 test windows; ``test_history=True`` gives 55
    test windows whose inputs may reach back into the train years). ``normalize`` scales by the train years'
    mean/std (in ``info``, to undo it). ``seed`` is accepted for a uniform loader signature; nothing here is
    random.
    """
    del seed
    return _forecast_pair(read_sunspots(), "sunspots", window, horizon, test_fraction, normalize, stride, test_history)


def load_macrodata(
    window: int = 16,
    horizon: int = 4,
    test_fraction: float = 0.2,
    normalize: bool = True,
    seed: int = 0,
    features: Sequence[str] = MACRO_FEATURES,
    stride: int = 1,
    test_history: bool = False,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Forecast ``horizon`` quarters of ``D`` US macro series from the previous ``window`` (multivariate).

    ``features`` are chosen from :data:`MACRO_FEATURES` (default all six: GDP, consumption and investment
    growth, inflation, unemployment, T-bill rate; see :func:`read_macrodata`). Inputs ``float32 (N, window,
    D)``, targets ``float32 (N, horizon, D)``; the test part is the last ``test_fraction`` of 1959Q2–2009Q3
    (defaults: 142 train and 22 test windows). Each feature is normalised with the train quarters'
    mean/std. ``seed`` is accepted for a uniform loader signature; nothing here is random.
    """
    del seed
    return _forecast_pair(
        read_macrodata(tuple(features)), "macrodata", window, horizon, test_fraction, normalize, stride, test_history
    )
