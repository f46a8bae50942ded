"""BigQuery ML k-means: `CREATE MODEL … MODEL_TYPE='KMEANS'` on 1,000,000 warehouse rows vs scikit-learn.

The peer is scikit-learn's `KMeans` (k-means++ init, n_init=1 as its "auto" default for k-means++,
Lloyd, OpenMP threads) after a `StandardScaler`, on the same float64 array held in memory: the same
preprocessing BigQuery ML applies by default (STANDARDIZE_FEATURES=TRUE). loopml's time is the whole
statement run in process on a DuckDB file: the table scan, standardisation, seeded initialisation,
full-data Lloyd passes with BigQuery's stopping rule (MAX_ITERATIONS 20, MIN_REL_PROGRESS 0.01),
the statistics ML.EVALUATE and ML.DETECT_ANOMALIES need, and the model files written. Runs are
interleaved (loopml, sklearn, loopml, …) and the median of each is reported with their ratio.
Quality: mean squared distance to the nearest centroid in standardised space (ML.EVALUATE's
`mean_squared_distance`, and sklearn's inertia / rows).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

P = "bench"
CASES = (
    # (name, dimensions, clusters): the workshop's shape (tax, shipping, value; 2 clusters) and a wider one
    ("d3_k2", 3, 2),
    ("d10_k8", 10, 8),
)


def blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-50, 50, size=(k, d))
    scales = rng.uniform(0.5, 5.0, size=(k, 1))
    which = rng.integers(0, k, size=n)
    return centres[which] + rng.normal(size=(n, d)) * scales[which]


def _sklearn(x: np.ndarray, k: int) -> tuple[float, float]:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    z = StandardScaler().fit_transform(x)
    model = KMeans(n_clusters=k, random_state=0, n_init=1, max_iter=20).fit(z)
    seconds = time.perf_counter() - start
    return seconds, float(model.inertia_) / len(x)


def _loopml(wh: Any, dataset: str, k: int, rep: int) -> tuple[float, float]:
    start = time.perf_counter()
    wh.query(
        f"CREATE OR REPLACE MODEL {dataset}.km{rep} OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS={k}) "
        f"AS SELECT * FROM {dataset}.points",
        project=P,
    )
    seconds = time.perf_counter() - start
    ev = wh.query(f"SELECT * FROM ML.EVALUATE(MODEL {dataset}.km{rep})", project=P)
    row = ev.table.to_pylist()[0]
    return seconds, float(row["mean_squared_distance"])


def _open(work: Path) -> Any:
    from loopml.artifacts import ArtifactStore
    from loopml.sqlml.service import SqlMLService
    from loopml.warehouse import Warehouse

    store = ArtifactStore(work / "artifacts")
    wh = Warehouse(work / "warehouse.duckdb", store)
    SqlMLService(wh, store, None).install()
    return wh


def run(quick: bool = False) -> dict[str, Any]:
    n = 200_000 if quick else 1_000_000
    reps = 2 if quick else 5
    out: dict[str, Any] = {"rows": n, "repetitions": reps, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="loopml-bench-kmeans-") as tmp:
        wh = _open(Path(tmp))
        for name, d, k in CASES:
            x = blobs(n, d, k, seed=d * 100 + k)
            wh.create_dataset(P, name)
            wh.write_table_arrow(
                P, name, "points", pa.table({f"f{i}": x[:, i] for i in range(d)}), mode="create"
            )
            ours: list[float] = []
            peer: list[float] = []
            msd_ours: list[float] = []
            msd_peer: list[float] = []
            for rep in range(reps):
                s, q = _loopml(wh, name, k, rep)
                ours.append(s)
                msd_ours.append(q)
                s, q = _sklearn(x, k)
                peer.append(s)
                msd_peer.append(q)
            out["cases"][name] = {
                "dimensions": d,
                "clusters": k,
                "loopml_s": ours,
                "sklearn_s": peer,
                "loopml_median_s": statistics.median(ours),
                "sklearn_median_s": statistics.median(peer),
                "ratio_loopml_to_sklearn": statistics.median(ours) / statistics.median(peer),
                "loopml_mean_squared_distance": statistics.median(msd_ours),
                "sklearn_mean_squared_distance": statistics.median(msd_peer),
            }
        wh.close()
    out["summary"] = {name: round(c["ratio_loopml_to_sklearn"], 2) for name, c in out["cases"].items()}
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"`CREATE MODEL … MODEL_TYPE='KMEANS'` over a {data['rows']:,}-row DuckDB table (whole statement, in "
        "process) vs scikit-learn `StandardScaler` + `KMeans(n_init=1, max_iter=20)` on the same array in "
        f"memory; medians of {data['repetitions']} interleaved runs. Lower ratio is better for loopml.",
        "",
        "| data | loopml CREATE MODEL s | scikit-learn s | ratio | mean sq. distance loopml | sklearn |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in data["cases"].values():
        lines.append(
            f"| {c['dimensions']} features, {c['clusters']} clusters | {c['loopml_median_s']:.2f} | "
            f"{c['sklearn_median_s']:.2f} | {c['ratio_loopml_to_sklearn']:.2f} | "
            f"{c['loopml_mean_squared_distance']:.4f} | {c['sklearn_mean_squared_distance']:.4f} |"
        )
    lines += [
        "",
        "loopml's time includes reading the table from DuckDB, the statistics ML.EVALUATE / "
        "ML.DETECT_ANOMALIES use and writing the model; scikit-learn's starts from a NumPy array.",
    ]
    return "\n".join(lines)
