"""Training-serving skew as ML.VALIDATE_DATA_SKEW computes it, with TFDV's distance algorithms.

Training statistics are recorded when the model is created (FeatureEncoder.fit): for a numeric
feature a histogram of 10 equal-width buckets over its own [min, max] plus the NaN/NULL count,
for a categorical one the count of every category. Serving data gets the same statistics, then:

- L-infinity (categorical): max over values of |p(v) − q(v)| of the normalised counts.
- Jensen–Shannon divergence (numeric or categorical), base 2, capped at 1: numeric histograms are
  aligned on the union of their bucket boundaries (mass uniform within a bucket), point-mass
  buckets (low == high) are aligned by value, and a NaN bucket pair is added when either side
  has NaNs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loopml.errors import InvalidQuery

BUCKETS = 10

Histogram = dict[str, Any]  # {"buckets": [[low, high, count], ...], "nan": count}


def numeric_histogram(values: np.ndarray) -> Histogram:
    finite = values[np.isfinite(values)]
    nan = int(values.size - finite.size)
    if finite.size == 0:
        return {"buckets": [], "nan": nan}
    return finite_histogram(finite, float(finite.min()), float(finite.max()), nan)


def finite_histogram(finite: np.ndarray, lo: float, hi: float, nan: int) -> Histogram:
    """numeric_histogram of finite values whose min and max (and NaN count) are already known."""
    if lo == hi:
        return {"buckets": [[lo, hi, float(finite.size)]], "nan": nan}
    # np.histogram's buckets (edges by linspace; [e_i, e_i+1), the last one closed), counted with one
    # comparison per inner edge: the same counts, several times faster on large columns.
    edges = np.linspace(lo, hi, BUCKETS + 1)
    below = [np.count_nonzero(finite < e) for e in edges[1:-1]]
    counts = np.diff([0, *below, finite.size])
    buckets = [[float(edges[i]), float(edges[i + 1]), float(counts[i])] for i in range(BUCKETS)]
    return {"buckets": buckets, "nan": nan}


def _rebucket(buckets: list[list[float]], bounds: np.ndarray) -> np.ndarray:
    """Spread each [low, high) bucket over the union boundaries in proportion to width."""
    out = np.zeros(max(len(bounds) - 1, 0))
    for low, high, count in buckets:
        width = high - low
        for j in range(len(bounds) - 1):
            a, b = max(bounds[j], low), min(bounds[j + 1], high)
            if b > a:
                out[j] += count * (b - a) / width
    return out


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    sp, sq = p.sum(), q.sum()
    if sp <= 0 or sq <= 0:
        return 0.0 if sp == sq else 1.0
    p, q = p / sp, q / sq
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, 0.5 * kl(p) + 0.5 * kl(q)))


def numeric_jsd(train: Histogram, serve: Histogram) -> float:
    regular = [[b for b in h["buckets"] if b[0] != b[1]] for h in (train, serve)]
    points = [{b[0]: b[2] for b in h["buckets"] if b[0] == b[1]} for h in (train, serve)]
    bounds = np.unique([v for side in regular for b in side for v in (b[0], b[1])])
    p = [_rebucket(regular[0], bounds)]
    q = [_rebucket(regular[1], bounds)]
    for value in sorted(set(points[0]) | set(points[1])):
        p.append(np.array([points[0].get(value, 0.0)]))
        q.append(np.array([points[1].get(value, 0.0)]))
    if train["nan"] or serve["nan"]:
        p.append(np.array([float(train["nan"])]))
        q.append(np.array([float(serve["nan"])]))
    return _jsd(np.concatenate(p), np.concatenate(q))


def _aligned(train: dict[str, float], serve: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(train) | set(serve))
    return np.array([train.get(k, 0.0) for k in keys]), np.array([serve.get(k, 0.0) for k in keys])


def categorical_linf(train: dict[str, float], serve: dict[str, float]) -> float:
    p, q = _aligned(train, serve)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    return float(np.max(np.abs(p / p.sum() - q / q.sum())))


def categorical_jsd(train: dict[str, float], serve: dict[str, float]) -> float:
    return _jsd(*_aligned(train, serve))


def category_key(value: Any) -> str:
    """How a category is keyed in stored counts (NULL is the key "NULL")."""
    return "NULL" if value is None else str(value)


# -- ML.VALIDATE_DATA_SKEW -----------------------------------------------------------------------
L_INFTY = "L_INFTY"
JSD = "JENSEN_SHANNON_DIVERGENCE"
_SETTINGS = {
    "categorical_default_threshold",
    "categorical_metric_type",
    "numerical_default_threshold",
    "numerical_metric_type",
    "thresholds",
    "enable_visualization_link",
}


def _threshold(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise InvalidQuery(f"{name} must be a FLOAT64 in [0, 1), got {value!r}.")
    return float(value)


def parse_settings(settings: dict[str, Any], features: list[str]) -> dict[str, Any]:
    """Checked ML.VALIDATE_DATA_SKEW settings with their BigQuery defaults."""
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise InvalidQuery(f"ML.VALIDATE_DATA_SKEW does not take the STRUCT field {unknown[0]}.")
    cat_metric = str(settings.get("categorical_metric_type", L_INFTY)).upper()
    num_metric = str(settings.get("numerical_metric_type", JSD)).upper()
    if cat_metric not in (L_INFTY, JSD):
        raise InvalidQuery(
            f"categorical_metric_type must be L_INFTY or JENSEN_SHANNON_DIVERGENCE, got {cat_metric!r}."
        )
    if num_metric != JSD:
        raise InvalidQuery(f"numerical_metric_type must be JENSEN_SHANNON_DIVERGENCE, got {num_metric!r}.")
    if settings.get("enable_visualization_link"):
        raise InvalidQuery("enable_visualization_link is not supported by loopml.")
    per_column: dict[str, float] = {}
    raw = settings.get("thresholds") or []
    if not isinstance(raw, list):
        raise InvalidQuery("thresholds must be an array of ('column', threshold) pairs.")
    lower = {f.lower(): f for f in features}
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidQuery(f"thresholds entries are ('column', threshold) pairs, got {item!r}.")
        if item[0].lower() not in lower:
            raise InvalidQuery(f"thresholds names {item[0]!r}, which is not a feature of the model.")
        per_column[lower[item[0].lower()]] = _threshold(f"threshold for {item[0]}", item[1])
    return {
        "categorical_metric_type": cat_metric,
        "numerical_metric_type": num_metric,
        "categorical_default_threshold": _threshold(
            "categorical_default_threshold", settings.get("categorical_default_threshold", 0.3)
        ),
        "numerical_default_threshold": _threshold(
            "numerical_default_threshold", settings.get("numerical_default_threshold", 0.3)
        ),
        "thresholds": per_column,
    }
