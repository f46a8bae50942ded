"""k-means as BigQuery ML trains it, with deterministic, documented centroid numbering.

Lloyd iterations in numpy: distances through BLAS (`X @ C.T`), centroid sums through
`np.bincount`, in row chunks so memory stays bounded for any NUM_CLUSTERS. Training stops after
MAX_ITERATIONS, or (EARLY_STOP) after the first iteration whose relative loss improvement is below
MIN_REL_PROGRESS. The loss is the mean squared distance of the points to their nearest centroid.

Determinism: every random choice uses a fixed seed (initial rows are picked by seeded hashes of
the row values), so the same rows give the same model; up to INIT_SAMPLE rows the order they
arrive in does not matter either (above that, the initialisation sample is every n-th row, and
the warehouse returns a table's rows in insertion order). After training,
centroids are numbered by ascending cluster size (ties by centroid coordinates): CENTROID_ID 1 is
the smallest cluster. Empty clusters are re-seeded with the point farthest from its centroid.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopml.errors import InvalidQuery
from loopml.sqlml.kmeans_pass import CHUNK, Pass, min_ratio, normalize_rows, squared_distances

SEED = 20240601
RADIUS_FLOOR = 1e-9
QUANTILE_SAMPLE = 200_000
INIT_TRIALS = 20
INIT_SAMPLE = 5_000
QUANTILE_GRID = np.linspace(0.5, 1.0, 501)  # contamination 0.5 .. 0 in steps of 0.001


@dataclass
class KMeansParams:
    centroids: np.ndarray  # (k, d) in the encoded feature space; row i is CENTROID_ID i + 1
    distance_type: str
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0))  # normalized distance at QUANTILE_GRID
    iterations: list[dict[str, Any]] = field(default_factory=list)
    mean_squared_distance: float = 0.0
    davies_bouldin_index: float = 0.0

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def _row_keys(x: np.ndarray, salt: int) -> np.ndarray:
    """A pseudo-uniform number in (0, 1) per row, a function of the row values only."""
    rng = np.random.default_rng(SEED + salt)
    w = rng.standard_normal(x.shape[1]) * 7919.0
    h = x @ w + rng.uniform(0.1, 0.9)
    keys = np.abs(np.modf(h * 1.6180339887)[0])
    return np.clip(keys, 1e-12, 1.0 - 1e-12)


def _distinct_error(k: int, found: int) -> InvalidQuery:
    return InvalidQuery(
        f"NUM_CLUSTERS is {k} but the training data has only {found} distinct rows; "
        "lower NUM_CLUSTERS or add data."
    )


def init_random(x: np.ndarray, k: int, salt: int = 0) -> np.ndarray:
    """k distinct training rows, picked by seeded value hashes (independent of row order)."""
    keys = _row_keys(x, 1000 * salt)
    m = min(len(keys), 4 * k + 16)
    cand = np.argpartition(keys, m - 1)[:m] if m < len(keys) else np.arange(len(keys))
    cand = cand[np.argsort(keys[cand], kind="stable")]
    chosen = _distinct_rows(x, cand, k)
    if len(chosen) < k:  # heavily duplicated data: walk the distinct hash values in order
        uniq_keys, first = np.unique(keys, return_index=True)
        chosen = _distinct_rows(x, first[np.argsort(uniq_keys, kind="stable")], k)
        if len(chosen) < k:
            raise _distinct_error(k, len(chosen))
    return x[chosen].copy()


def _distinct_rows(x: np.ndarray, candidates: np.ndarray, k: int) -> list[int]:
    chosen: list[int] = []
    for i in candidates:
        row = x[i]
        if all(not np.array_equal(row, x[j]) for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return chosen


def _smallest(values: np.ndarray, m: int) -> np.ndarray:
    """Indexes of the m smallest values, ascending, ties by index (= a stable argsort's first m)."""
    if m >= len(values):
        return np.argsort(values, kind="stable")
    cut = np.partition(values, m - 1)[m - 1]
    idx = np.nonzero(values <= cut)[0]
    return idx[np.argsort(values[idx], kind="stable")[:m]]


def _sq_each(data: Pass, rows: np.ndarray) -> np.ndarray:
    """(m, n): squared distance of every row of the pass to each of the m given rows."""
    g = rows @ data.x.T
    if data.cosine:
        np.subtract(1.0, g, out=g)
        return np.clip(g, 0.0, 2.0, out=g)
    assert data.xsq is not None
    g *= -2.0
    g += np.einsum("ij,ij->i", rows, rows)[:, None]
    g += data.xsq[None, :]
    return np.maximum(g, 0.0, out=g)


def init_kmeanspp(
    x: np.ndarray, k: int, distance_type: str, salt: int = 0, data: Pass | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (2 + ln k candidates per centre, the one cutting the potential most).

    Candidates are drawn with probability ∝ D² by an exponential race over value hashes, so the
    choice does not depend on row order. `data` is a prepared pass over `x` (reused by callers).
    """
    data = data if data is not None else Pass(x, distance_type, None)
    first = int(np.argmin(_row_keys(x, 1000 * salt)))
    centers = [x[first].copy()]
    best = _sq_each(data, data.x[first : first + 1])[0]
    local = 2 + int(np.log(k))
    for i in range(1, k):
        positive = np.nonzero(best > 0)[0]
        if not len(positive):
            raise _distinct_error(k, i)
        race = -np.log(_row_keys(x[positive], 1000 * salt + i)) / best[positive]
        candidates = positive[_smallest(race, min(local, len(positive)))]
        dist = _sq_each(data, data.x[candidates])
        options = [np.minimum(best, d) for d in dist]
        j = int(np.argmin([o.sum() for o in options]))
        centers.append(x[candidates[j]].copy())
        best = options[j]
    return np.asarray(centers)


def _lloyd(
    data: Pass, c: np.ndarray, max_iterations: int, early_stop: bool, min_rel_progress: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], float]:
    """Lloyd iterations from centroids `c`; returns centroids, labels, squared distances, log, loss."""
    c = np.array(c, dtype=np.float64, copy=True)
    if data.cosine:
        c = normalize_rows(c)
    labels, best, sums, counts = data.run(c)
    loss = float(best.mean())
    iterations: list[dict[str, Any]] = []
    for it in range(max_iterations):
        t0 = time.perf_counter()
        nonempty = counts > 0
        c = c.copy()
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.nonzero(~nonempty)[0]
        if len(empty):  # re-seed with the points farthest from their centroids
            far = np.argsort(-best, kind="stable")[: len(empty)]
            c[empty] = data.x[far]
        labels, best, sums, counts = data.run(c)
        new_loss = float(best.mean())
        iterations.append(
            {"iteration": it, "loss": new_loss, "duration_ms": int((time.perf_counter() - t0) * 1000)}
        )
        rel = (loss - new_loss) / loss if loss > 0 else 0.0
        loss = new_loss
        if early_stop and rel < min_rel_progress and not len(empty):
            break
    return c, labels, best, iterations, loss


def best_start(
    x: np.ndarray, k: int, method: str, distance_type: str, *, max_iterations: int, min_rel_progress: float
) -> np.ndarray:
    """Starting centroids: the best of INIT_TRIALS seeded initialisations, each refined on a sample.

    Every trial picks initial rows with its own seed (KMEANS++: greedy D² seeding; RANDOM:
    alternately distinct random rows and greedy D² seeding), runs Lloyd on an evenly spaced sample of at most INIT_SAMPLE rows, and the
    trial with the lowest sample loss wins. This keeps one unlucky draw (two rows of the same
    cluster) from deciding the model, at the cost of a few passes over a small sample.
    """
    n = x.shape[0]
    sample = x[:: -(-n // INIT_SAMPLE)] if n > INIT_SAMPLE else x
    data = Pass(sample, distance_type, None)
    best_c: np.ndarray | None = None
    best_loss = np.inf
    for trial in range(INIT_TRIALS):
        try:
            if method == "KMEANS++" or trial % 2 == 0:
                init = init_kmeanspp(sample, k, distance_type, trial, data)
            else:
                init = init_random(sample, k, trial)
        except InvalidQuery:
            break  # the sample has fewer distinct rows than k: seed from all rows below
        c, _, _, _, loss = _lloyd(data, init, max_iterations, True, min_rel_progress)
        if loss < best_loss:
            best_c, best_loss = c, loss
    if best_c is None:
        return init_kmeanspp(x, k, distance_type, 0) if method == "KMEANS++" else init_random(x, k, 0)
    return best_c


def train(
    x: np.ndarray,
    k: int,
    *,
    init: np.ndarray,
    distance_type: str,
    max_iterations: int,
    early_stop: bool,
    min_rel_progress: float,
) -> KMeansParams:
    n = x.shape[0]
    if n < k:
        raise InvalidQuery(f"NUM_CLUSTERS is {k} but the training data has only {n} rows.")
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) if n > 2 * CHUNK else nullcontext() as pool:
        data = Pass(x, distance_type, pool)
        c, labels, best, iterations, _ = _lloyd(data, init, max_iterations, early_stop, min_rel_progress)
        params = _finish(data, c, labels, best, distance_type)
    params.iterations = iterations
    return params


def _finish(
    data: Pass, c: np.ndarray, labels: np.ndarray, best: np.ndarray, distance_type: str
) -> KMeansParams:
    k = c.shape[0]
    sizes = np.bincount(labels, minlength=k)
    # Number by ascending size, ties by centroid coordinates: ID 1 is the smallest cluster.
    order = sorted(range(k), key=lambda i: (int(sizes[i]), tuple(float(v) for v in c[i])))
    remap = np.empty(k, dtype=np.int64)
    remap[np.asarray(order)] = np.arange(k)
    c = c[order]
    labels = remap[labels]
    sizes = sizes[order]
    sq_sum = np.bincount(labels, weights=best, minlength=k)
    radii = np.sqrt(np.divide(sq_sum, sizes, out=np.zeros(k), where=sizes > 0))
    params = KMeansParams(centroids=c, distance_type=distance_type, sizes=sizes, radii=radii)
    # The quantiles are taken on an even sample above QUANTILE_SAMPLE rows: only those rows' normalized
    # distances are computed (the same values a full pass gives for them).
    n = data.x.shape[0]
    step = -(-n // QUANTILE_SAMPLE) if n > QUANTILE_SAMPLE else 1
    params.quantiles = _quantiles(_normalized(data.every(step), params)[0])
    params.mean_squared_distance = float(best.mean())
    dist_sum = np.bincount(labels, weights=np.sqrt(best), minlength=k)
    scatter = np.divide(dist_sum, sizes, out=np.zeros(k), where=sizes > 0)
    params.davies_bouldin_index = davies_bouldin(c, scatter, sizes, distance_type)
    return params


def _quantiles(values: np.ndarray) -> np.ndarray:
    """np.quantile over QUANTILE_GRID on the upper half; above 200,000 rows on an even sample."""
    if len(values) > QUANTILE_SAMPLE:
        values = values[:: -(-len(values) // QUANTILE_SAMPLE)]
    n = len(values)
    lo = max(0, int(np.floor(0.5 * (n - 1))))
    top = np.partition(values, lo)[lo:]
    top.sort()
    pos = QUANTILE_GRID * (n - 1) - lo
    return np.interp(pos, np.arange(len(top)), top)


def davies_bouldin(c: np.ndarray, scatter: np.ndarray, sizes: np.ndarray, distance_type: str) -> float:
    live = np.nonzero(sizes > 0)[0]
    if len(live) < 2:
        return 0.0
    sep = np.sqrt(squared_distances(c[live], c[live], distance_type))
    s = scatter[live]
    ratios = (s[:, None] + s[None, :]) / np.where(sep > 0, sep, np.inf)
    np.fill_diagonal(ratios, -np.inf)
    return float(np.mean(ratios.max(axis=1)))


def distances(x: np.ndarray, params: KMeansParams) -> np.ndarray:
    """(n, k) distances to every centroid (Euclidean, or √(1 − cos) for COSINE)."""
    return np.sqrt(squared_distances(x, params.centroids, params.distance_type))


def nearest(x: np.ndarray, params: KMeansParams, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m nearest centroids of every row, nearest first: (n, m) 0-based ids and distances.

    Computed in chunks, so memory stays O(chunk × k) however many rows and centroids there are.
    """
    n = x.shape[0]
    ids = np.empty((n, m), dtype=np.int64)
    dist = np.empty((n, m), dtype=np.float64)
    for a in range(0, n, CHUNK):
        d = distances(x[a : a + CHUNK], params)
        if m < d.shape[1]:
            part = np.argpartition(d, m - 1, axis=1)[:, :m]
            vals = np.take_along_axis(d, part, 1)
        else:
            part = np.broadcast_to(np.arange(d.shape[1]), d.shape)
            vals = d
        # nearest first; ties by centroid id (stable on the id-sorted candidates)
        by_id = np.argsort(part, axis=1, kind="stable")
        part, vals = np.take_along_axis(part, by_id, 1), np.take_along_axis(vals, by_id, 1)
        order = np.argsort(vals, axis=1, kind="stable")
        ids[a : a + CHUNK] = np.take_along_axis(part, order, 1)
        dist[a : a + CHUNK] = np.take_along_axis(vals, order, 1)
    return ids, dist


def normalized_distance(x: np.ndarray, params: KMeansParams) -> tuple[np.ndarray, np.ndarray]:
    """min over centroids of distance / cluster radius, and the (0-based) centroid attaining it."""
    return _normalized(Pass(x, params.distance_type, None), params)


def _normalized(data: Pass, params: KMeansParams) -> tuple[np.ndarray, np.ndarray]:
    return min_ratio(data, params.centroids, np.maximum(params.radii, RADIUS_FLOOR))


def threshold(params: KMeansParams, contamination: float) -> float:
    """The training normalized distance above which a fraction `contamination` of points lie."""
    q = 1.0 - contamination
    return float(np.interp(q, QUANTILE_GRID, params.quantiles))


def to_arrays(params: KMeansParams) -> dict[str, np.ndarray]:
    return {
        "centroids": params.centroids,
        "sizes": params.sizes,
        "radii": params.radii,
        "quantiles": params.quantiles,
    }


def to_meta(params: KMeansParams) -> dict[str, Any]:
    return {
        "distance_type": params.distance_type,
        "iterations": params.iterations,
        "mean_squared_distance": params.mean_squared_distance,
        "davies_bouldin_index": params.davies_bouldin_index,
    }


def from_stored(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> KMeansParams:
    return KMeansParams(
        centroids=np.asarray(arrays["centroids"], dtype=np.float64),
        distance_type=str(meta["distance_type"]),
        sizes=np.asarray(arrays["sizes"], dtype=np.int64),
        radii=np.asarray(arrays["radii"], dtype=np.float64),
        quantiles=np.asarray(arrays["quantiles"], dtype=np.float64),
        iterations=list(meta.get("iterations", [])),
        mean_squared_distance=float(meta.get("mean_squared_distance", 0.0)),
        davies_bouldin_index=float(meta.get("davies_bouldin_index", 0.0)),
    )
