"""Magnitude pruning (Deep Compression, step 1).

Three ways to choose what to remove, all per tensor:

* ``threshold=t``: remove every weight with ``|w| <= t``;
* ``quality=q``: the paper's per-layer rule, ``t = q * std(w)``;
* ``sparsity=s``: remove exactly ``round(s * n)`` weights, the smallest
  magnitudes first, ties broken by position (deterministic).

``threshold=0`` removes exactly the zeros, which is how an already pruned and
retrained model keeps its sparsity.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .constants import PruneMethod

__all__ = ["Pruning", "prune_mask"]


@dataclasses.dataclass(frozen=True)
class Pruning:
    """What a pruning step did: method, its parameter and the magnitude threshold."""

    method: PruneMethod
    parameter: float
    threshold: float
    kept: int
    total: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


def prune_mask(
    values: np.ndarray,
    *,
    threshold: float | None = None,
    quality: float | None = None,
    sparsity: float | None = None,
) -> tuple[np.ndarray, Pruning]:
    """Boolean keep-mask of ``values`` (any shape) and a record of the pruning.

    Exactly one of ``threshold``, ``quality`` and ``sparsity`` may be given;
    with none, nothing is removed.

    Example:
        >>> mask, p = prune_mask(np.array([0.1, -2.0, 0.5, 0.0]), threshold=0.2)
        >>> mask.tolist(), p.kept
        ([False, True, True, False], 2)
    """
    given = [x is not None for x in (threshold, quality, sparsity)]
    if sum(given) > 1:
        raise ValueError("give at most one of threshold, quality and sparsity")
    mag = np.abs(np.asarray(values, dtype=np.float64)).reshape(-1)
    n = mag.size
    if threshold is not None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        keep = mag > threshold
        rec = Pruning(PruneMethod.THRESHOLD, float(threshold), float(threshold), int(keep.sum()), n)
    elif quality is not None:
        if not quality >= 0:
            raise ValueError(f"quality must be >= 0, got {quality}")
        t = float(quality) * float(np.std(np.asarray(values, dtype=np.float64))) if n else 0.0
        keep = mag > t
        rec = Pruning(PruneMethod.QUALITY, float(quality), t, int(keep.sum()), n)
    elif sparsity is not None:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        remove = int(round(sparsity * n))
        keep = np.ones(n, dtype=bool)
        t = 0.0
        if remove > 0:
            # stable sort: equal magnitudes leave in position order
            order = np.argsort(mag, kind="stable")
            keep[order[:remove]] = False
            t = float(mag[order[remove - 1]])
        rec = Pruning(PruneMethod.SPARSITY, float(sparsity), t, n - remove, n)
    else:
        keep = np.ones(n, dtype=bool)
        rec = Pruning(PruneMethod.NONE, 0.0, 0.0, n, n)
    return keep.reshape(np.shape(values)), rec
