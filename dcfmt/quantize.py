"""Weight sharing by 1-D k-means (Deep Compression, step 2).

Per tensor, the kept weights are clustered into ``k`` centroids; each weight is
replaced by the index of its centroid.  The paper compares three
initialisations and finds **linear** (centroids evenly spaced over
[min, max]) best, because it keeps the rare large weights represented; it is
the default.  ``density`` spaces the initial centroids evenly over the CDF and
``random`` (Forgy) draws them from the weights with a seeded generator.

Large tensors are clustered on a 65,536-bin histogram (the Lloyd iterations
cost O(bins * log k) instead of O(n * log k)), followed by one exact pass on
the real weights: nearest-centroid assignment and exact cluster means.  The
result is deterministic for a given input, k, initialisation and seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .constants import KMeansInit

__all__ = ["Clustering", "kmeans", "HIST_BINS"]

HIST_BINS = 1 << 16
_EXACT_MAX = 1 << 16  # up to this many weights, iterate on the weights themselves


@dataclasses.dataclass(frozen=True)
class Clustering:
    """Result of :func:`kmeans`.

    Attributes:
        centroids: ascending; each is the exact mean of the weights labelled with it.
        labels: centroid index per weight (nearest to the Lloyd centroids; when
            ``converged``, also nearest to the returned ones).
        iterations: Lloyd iterations run.
        converged: no centroid moved more than the tolerance in the last one.
    """

    centroids: np.ndarray
    labels: np.ndarray
    iterations: int
    init: KMeansInit
    seed: int
    converged: bool = True


def _assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # centroids are sorted: the nearest one is found by the midpoints
    mids = (centroids[1:] + centroids[:-1]) * 0.5
    return np.searchsorted(mids, points, side="left")


def _init(points: np.ndarray, weights: np.ndarray, k: int, init: KMeansInit,
          seed: int) -> np.ndarray:
    lo, hi = float(points[0]), float(points[-1])
    if init is KMeansInit.LINEAR:
        return np.linspace(lo, hi, k)
    if init is KMeansInit.DENSITY:
        cdf = np.cumsum(weights)
        targets = (np.arange(k) + 0.5) / k * cdf[-1]
        return points[np.minimum(np.searchsorted(cdf, targets), len(points) - 1)].astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(points), size=min(k, len(points)), replace=False, p=weights / weights.sum())
    return np.sort(points[pick]).astype(np.float64)


def kmeans(
    values: np.ndarray,
    k: int,
    *,
    init: KMeansInit | str = KMeansInit.LINEAR,
    seed: int = 0,
    max_iter: int = 30,
    tol: float = 1e-7,
) -> Clustering:
    """Cluster the finite float values ``values`` (1-D) into at most ``k`` centroids.

    Args:
        values: weights to share, 1-D, finite.
        k: number of centroids wanted (>= 1); empty clusters are dropped, so a
            tensor with fewer distinct values gets fewer centroids.
        init: ``"linear"`` (paper default), ``"density"`` or ``"random"``.
        seed: seed for ``"random"``.
        max_iter: Lloyd iterations at most.
        tol: stop when no centroid moves more than ``tol * (max - min)``.

    Returns:
        A :class:`Clustering` with ascending centroids and int64 labels.

    Example:
        >>> c = kmeans(np.array([0.0, 0.1, 0.9, 1.0]), 2)
        >>> c.centroids.tolist(), c.labels.tolist()
        ([0.05, 0.95], [0, 0, 1, 1])
    """
    init = KMeansInit[init.upper()] if isinstance(init, str) else KMeansInit(init)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return Clustering(np.zeros(0), np.zeros(0, np.int64), 0, init, seed, True)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lo, hi = float(x.min()), float(x.max())
    if x.size <= _EXACT_MAX or lo == hi:
        points = np.sort(x)
        weights = np.ones(len(points))
        sums = points
    else:
        # bin index by the same float arithmetic everywhere: deterministic
        scale = (HIST_BINS - 1) / (hi - lo)
        idx = ((x - lo) * scale).astype(np.int64)
        counts = np.bincount(idx, minlength=HIST_BINS).astype(np.float64)
        sums_all = np.bincount(idx, weights=x, minlength=HIST_BINS)
        nz = counts > 0
        weights = counts[nz]
        sums = sums_all[nz]
        points = sums / weights
    centroids = _init(points, weights, k, init, seed)
    span = hi - lo
    iterations = 0
    converged = False
    for iterations in range(1, max_iter + 1):
        labels = _assign(points, centroids)
        cnt = np.bincount(labels, weights=weights, minlength=len(centroids))
        tot = np.bincount(labels, weights=sums if sums is not points else points * weights,
                          minlength=len(centroids))
        new = centroids.copy()
        filled = cnt > 0
        new[filled] = tot[filled] / cnt[filled]
        new.sort()
        moved = float(np.max(np.abs(new - centroids))) if len(new) else 0.0
        centroids = new
        if moved <= tol * span:
            converged = True
            break
    # exact pass on the real weights
    labels = _assign(x, centroids)
    cnt = np.bincount(labels, minlength=len(centroids))
    tot = np.bincount(labels, weights=x, minlength=len(centroids))
    used = np.flatnonzero(cnt)
    means = tot[used] / cnt[used]
    # clamp into the data range (guards the last ulp of the mean)
    means = np.clip(means, lo, hi)
    remap = np.zeros(len(centroids), dtype=np.int64)
    remap[used] = np.arange(len(used))
    return Clustering(means, remap[labels], iterations, init, seed, converged)
