"""The inner loop of k-means: one pass over the rows computing nearest centroids, in cache-sized chunks.

Distances go through BLAS (`chunk @ C.T`, or one GEMV per centroid for small k); per-cluster sums
through `np.bincount`. Chunks are C-contiguous copies made once, processed on a small thread pool
(numpy and BLAS release the GIL; callers limit BLAS to one thread so the two do not contend).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 32_768
SMALL_K = 4  # up to this many centroids, one GEMV per centroid beats a GEMM + argmin


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1.0
    return x / norms[:, None]


def squared_distances(x: np.ndarray, c: np.ndarray, distance_type: str) -> np.ndarray:
    """(n, k) squared distances: ‖x − c‖² or, for COSINE, 1 − cos(x, c)."""
    if distance_type == "COSINE":
        sim = normalize_rows(x) @ normalize_rows(c).T
        return np.clip(1.0 - sim, 0.0, 2.0)
    g = x @ c.T
    g *= -2.0
    g += np.einsum("ij,ij->i", c, c)[None, :]
    g += np.einsum("ij,ij->i", x, x)[:, None]
    np.maximum(g, 0.0, out=g)
    return g


class Pass:
    """One pass over the data: nearest centroid, squared distance, and per-cluster sums.

    Rows are processed in cache-sized chunks on a small thread pool (numpy and BLAS release
    the GIL). For COSINE the rows are normalised once and the centroids on every pass, so the
    same kernel maximises cosine similarity; the squared distance is then 1 − cos.
    """

    def __init__(self, x: np.ndarray, distance_type: str, pool: ThreadPoolExecutor | None) -> None:
        self.cosine = distance_type == "COSINE"
        self.x = normalize_rows(x) if self.cosine else x
        self.xsq = None if self.cosine else np.einsum("ij,ij->i", self.x, self.x)
        self.pool = pool
        n = self.x.shape[0]
        self.bounds = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
        # C-contiguous chunks (views of a C-ordered x, else copied once): BLAS then runs on each
        # without per-call copies.
        self.chunks = [np.ascontiguousarray(self.x[a:b]) for a, b in self.bounds]

    def every(self, step: int) -> Pass:
        """The same pass over every `step`-th row (rows already normalised for COSINE are kept).

        Rows are not copied: the chunks are strided views, which BLAS reads in place (a row
        stride that is a multiple of the row length), with the same results as a copy.
        """
        if step <= 1:
            return self
        sub = Pass.__new__(Pass)
        sub.cosine = self.cosine
        sub.x = self.x[::step]
        sub.xsq = None if self.xsq is None else self.xsq[::step]
        sub.pool = self.pool
        n = sub.x.shape[0]
        sub.bounds = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
        sub.chunks = [sub.x[a:b] for a, b in sub.bounds]
        return sub

    def run(self, c: np.ndarray, sums: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n, d = self.x.shape
        k = c.shape[0]
        labels = np.empty(n, dtype=np.int64)
        best = np.empty(n, dtype=np.float64)
        cc = normalize_rows(c) if self.cosine else c
        csq = np.einsum("ij,ij->i", cc, cc)
        parts_sum = np.zeros((len(self.bounds), k, d)) if sums else None
        parts_cnt = np.zeros((len(self.bounds), k)) if sums else None

        def chunk(i: int) -> None:
            a, b = self.bounds[i]
            xs = self.chunks[i]
            if k <= SMALL_K:
                lab = np.zeros(b - a, dtype=np.int64)
                score = xs @ cc[0]
                if not self.cosine:
                    score *= -2.0
                    score += csq[0]
                for j in range(1, k):
                    dj = xs @ cc[j]
                    if self.cosine:
                        better = dj > score
                        np.maximum(score, dj, out=score)
                    else:
                        dj *= -2.0
                        dj += csq[j]
                        better = dj < score
                        np.minimum(score, dj, out=score)
                    lab[better] = j
            else:
                g = xs @ cc.T
                if self.cosine:
                    lab = np.argmax(g, axis=1)
                else:
                    g *= -2.0
                    g += csq[None, :]
                    lab = np.argmin(g, axis=1)
                score = np.take_along_axis(g, lab[:, None], 1)[:, 0]
            if self.cosine:
                dist = 1.0 - score
                np.clip(dist, 0.0, 2.0, out=dist)
            else:
                assert self.xsq is not None
                dist = score
                dist += self.xsq[a:b]
                np.maximum(dist, 0.0, out=dist)
            labels[a:b] = lab
            best[a:b] = dist
            if parts_sum is not None and parts_cnt is not None:
                parts_cnt[i] = np.bincount(lab, minlength=k)
                for j in range(d):
                    parts_sum[i, :, j] = np.bincount(lab, weights=xs[:, j], minlength=k)

        if self.pool is not None and len(self.bounds) > 1:
            list(self.pool.map(chunk, range(len(self.bounds))))
        else:
            for i in range(len(self.bounds)):
                chunk(i)
        total = parts_sum.sum(axis=0) if parts_sum is not None else np.zeros((k, d))
        counts = parts_cnt.sum(axis=0) if parts_cnt is not None else np.zeros(k)
        return labels, best, total, counts


def assign(x: np.ndarray, c: np.ndarray, distance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (0-based) and squared distance to it, for every row."""
    labels, best, _, _ = Pass(x, distance_type, None).run(c, sums=False)
    return labels, best


def min_ratio(data: Pass, centroids: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min over centroids of distance / radius, and the (0-based) centroid attaining it, per row."""
    n = data.x.shape[0]
    cc = normalize_rows(centroids) if data.cosine else centroids
    csq = np.einsum("ij,ij->i", cc, cc)
    out = np.empty(n)
    which = np.empty(n, dtype=np.int64)

    def chunk(i: int) -> None:
        a, b = data.bounds[i]
        xs = data.chunks[i]
        xq = None if data.cosine else data.xsq[a:b]  # type: ignore[index]
        if len(centroids) > SMALL_K:
            g = xs @ cc.T
            if data.cosine:
                g = 1.0 - g
            else:
                g *= -2.0
                g += csq[None, :]
                g += xq[:, None]  # type: ignore[index]
            np.maximum(g, 0.0, out=g)
            np.sqrt(g, out=g)
            g /= radii[None, :]
            lab = np.argmin(g, axis=1)
            which[a:b] = lab
            out[a:b] = np.take_along_axis(g, lab[:, None], 1)[:, 0]
            return
        lab = np.zeros(b - a, dtype=np.int64)
        ratio = np.empty(0)
        for j in range(len(centroids)):  # one centroid at a time: no (n, k) temporaries
            dj = xs @ cc[j]
            if data.cosine:
                dj = 1.0 - dj
            else:
                dj *= -2.0
                dj += csq[j]
                dj += xq
            np.maximum(dj, 0.0, out=dj)
            np.sqrt(dj, out=dj)
            dj /= radii[j]
            if j == 0:
                ratio = dj
            else:
                lab[dj < ratio] = j
                np.minimum(ratio, dj, out=ratio)
        which[a:b] = lab
        out[a:b] = ratio

    if data.pool is not None and len(data.bounds) > 1:
        list(data.pool.map(chunk, range(len(data.bounds))))
    else:
        for i in range(len(data.bounds)):
            chunk(i)
    return out, which
