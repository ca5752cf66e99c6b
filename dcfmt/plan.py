"""Compression plans: what each tensor gets (pruning, codebook size, layout).

A plan turns ``(name, array)`` into a :class:`~dcfmt.record.TensorCode`.  Every
plan ends in the same place: among the exact encodings of its decision
(dense, relative index with the best width, bitmap; raw or codebook values),
the smallest is written.

* :class:`LosslessPlan` (``"lossless"``) -- every tensor bit-exact: raw,
  zeros dropped by a sparse layout, or a codebook of its distinct values.
* :class:`ErrorBoundedPlan` (``"error-bounded"``, the default of ``save``) --
  per float tensor, the pruning and codebook size that make the file smallest
  while the relative L2 error ``||w - w'|| / ||w||`` stays under a bound
  (1 %).  A model saved without retraining keeps its accuracy.
* :class:`PaperPlan` (``"paper"``) -- the paper's settings for models that
  are (or will be) retrained: 4-D conv weights 8-bit codebooks, 2-D weights
  5-bit, 1-D tensors lossless, linear initialisation.
* :class:`FixedPlan` -- one pruning rule and codebook size for every float tensor.
* :class:`RulePlan` -- the first glob rule that matches a tensor name decides.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import numpy as np

from . import huffman, sparse
from .constants import (
    DEFAULT_CHUNK_LOG,
    DEFAULT_MAX_CODE_LENGTH,
    MAX_CODEBOOK,
    KMeansInit,
    Layout,
    PruneMethod,
    Values,
)
from .dtypes import DType, from_float64, from_name, from_numpy, to_float64, to_storage, widen
from .errors import EncodeError
from .prune import prune_mask
from .quantize import kmeans
from .recipe import Recipe
from .record import TensorCode

__all__ = [
    "Plan",
    "LosslessPlan",
    "ErrorBoundedPlan",
    "PaperPlan",
    "FixedPlan",
    "RulePlan",
    "resolve_plan",
    "prepare",
    "codebook_tensor",
    "lossless_tensor",
    "errors",
]

_CL = DEFAULT_CHUNK_LOG
_ML = DEFAULT_MAX_CODE_LENGTH


def prepare(array, dtype=None) -> tuple[np.ndarray, DType]:
    """Normalize user input to (C-contiguous little-endian storage array, DType).

    ``dtype`` overrides the element type: ``"bfloat16"`` marks a uint16 array
    as bfloat16 bit patterns; another name converts the values.
    """
    arr = np.asarray(array)
    if arr.dtype == object:
        raise EncodeError("object arrays cannot be stored")
    if dtype is not None:
        target = dtype if isinstance(dtype, DType) else from_name(str(dtype))
        if target is DType.BFLOAT16 and arr.dtype == np.uint16:
            return np.ascontiguousarray(arr, dtype="<u2"), target
        if target is DType.BFLOAT16:
            if from_numpy(arr.dtype) is DType.BFLOAT16:
                return to_storage(arr, target), target
            return from_float64(arr.astype(np.float64), target), target
        return to_storage(arr.astype(target.storage), target), target
    dt = from_numpy(arr.dtype)
    return to_storage(arr, dt), dt


def errors(original: np.ndarray, reconstructed: np.ndarray, dtype: DType) -> tuple[float, float]:
    """(relative L2 error, max absolute error) of a reconstruction, in float64."""
    a = to_float64(original, dtype).reshape(-1)
    b = to_float64(reconstructed, dtype).reshape(-1)
    diff = a - b
    norm = float(np.sqrt(np.dot(a, a))) if a.size else 0.0
    err = float(np.sqrt(np.dot(diff, diff))) if a.size else 0.0
    rel = err / norm if norm > 0 else (0.0 if err == 0 else math.inf)
    return rel, float(np.max(np.abs(diff))) if a.size else 0.0


# ---------------------------------------------------------------------------
# Exact encodings and their sizes
# ---------------------------------------------------------------------------


def _layouts(positions: np.ndarray, numel: int) -> list[tuple[int, Layout, int | None]]:
    """(bytes, layout, index bits) for storing ``positions`` sparsely."""
    bits, rel_size = sparse.best_index_bits(positions, numel, chunk_log=_CL, max_length=_ML)
    bitmap_size = (numel + 7) // 8 + len(sparse.uvar(len(positions)))
    return [(rel_size + 4, Layout.RELATIVE, bits), (bitmap_size + 4, Layout.BITMAP, None)]


def _stream_size(freqs: np.ndarray) -> int:
    return sparse.stream_size(np.asarray(freqs, dtype=np.int64), _CL, _ML)


def _best_sparse(positions: np.ndarray, numel: int) -> tuple[int, Layout, int | None]:
    return min(_layouts(positions, numel), key=lambda t: (t[0], t[1]))


def lossless_tensor(name: str, storage: np.ndarray, dtype: DType, *,
                    recipe: Recipe | None = None) -> TensorCode:
    """The smallest bit-exact TensorCode for ``storage``.

    Candidates: dense raw; zeros dropped (relative or bitmap) with raw values;
    and, when the tensor has few distinct values, a codebook of them with
    Huffman-coded indices, dense or sparse.  Zero means all bits zero, so -0.0
    and NaN payloads survive.  No recipe is attached unless given: an absent
    recipe means the values are stored exactly as they were handed over.
    """
    shape = storage.shape
    flat = storage.reshape(-1)
    numel = flat.size
    item = dtype.itemsize
    best = (numel * item + (64 if numel * item >= 64 else 0), "raw", None)
    if numel == 0:
        return TensorCode(name, dtype, shape, raw=flat, recipe=recipe)
    bits_view = flat.view(f"u{item}") if dtype is not DType.BOOL else flat.view(np.uint8)
    nonzero = bits_view != 0
    nnz = int(np.count_nonzero(nonzero))
    positions = None
    sparse_choice = None
    if nnz < numel:
        positions = np.flatnonzero(nonzero)
        sparse_choice = _best_sparse(positions, numel)
        size = sparse_choice[0] + nnz * item
        if size < best[0]:
            best = (size, "sparse-raw", None)
    distinct = _few_distinct(bits_view)
    if distinct is not None:
        values, inverse = distinct
        k = len(values)
        counts = np.bincount(inverse, minlength=k)
        book_size = 8 + k * item
        dense = book_size + (_stream_size(counts) if k > 1 else 0)
        if dense < best[0]:
            best = (dense, "dense-codebook", (values, inverse))
        if positions is not None and nnz:
            zero_slot = int(np.flatnonzero(values == 0)[0])
            kept_counts = counts.copy()
            kept_counts[zero_slot] = 0
            kk = k - 1
            size = sparse_choice[0] + 8 + kk * item + (_stream_size(kept_counts[kept_counts > 0])
                                                       if kk > 1 else 0)
            if size < best[0]:
                best = (size, "sparse-codebook", (values, inverse))
    kind = best[1]
    if kind == "raw":
        return TensorCode(name, dtype, shape, raw=flat, recipe=recipe)
    if kind == "sparse-raw":
        _, layout, ib = sparse_choice
        return TensorCode(name, dtype, shape, layout=layout, positions=positions, index_bits=ib,
                          raw=flat[positions], recipe=recipe)
    values, inverse = best[2]
    book = values.view(dtype.storage) if dtype is not DType.BOOL else values.astype(np.bool_)
    if kind == "dense-codebook":
        return TensorCode(name, dtype, shape, values=Values.CODEBOOK, codebook=book,
                          codebook_dtype=dtype, indices=inverse, recipe=recipe)
    zero_slot = int(np.flatnonzero(values == 0)[0])
    keep_slots = np.flatnonzero(np.arange(len(values)) != zero_slot)
    remap = np.zeros(len(values), dtype=np.int64)
    remap[keep_slots] = np.arange(len(keep_slots))
    _, layout, ib = sparse_choice
    return TensorCode(name, dtype, shape, layout=layout, positions=positions, index_bits=ib,
                      values=Values.CODEBOOK, codebook=book[keep_slots], codebook_dtype=dtype,
                      indices=remap[inverse[positions]], recipe=recipe)


def _few_distinct(bits: np.ndarray, limit: int = 4096):
    """(sorted distinct bit patterns, inverse) if there are at most ``limit``, else None."""
    n = bits.size
    if bits.dtype.itemsize > 2:
        probe = bits[:: max(1, n // 4096)]
        if len(np.unique(probe)) > limit // 4:
            return None
    values, inverse = np.unique(bits, return_inverse=True)
    if len(values) > min(limit, MAX_CODEBOOK):
        return None
    return values, inverse.reshape(-1).astype(np.int64)


def codebook_tensor(
    name: str,
    dtype: DType,
    shape: tuple[int, ...],
    keep: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    *,
    recipe: Recipe | None = None,
    codebook_dtype: DType | None = None,
) -> TensorCode:
    """Assemble the smallest TensorCode for a pruned, weight-shared tensor.

    Args:
        keep: flat boolean mask of kept elements.
        centroids: float64 codebook values.
        labels: centroid index of each kept element (in flat order).
        codebook_dtype: how centroids are stored (default: the tensor's dtype).

    The stored codebook and indices are exactly ``centroids`` (rounded to
    ``codebook_dtype``) and ``labels``; only the layout is chosen here: dense
    (pruned elements become an extra zero centroid, unless one exists), the
    relative index, or a bitmap -- whichever is smallest.
    """
    cdt = codebook_dtype or dtype
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    numel = keep.size
    nnz = int(np.count_nonzero(keep))
    book = from_float64(np.asarray(centroids, dtype=np.float64), cdt)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(book)
    counts = np.bincount(labels, minlength=k) if k else np.zeros(0, np.int64)
    if nnz == 0:
        pos = np.zeros(0, dtype=np.int64)
        return TensorCode(name, dtype, shape, layout=Layout.RELATIVE, positions=pos, index_bits=1,
                          raw=np.zeros(0, dtype.storage), recipe=recipe)
    book_bytes = 8 + k * cdt.itemsize
    options = []
    positions = np.flatnonzero(keep) if nnz < numel else None
    if positions is not None:
        for size, layout, ib in _layouts(positions, numel):
            options.append((size + book_bytes + (_stream_size(counts) if k > 1 else 0), layout, ib))
    # dense: the pruned elements need a centroid equal to zero
    zero = np.flatnonzero(widen(book, cdt, dtype).astype(np.float64) == 0)
    dense_k = k + (1 if (nnz < numel and len(zero) == 0) else 0)
    if dense_k <= MAX_CODEBOOK:
        dcounts = np.zeros(dense_k, dtype=np.int64)
        dcounts[:k] = counts
        if nnz < numel:
            zslot = int(zero[0]) if len(zero) else k
            dcounts[zslot] += numel - nnz
        options.append((8 + dense_k * cdt.itemsize + (_stream_size(dcounts) if dense_k > 1 else 0),
                        Layout.DENSE, None))
    size, layout, ib = min(options, key=lambda t: (t[0], t[1]))
    if layout is not Layout.DENSE:
        return TensorCode(name, dtype, shape, layout=layout, positions=positions, index_bits=ib,
                          values=Values.CODEBOOK, codebook=book, codebook_dtype=cdt,
                          indices=labels, recipe=recipe)
    idx = np.empty(numel, dtype=np.int64)
    if nnz < numel:
        if len(zero):
            zslot = int(zero[0])
        else:
            zslot = k
            book = np.concatenate([book, from_float64(np.zeros(1), cdt)])
        idx[~keep] = zslot
    idx[keep] = labels
    return TensorCode(name, dtype, shape, values=Values.CODEBOOK, codebook=book, codebook_dtype=cdt,
                      indices=idx, recipe=recipe)


def _lossy_ok(storage: np.ndarray, dtype: DType) -> bool:
    return dtype.is_float and storage.size > 0


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------


class Plan:
    """Base class: ``encode(name, storage, dtype) -> TensorCode``.

    ``storage`` is the C-contiguous little-endian array from :func:`prepare`.
    """

    name = "plan"

    def encode(self, name: str, storage: np.ndarray, dtype: DType) -> TensorCode:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class LosslessPlan(Plan):
    """Every tensor bit-exact; the smallest exact encoding of each."""

    name = "lossless"

    def encode(self, name, storage, dtype):
        return lossless_tensor(name, storage, dtype)


@dataclasses.dataclass
class FixedPlan(Plan):
    """Same pruning and codebook size for every float tensor with ``min_numel`` elements.

    Attributes:
        bits: codebook of ``2**bits`` centroids (1..16); None keeps values raw.
        threshold / quality / sparsity: pruning rule (see :mod:`dcfmt.prune`);
            none given removes only exact zeros.
        init: k-means initialisation ("linear", "density", "random").
        seed: seed for "random".
        codebook_dtype: store centroids narrower than the tensor (e.g. "float16").
        min_numel: smaller tensors are stored losslessly.
    """

    bits: int | None = 5
    threshold: float | None = None
    quality: float | None = None
    sparsity: float | None = None
    init: str = "linear"
    seed: int = 0
    codebook_dtype: str | None = None
    min_numel: int = 1
    label: str = "fixed"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def bits_for(self, name: str, shape: tuple[int, ...]) -> int | None:
        return self.bits

    def encode(self, name, storage, dtype):
        bits = self.bits_for(name, storage.shape)
        if not _lossy_ok(storage, dtype) or storage.size < self.min_numel:
            return lossless_tensor(name, storage, dtype)
        x = to_float64(storage, dtype).reshape(-1)
        if not np.all(np.isfinite(x)):
            return lossless_tensor(name, storage, dtype)
        rule = dict(threshold=self.threshold, quality=self.quality, sparsity=self.sparsity)
        if all(v is None for v in rule.values()):
            rule["threshold"] = 0.0
        keep, pruning = prune_mask(x, **rule)
        if bits is None:
            # pruning only: kept values raw
            pos = np.flatnonzero(keep)
            vals = storage.reshape(-1)[pos]
            recipe = Recipe(plan=self.name, prune_method=pruning.method,
                            prune_parameter=pruning.parameter, prune_threshold=pruning.threshold)
            if len(pos) == storage.size:
                return lossless_tensor(name, storage, dtype)
            _, layout, ib = _best_sparse(pos, storage.size)
            return _with_errors(TensorCode(name, dtype, storage.shape, layout=layout, positions=pos,
                                           index_bits=ib, raw=vals, recipe=recipe), storage)
        if not 1 <= bits <= 16:
            raise EncodeError(f"codebook bits must be 1..16, got {bits}")
        kept = x[keep]
        clus = kmeans(kept, 1 << bits, init=self.init, seed=self.seed)
        recipe = Recipe(plan=self.name, prune_method=pruning.method, prune_parameter=pruning.parameter,
                        prune_threshold=pruning.threshold, kmeans_init=clus.init,
                        kmeans_iterations=clus.iterations,
                        seed=self.seed if clus.init is KMeansInit.RANDOM else None,
                        finetuned=False)
        cdt = from_name(self.codebook_dtype) if self.codebook_dtype else None
        code = codebook_tensor(name, dtype, storage.shape, keep, clus.centroids, clus.labels,
                               recipe=recipe, codebook_dtype=cdt)
        return _with_errors(code, storage)


def _with_errors(code: TensorCode, storage: np.ndarray, bound: float | None = None) -> TensorCode:
    """Record the reconstruction error of ``code`` in its recipe."""
    rel, mx = errors(storage, code.reconstruct(), code.dtype)
    code.recipe = dataclasses.replace(code.recipe or Recipe(), rel_error=rel, max_abs_error=mx,
                                      error_bound=bound)
    return code


@dataclasses.dataclass
class PaperPlan(FixedPlan):
    """The paper's settings: conv (4-D) 8-bit, fully connected (2-D) 5-bit, 1-D lossless.

    Meant for models that were pruned and retrained (zeros are kept as
    sparsity) or will be fine-tuned after quantization.  Pass ``quality`` or
    ``sparsity`` to prune here as well.
    """

    conv_bits: int = 8
    fc_bits: int = 5
    label: str = "paper"

    def bits_for(self, name, shape):
        if len(shape) == 4:
            return self.conv_bits
        if len(shape) == 2:
            return self.fc_bits
        return None

    def encode(self, name, storage, dtype):
        if self.bits_for(name, storage.shape) is None:
            return lossless_tensor(name, storage, dtype)
        return super().encode(name, storage, dtype)


@dataclasses.dataclass
class ErrorBoundedPlan(Plan):
    """Smallest encoding whose relative L2 error stays at most ``max_error``.

    For each codebook size ``2**b`` (b = 1..max_bits) the plan finds, on a
    4096-bin histogram of the tensor, the strongest magnitude pruning that
    keeps ``||w - w'|| / ||w|| <= max_error``, estimates the size of each
    candidate, and encodes the smallest.  Its error is then measured exactly
    (the histogram estimate is an upper bound, since the final assignment to
    the nearest centroid and exact means can only lower it); if rounding the
    centroids breaks the bound, the next candidate is tried, and if none fits,
    the tensor is stored losslessly.  Non-float and non-finite tensors are
    always lossless.
    """

    max_error: float = 0.01
    max_bits: int = 8
    allow_pruning: bool = True
    codebook_dtype: str | None = None
    bins: int = 4096

    name = "error-bounded"

    def describe(self) -> str:
        return f"error-bounded (max relative L2 error {self.max_error:g})"

    def encode(self, name, storage, dtype):
        lossless = lossless_tensor(name, storage, dtype)
        if not _lossy_ok(storage, dtype) or self.max_error <= 0:
            return lossless
        x = to_float64(storage, dtype).reshape(-1)
        if not np.all(np.isfinite(x)):
            return lossless
        norm2 = float(np.dot(x, x))
        if norm2 == 0.0:
            return lossless
        lossless_size = _code_size(lossless)
        budget = self.max_error ** 2 * norm2
        hist = _Histogram(x, self.bins)
        cdt = from_name(self.codebook_dtype) if self.codebook_dtype else dtype
        candidates = []
        for bits in range(1, self.max_bits + 1):
            found = hist.max_pruning(1 << bits, budget, self.allow_pruning)
            if found is None:
                continue
            j, centroids, est_err = found
            size = hist.size_estimate(j, centroids, cdt.itemsize)
            candidates.append((size, bits, j, centroids))
        candidates.sort(key=lambda c: (c[0], c[1]))
        for size, bits, j, centroids in candidates:
            if size >= lossless_size:
                break
            keep = hist.keep_mask(j)
            kept = x[keep]
            labels, means = _refine(kept, centroids)
            threshold = j * hist.width
            recipe = Recipe(plan=self.name,
                            prune_method=PruneMethod.THRESHOLD if j else PruneMethod.NONE,
                            prune_parameter=threshold if j else None,
                            prune_threshold=threshold if j else None,
                            kmeans_init=KMeansInit.LINEAR, finetuned=False)
            code = codebook_tensor(name, dtype, storage.shape, keep, means, labels, recipe=recipe,
                                   codebook_dtype=cdt)
            code = _with_errors(code, storage, self.max_error)
            if code.recipe.rel_error <= self.max_error and _code_size(code) < lossless_size:
                return code
        return lossless


def _refine(kept: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-centroid labels and exact cluster means (empty clusters dropped)."""
    mids = (centroids[1:] + centroids[:-1]) * 0.5
    labels = np.searchsorted(mids, kept, side="left")
    cnt = np.bincount(labels, minlength=len(centroids))
    tot = np.bincount(labels, weights=kept, minlength=len(centroids))
    used = np.flatnonzero(cnt)
    remap = np.zeros(len(centroids), dtype=np.int64)
    remap[used] = np.arange(len(used))
    means = np.clip(tot[used] / cnt[used], kept.min(), kept.max()) if len(kept) else np.zeros(0)
    return remap[labels], means


def _code_size(code: TensorCode) -> int:
    """Approximate stored bytes of a TensorCode (streams exact, headers estimated)."""
    size = 16
    numel = code.numel
    if code.layout is Layout.RELATIVE:
        syms = sparse.relative_symbols(code.positions, code.index_bits)
        size += _stream_size(np.bincount(syms, minlength=1 << code.index_bits)) + 4
    elif code.layout is Layout.BITMAP:
        size += (numel + 7) // 8 + 4
    if code.values is Values.RAW:
        size += code.nnz * code.dtype.itemsize
    else:
        k = len(code.codebook)
        size += 8 + k * code.codebook_dtype.itemsize
        if k > 1:
            size += _stream_size(np.bincount(np.asarray(code.indices), minlength=k))
    return size


class _Histogram:
    """Symmetric value histogram used to search pruning x codebook size quickly.

    Bin ``i`` of ``2B`` covers ``[-A + i*w, -A + (i+1)*w)`` with ``A = max|x|``;
    pruning level ``j`` removes the ``2j`` bins nearest zero (|x| below
    ``j*w``).  Per bin it keeps the count, sum and sum of squares, so the
    pruning error is exact and the quantization error of a bin assigned to
    centroid c is ``s2 - 2c*s1 + n*c^2`` exactly.
    """

    def __init__(self, x: np.ndarray, bins: int) -> None:
        self.B = bins // 2
        amax = float(np.max(np.abs(x)))
        self.width = amax / self.B
        idx = np.floor((x + amax) / self.width).astype(np.int64)
        np.clip(idx, 0, 2 * self.B - 1, out=idx)
        self.idx = idx
        n = 2 * self.B
        self.cnt = np.bincount(idx, minlength=n).astype(np.float64)
        self.s1 = np.bincount(idx, weights=x, minlength=n)
        self.s2 = np.bincount(idx, weights=x * x, minlength=n)
        self.numel = x.size
        # pruning error of level j: squares of the 2j central bins
        center = self.s2[self.B - 1 :: -1] + self.s2[self.B :]
        self.prune_err = np.concatenate([[0.0], np.cumsum(center)])
        self.prune_cnt = np.concatenate([[0.0], np.cumsum(self.cnt[self.B - 1 :: -1] + self.cnt[self.B :])])

    def keep_bins(self, j: int) -> np.ndarray:
        keep = np.ones(2 * self.B, dtype=bool)
        keep[self.B - j : self.B + j] = False
        return keep & (self.cnt > 0)

    def keep_mask(self, j: int) -> np.ndarray:
        if j == 0:
            return np.ones(self.numel, dtype=bool)
        return (self.idx < self.B - j) | (self.idx >= self.B + j)

    def quantize(self, j: int, k: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Weighted Lloyd on the kept bins: (centroids, error incl. pruning, cluster counts)."""
        kb = self.keep_bins(j)
        n, s1, s2 = self.cnt[kb], self.s1[kb], self.s2[kb]
        if len(n) == 0:
            return np.zeros(0), float(self.prune_err[j]), np.zeros(0)
        pts = s1 / n
        c = np.linspace(pts[0], pts[-1], min(k, len(pts)))
        for _ in range(30):
            lab = np.searchsorted((c[1:] + c[:-1]) * 0.5, pts, side="left")
            cn = np.bincount(lab, weights=n, minlength=len(c))
            cs = np.bincount(lab, weights=s1, minlength=len(c))
            new = c.copy()
            ok = cn > 0
            new[ok] = cs[ok] / cn[ok]
            new.sort()
            if np.max(np.abs(new - c)) <= 1e-9 * (pts[-1] - pts[0] + 1e-300):
                c = new
                break
            c = new
        lab = np.searchsorted((c[1:] + c[:-1]) * 0.5, pts, side="left")
        cl = c[lab]
        q = float(np.sum(s2 - 2 * cl * s1 + n * cl * cl))
        counts = np.bincount(lab, weights=n, minlength=len(c))
        return c, max(q, 0.0) + float(self.prune_err[j]), counts

    def max_pruning(self, k: int, budget: float, allow: bool):
        """Largest pruning level whose estimated error fits ``budget`` at ``k`` centroids."""
        c0, e0, _ = self.quantize(0, k)
        if e0 > budget:
            return None
        if not allow:
            return 0, c0, e0
        lo, hi = 0, self.B  # invariant: level lo fits
        best = (0, c0, e0)
        # the pruning error alone bounds the search
        hi = int(np.searchsorted(self.prune_err, budget, side="right")) - 1
        hi = min(hi, self.B)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            c, e, _ = self.quantize(mid, k)
            if e <= budget and len(c):
                lo = mid
                best = (mid, c, e)
            else:
                hi = mid - 1
        return best

    def size_estimate(self, j: int, centroids: np.ndarray, itemsize: int) -> float:
        """Estimated bytes: index stream + positions (binary entropy) + codebook."""
        c, _, counts = self.quantize(j, len(centroids))
        kept = float(self.numel - self.prune_cnt[j])
        n = self.numel
        counts = counts[counts > 0].astype(np.int64)
        idx_bits = huffman.stream_bits(counts, huffman.code_lengths(counts, _ML)) if len(counts) > 1 else 0
        sparse_bits = idx_bits
        if kept < n:
            d = kept / n
            h = -(d * math.log2(d) + (1 - d) * math.log2(1 - d)) if 0 < d < 1 else 0.0
            sparse_bits += n * h * 1.03 + 64
            dense_counts = np.append(counts, n - int(kept))
            dense_bits = huffman.stream_bits(dense_counts, huffman.code_lengths(dense_counts, _ML))
            bits = min(sparse_bits, dense_bits)
        else:
            bits = idx_bits
        return bits / 8 + (len(c) + 1) * itemsize + 24


# ---------------------------------------------------------------------------
# Rules and resolution
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RulePlan(Plan):
    """Apply the plan of the first rule whose glob matches the tensor name.

    Attributes:
        rules: ``[(glob, plan), ...]`` tried in order (``fnmatch`` syntax).
        default: plan for names no rule matches.
    """

    rules: list
    default: Plan = dataclasses.field(default_factory=lambda: ErrorBoundedPlan())
    name = "rules"

    def plan_for(self, tensor: str) -> Plan:
        for pattern, plan in self.rules:
            if fnmatch.fnmatchcase(tensor, pattern):
                return resolve_plan(plan)
        return self.default

    def encode(self, name, storage, dtype):
        return self.plan_for(name).encode(name, storage, dtype)


_NAMED = {
    "lossless": LosslessPlan,
    "error-bounded": ErrorBoundedPlan,
    "paper": PaperPlan,
}


def resolve_plan(plan) -> Plan:
    """A Plan from a Plan, a name ("lossless", "error-bounded", "paper") or None (default)."""
    if plan is None:
        return ErrorBoundedPlan()
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, str):
        try:
            return _NAMED[plan.lower()]()
        except KeyError:
            raise EncodeError(f"unknown plan {plan!r}; known: {', '.join(sorted(_NAMED))}") from None
    raise TypeError(f"expected a Plan or a plan name, got {type(plan).__name__}")
