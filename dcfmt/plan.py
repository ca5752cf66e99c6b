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

from . import groups, huffman, parallel, sparse
from .constants import (
    DEFAULT_CHUNK_LOG,
    DEFAULT_GROUP_MAX_CODE_LENGTH,
    DEFAULT_MAX_CODE_LENGTH,
    MAX_CODEBOOK,
    KMeansInit,
    Layout,
    PruneMethod,
    Values,
)
from .dtypes import (DType, codebook_dtype_allowed, from_float64, from_name, from_numpy,
                     to_float64, to_storage, widen)
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


def _index_bits(counts: np.ndarray) -> float:
    """Payload bits of a codebook index stream, plain or grouped as the writer would."""
    plain = huffman.stream_bits(counts, huffman.code_lengths(counts, _ML))
    grouped = groups.estimated_size(counts, group_max_length=DEFAULT_GROUP_MAX_CODE_LENGTH,
                                    chunk_log=_CL)
    return plain if grouped is None else min(plain, 8 * grouped)


def _index_stream_size(freqs: np.ndarray) -> float:
    """Bytes of a codebook index stream: plain, or grouped (spec 7.4) where the writer
    would group it -- estimated from the counts, as the writer measures before it chooses."""
    plain = _stream_size(freqs)
    grouped = groups.estimated_size(freqs, group_max_length=DEFAULT_GROUP_MAX_CODE_LENGTH,
                                    chunk_log=_CL)
    return plain if grouped is None else min(plain, grouped)


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
    # counted and located on the bit patterns themselves: a boolean mask of a
    # large dense tensor would cost two more passes over memory for nothing
    nnz = int(np.count_nonzero(bits_view))
    positions = None
    sparse_choice = None
    # Sizing the sparse layouts exactly is costly on big tensors, so it is done only
    # when they can win: positions cost at least one bit per kept element (each
    # relative-index entry has a code of 1+ bits; a bitmap has numel >= nnz bits).
    floor = (nnz + 7) // 8
    if nnz < numel and floor + nnz * item < best[0]:
        positions = np.flatnonzero(bits_view)
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
        dense = book_size + (_index_stream_size(counts) if k > 1 else 0)
        if dense < best[0]:
            best = (dense, "dense-codebook", (values, inverse))
        if nnz < numel and nnz:
            zero_slot = int(np.flatnonzero(values == 0)[0])
            kept_counts = counts.copy()
            kept_counts[zero_slot] = 0
            kk = k - 1
            rest = 8 + kk * item + (_index_stream_size(kept_counts[kept_counts > 0]) if kk > 1 else 0)
            if floor + rest < best[0]:
                if sparse_choice is None:
                    positions = np.flatnonzero(bits_view)
                    sparse_choice = _best_sparse(positions, numel)
                size = sparse_choice[0] + rest
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
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    k = len(book)
    counts = np.bincount(labels, minlength=k) if k else np.zeros(0, np.int64)
    if nnz == 0:
        pos = np.zeros(0, dtype=np.int64)
        return TensorCode(name, dtype, shape, layout=Layout.RELATIVE, positions=pos, index_bits=1,
                          raw=np.zeros(0, dtype.storage), recipe=recipe)
    book_bytes = 8 + k * cdt.itemsize
    options = []
    dense = _dense_option(book, cdt, dtype, counts, numel, nnz)
    if dense is not None:
        options.append((dense[0], Layout.DENSE, None))
    positions = None
    if nnz < numel:
        values_size = book_bytes + (_index_stream_size(counts) if k > 1 else 0)
        # positions cost at least a bit per kept element (see lossless_tensor); ties go
        # to DENSE, so a sparse layout that cannot be strictly smaller is not sized
        if not options or (nnz + 7) // 8 + values_size < options[0][0]:
            positions = np.flatnonzero(keep)
            for size, layout, ib in _layouts(positions, numel):
                options.append((size + values_size, layout, ib))
    size, layout, ib = min(options, key=lambda t: (t[0], t[1]))
    if layout is not Layout.DENSE:
        return TensorCode(name, dtype, shape, layout=layout, positions=positions, index_bits=ib,
                          values=Values.CODEBOOK, codebook=book, codebook_dtype=cdt,
                          indices=labels, recipe=recipe)
    _, zslot, extend = dense
    idx = np.empty(numel, dtype=np.uint8 if k + extend <= 256 else np.uint16)
    if extend:
        book = np.concatenate([book, from_float64(np.zeros(1), cdt)])
    if nnz < numel:
        idx[~keep] = zslot
    idx[keep] = labels
    return TensorCode(name, dtype, shape, values=Values.CODEBOOK, codebook=book, codebook_dtype=cdt,
                      indices=idx, recipe=recipe)


def _dense_option(book: np.ndarray, cdt: DType, dtype: DType, counts: np.ndarray, numel: int,
                  nnz: int) -> tuple[int, int | None, bool] | None:
    """The dense layout of a codebook tensor: (bytes, zero slot, codebook extended by a zero).

    Pruned elements need a centroid equal to zero: the first existing one, or
    an extra one appended (None when that would exceed the codebook limit).
    """
    k = len(book)
    zero = np.flatnonzero(widen(book, cdt, dtype).astype(np.float64) == 0)
    extend = nnz < numel and len(zero) == 0
    dense_k = k + extend
    if dense_k > MAX_CODEBOOK:
        return None
    dcounts = np.zeros(dense_k, dtype=np.int64)
    dcounts[:k] = counts
    zslot = None
    if nnz < numel:
        zslot = int(zero[0]) if len(zero) else k
        dcounts[zslot] += numel - nnz
    size = 8 + dense_k * cdt.itemsize + (_index_stream_size(dcounts) if dense_k > 1 else 0)
    return size, zslot, bool(extend)


def _codebook_dtype(name: str | None, dtype: DType) -> DType | None:
    """A plan's codebook dtype for a tensor of ``dtype``: the named one where it can
    serve the tensor (spec 7.3), else None (the tensor's own type).  So a
    float16 codebook setting narrows float32 tensors and leaves a mixed-precision
    model's float16 and bfloat16 tensors with their own types."""
    if not name:
        return None
    cdt = from_name(name)
    return cdt if codebook_dtype_allowed(dtype, cdt) else None


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
        cdt = _codebook_dtype(self.codebook_dtype, dtype)
        code = codebook_tensor(name, dtype, storage.shape, keep, clus.centroids, clus.labels,
                               recipe=recipe, codebook_dtype=cdt)
        return _with_errors(code, storage)


#: Elements per block of float64 work in the error-bounded plan: bounds temporaries (8 MB each).
_BLOCK = 1 << 20
_PIECE = 1 << 16  # elements per pass within a block (see _pieces)


def _blocks(n: int, start: int = 0):
    """Blocks ``[a, b)`` of ``[start, n)`` (``start`` a multiple of ``_BLOCK``)."""
    for a in range(start, n, _BLOCK):
        yield a, min(n, a + _BLOCK)


def _pieces(start: int, stop: int):
    """``[start, stop)`` in pieces of ``_PIECE``: a block's passes run piece by piece so
    that their temporaries (take's intp copy of the indices, float64 differences)
    stay in the L2 cache instead of streaming megabytes through memory."""
    for a in range(start, stop, _PIECE):
        yield a, min(stop, a + _PIECE)


def _in_order(parts: list[list]):
    """The per-block results of :func:`parallel.map_ranges` parts, in block order.

    Sums over blocks are added in this order whatever the thread count, so
    floating-point results, and the file bytes, do not depend on it.
    """
    for part in parts:
        yield from part


def _block_errors(original: np.ndarray, reconstructed: np.ndarray, dtype: DType) -> tuple[float, float]:
    """:func:`errors`, computed block by block (the same sums, in a different order)."""
    a_flat = np.asarray(original).reshape(-1)
    b_flat = np.asarray(reconstructed).reshape(-1)

    def part(start: int, stop: int) -> list:
        sums = []
        for a, b in _blocks(stop, start):
            x = to_float64(a_flat[a:b], dtype)
            d = x - to_float64(b_flat[a:b], dtype)
            sums.append((float(np.einsum("i,i->", d, d)), float(np.einsum("i,i->", x, x)),
                         float(np.max(np.abs(d)))))
        return sums

    err2 = norm2 = mx = 0.0
    for e, x2, m in _in_order(parallel.map_ranges(part, a_flat.size, _BLOCK)):
        err2 += e
        norm2 += x2
        mx = max(mx, m)
    err, norm = math.sqrt(err2), math.sqrt(norm2)
    rel = err / norm if norm > 0 else (0.0 if err == 0 else math.inf)
    return rel, mx


def _with_errors(code: TensorCode, storage: np.ndarray, bound: float | None = None) -> TensorCode:
    """Record the reconstruction error of ``code`` in its recipe."""
    rel, mx = _block_errors(storage, code.reconstruct(), code.dtype)
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

    For each codebook size ``2**b`` (b = max_bits down to 1, stopping at the
    first size that cannot meet the bound even without pruning: fewer
    centroids only add error) the plan finds, on a 4096-bin histogram of the
    tensor, the strongest magnitude pruning that keeps
    ``||w - w'|| / ||w|| <= max_error``, estimates the size of each
    candidate, and encodes the smallest.  Centroids come from Lloyd iterations
    on the histogram, started from the paper's linear initialisation; when
    that cannot meet the bound at a codebook size even without pruning (Lloyd
    from linear centroids stalls on bell-shaped tensors with long tails), it
    restarts from centroids spaced by the cube root of the weight density --
    the spacing that minimises squared error -- and the recipe records
    ``kmeans_init = density``.  Each weight then goes to its nearest centroid
    and each centroid becomes the exact mean of its weights; the error is
    measured exactly (the histogram estimate is an upper bound, since these
    two steps can only lower it); if rounding the centroids breaks the bound,
    the next candidate is tried, and if none fits, the tensor is stored
    losslessly.  Non-float and non-finite tensors are always lossless.

    Work is done in blocks of 2**20 elements: besides the tensor, the plan
    needs 2 bytes per element for the bin of each element and 1 or 2 for the
    centroid indices it returns, plus a few block buffers per encoder thread
    (``DCZ_THREADS``).
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
        flat = storage.reshape(-1)
        finite, vmin, vmax, norm2 = _scan(flat, dtype)
        if not finite or not 0.0 < norm2 < math.inf:  # (squares can under- or overflow)
            return lossless
        lossless_size = _code_size(lossless)
        budget = self.max_error ** 2 * norm2
        hist = _Histogram(flat, dtype, self.bins, max(-vmin, vmax), norm2)
        cdt = _codebook_dtype(self.codebook_dtype, dtype) or dtype
        candidates = []
        # from the largest codebook down: once a size cannot meet the bound even
        # unpruned, smaller ones (fewer centroids, so more error) cannot either
        for bits in range(self.max_bits, 0, -1):
            found = hist.max_pruning(1 << bits, budget, self.allow_pruning)
            if found is None:
                break
            j, centroids, est_err, counts, init = found
            size = hist.size_estimate(j, centroids, counts, cdt.itemsize)
            candidates.append((size, bits, j, centroids, init))
        candidates.sort(key=lambda c: (c[0], c[1]))
        for size, bits, j, centroids, init in candidates:
            if size >= lossless_size:
                break
            threshold = j * hist.width
            recipe = Recipe(plan=self.name,
                            prune_method=PruneMethod.THRESHOLD if j else PruneMethod.NONE,
                            prune_parameter=threshold if j else None,
                            prune_threshold=threshold if j else None,
                            kmeans_init=KMeansInit.LINEAR if init == "linear" else KMeansInit.DENSITY,
                            finetuned=False)
            code, size = hist.encode(name, flat, dtype, storage.shape, j, centroids, cdt, recipe,
                                     (vmin, vmax))
            if size is None:  # a sparse layout: measure the general way
                code = _with_errors(code, storage, self.max_error)
                size = _code_size(code)
            else:
                code.recipe = dataclasses.replace(code.recipe, error_bound=self.max_error)
            if code.recipe.rel_error <= self.max_error and size < lossless_size:
                return code
            del code
        return lossless


def _work(block: np.ndarray, dtype: DType) -> np.ndarray:
    """Exact values of stored floats in the narrowest numpy float that holds them."""
    if dtype is DType.FLOAT16:
        return block.astype(np.float32)
    if dtype is DType.BFLOAT16:
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block  # float32 and float64 as they are


def _scan(flat: np.ndarray, dtype: DType) -> tuple[bool, float, float, float]:
    """(all finite, min, max, sum of squares in float64) of stored floats, block by block."""
    def part(start: int, stop: int) -> list:
        out = []
        for a0, b0 in _blocks(stop, start):
            lo, hi, sq = math.inf, -math.inf, 0.0
            for a, b in _pieces(a0, b0):  # three reductions over data in cache
                x = _work(flat[a:b], dtype)
                plo, phi = float(x.min()), float(x.max())  # NaN propagates, so these see every value
                if not (math.isfinite(plo) and math.isfinite(phi)):
                    return [None]
                lo, hi = min(lo, plo), max(hi, phi)
                sq += float(np.einsum("i,i->", x, x, dtype=np.float64))
            out.append((lo, hi, sq))
        return out

    vmin, vmax, norm2 = math.inf, -math.inf, 0.0
    for block in _in_order(parallel.map_ranges(part, flat.size, _BLOCK)):
        if block is None:
            return False, 0.0, 0.0, 0.0
        lo, hi, sq = block
        vmin, vmax = min(vmin, lo), max(vmax, hi)
        norm2 += sq
    return True, vmin, vmax, norm2


def _code_size(code: TensorCode) -> int:
    """Approximate stored bytes of a TensorCode (plain streams exact, grouped ones and
    headers estimated)."""
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
            size += _index_stream_size(np.bincount(np.asarray(code.indices), minlength=k))
    return size


class _Histogram:
    """Symmetric value histogram used to search pruning x codebook size quickly.

    Bin ``i`` of ``2B`` covers ``[-A + i*w, -A + (i+1)*w)`` with ``A = max|x|``;
    pruning level ``j`` removes the ``2j`` bins nearest zero (|x| below
    ``j*w``).  Per bin it keeps the count ``n`` and the sum ``s1``; with the
    total sum of squares ``norm2``, the error of pruning level j with bin b
    assigned to centroid ``c_b`` is exactly
    ``norm2 - sum over kept bins of (2 c_b s1_b - n_b c_b^2)``.
    The bin of every element is kept (2 bytes each) for the final assignment.
    """

    def __init__(self, flat: np.ndarray, dtype: DType, bins: int, amax: float, norm2: float) -> None:
        self.B = bins // 2
        n = 2 * self.B
        self.amax = amax
        self.width = amax / self.B
        self.numel = flat.size
        self.norm2 = norm2
        self.idx = np.empty(flat.size, dtype=np.int16 if n <= 1 << 15 else np.int32)
        wdt = _work(flat[:0], dtype).dtype
        big = np.finfo(wdt).max / 4
        if not (amax < big and self.B / amax < big):  # x + A or the scale would overflow
            wdt = np.dtype(np.float64)
        shift, scale = wdt.type(amax), wdt.type(self.B / amax)

        top = np.asarray(n - 1, dtype=self.idx.dtype)

        def part(lo: int, hi: int) -> list:
            # A block's passes run over pieces that stay in the L2 cache; its
            # sums add the pieces' in order (whatever the threads).  Buffers are
            # reused piece after piece (fresh arrays cost page faults).
            tbuf = np.empty(min(hi - lo, _PIECE), dtype=wdt)
            ibuf = np.empty(min(hi - lo, _PIECE), dtype=np.intp)
            xbuf = np.empty(min(hi - lo, _PIECE), dtype=np.float64)
            ones = np.ones(min(hi - lo, _PIECE))
            sums = []
            for a0, b0 in _blocks(hi, lo):
                c_block, s_block = np.zeros(n), np.zeros(n)
                for a, b in _pieces(a0, b0):
                    x = _work(flat[a:b], dtype)
                    t, ib, x64, i = tbuf[: b - a], ibuf[: b - a], xbuf[: b - a], self.idx[a:b]
                    # x + A >= 0 exactly (A = max|x|), so truncation is floor; the
                    # bin (at most 2B, then clipped) goes straight into the narrow
                    # index, which numpy casts to 3x faster than to intp
                    np.add(x, shift, out=t)
                    np.multiply(t, scale, out=t)
                    i[...] = t
                    np.minimum(i, top, out=i)
                    ib[...] = i  # bincount wants intp
                    x64[...] = x
                    # counts as a bincount of ones: numpy's weighted loop is faster
                    # than its counting one, and float64 counts are exact
                    c_block += np.bincount(ib, weights=ones[: b - a], minlength=n)
                    s_block += np.bincount(ib, weights=x64, minlength=n)
                sums.append((c_block, s_block))
            return sums

        cnt = np.zeros(n)
        s1 = np.zeros(n)
        for c, s in _in_order(parallel.map_ranges(part, flat.size, _BLOCK)):
            cnt += c
            s1 += s
        self.cnt, self.s1 = cnt, s1
        # a lower bound of the pruning error of level j (Cauchy-Schwarz: sum x^2 >= s1^2 / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            floor = np.where(cnt > 0, s1 * s1 / np.maximum(cnt, 1), 0.0)
        center = floor[self.B - 1 :: -1] + floor[self.B :]
        self.prune_floor = np.concatenate([[0.0], np.cumsum(center)])
        self.prune_cnt = np.concatenate([[0.0], np.cumsum(cnt[self.B - 1 :: -1] + cnt[self.B :])])

    def keep_bins(self, j: int) -> np.ndarray:
        keep = np.ones(2 * self.B, dtype=bool)
        keep[self.B - j : self.B + j] = False
        return keep & (self.cnt > 0)

    def keep_mask(self, j: int) -> np.ndarray:
        if j == 0:
            return np.ones(self.numel, dtype=bool)
        return (self.idx < self.B - j) | (self.idx >= self.B + j)

    def quantize(self, j: int, k: int, init: str = "linear") -> tuple[np.ndarray, float, np.ndarray]:
        """Weighted Lloyd on the kept bins: (centroids, error incl. pruning, cluster counts).

        ``init``: ``"linear"`` (evenly spaced over [min, max], the paper's) or
        ``"density"`` (spaced evenly over the CDF of the cube root of the bin counts).
        Bins are sorted, so each cluster is a run of bins: its count and sum are
        differences of prefix sums at the midpoints between centroids (a bin
        at a midpoint goes to the lower centroid, as ``searchsorted(side="left")``).
        """
        kb = self.keep_bins(j)
        n, s1 = self.cnt[kb], self.s1[kb]
        if len(n) == 0:
            return np.zeros(0), self.norm2, np.zeros(0)
        pts = s1 / n
        m = min(k, len(pts))
        if init == "linear":
            c = np.linspace(pts[0], pts[-1], m)
        else:
            cdf = np.cumsum(np.cbrt(n))
            c = np.interp((np.arange(m) + 0.5) / m * cdf[-1], cdf, pts)
        N = np.concatenate([[0.0], np.cumsum(n)])
        S = np.concatenate([[0.0], np.cumsum(s1)])
        ends = np.empty(m + 1, dtype=np.intp)
        ends[0], ends[-1] = 0, len(pts)

        def clusters(c):
            ends[1:-1] = np.searchsorted(pts, (c[1:] + c[:-1]) * 0.5, side="right")
            return np.diff(N[ends]), np.diff(S[ends])

        tol = 1e-9 * (pts[-1] - pts[0] + 1e-300)
        for _ in range(30):
            cn, cs = clusters(c)
            new = c.copy()
            ok = cn > 0
            new[ok] = cs[ok] / cn[ok]
            new.sort()
            done = np.max(np.abs(new - c)) <= tol
            c = new
            if done:
                break
        cn, cs = clusters(c)
        err = self.norm2 - float(np.dot(c, 2 * cs - cn * c))
        return c, max(err, 0.0), cn

    def max_pruning(self, k: int, budget: float, allow: bool):
        """Largest pruning level whose estimated error fits ``budget`` with ``k`` index symbols.

        Unpruned, that is ``k`` centroids; pruned, ``k - 1`` centroids and the
        zero that pruned weights take, so that a ``b``-bit codebook never needs
        more than ``2**b`` symbols (an 8-bit one stays within the decoders'
        one-byte symbols, which decode about 1.7x faster than two-byte ones).

        Returns ``(level, centroids, error, cluster counts, init)`` or None.
        """
        for init in ("linear", "density"):
            c0, e0, n0 = self.quantize(0, k, init)
            if e0 <= budget:
                break
        else:
            return None
        if not allow:
            return 0, c0, e0, n0, init
        lo = 0  # invariant: level lo fits
        best = (0, c0, e0, n0)
        # the pruning error alone bounds the search
        hi = int(np.searchsorted(self.prune_floor, budget, side="right")) - 1
        hi = min(hi, self.B)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            c, e, cn = self.quantize(mid, max(1, k - 1), init)
            if e <= budget and len(c):
                lo = mid
                best = (mid, c, e, cn)
            else:
                hi = mid - 1
        return (*best, init)

    def size_estimate(self, j: int, centroids: np.ndarray, counts: np.ndarray, itemsize: int) -> float:
        """Estimated bytes: index stream + positions (binary entropy) + codebook."""
        kept = float(self.numel - self.prune_cnt[j])
        n = self.numel
        counts = counts[counts > 0].astype(np.int64)
        idx_bits = _index_bits(counts) if len(counts) > 1 else 0
        sparse_bits = idx_bits
        if kept < n:
            d = kept / n
            h = -(d * math.log2(d) + (1 - d) * math.log2(1 - d)) if 0 < d < 1 else 0.0
            sparse_bits += n * h * 1.03 + 64
            dense_counts = np.append(counts, n - int(kept))
            dense_bits = _index_bits(dense_counts)
            bits = min(sparse_bits, dense_bits)
        else:
            bits = idx_bits
        return bits / 8 + (len(centroids) + 1) * itemsize + 24

    def encode(self, name: str, flat: np.ndarray, dtype: DType, shape: tuple, j: int,
               centroids: np.ndarray, cdt: DType, recipe: Recipe,
               extremes: tuple[float, float]) -> tuple[TensorCode, int | None]:
        """The TensorCode of pruning level ``j`` with weights shared by ``centroids``, and its size.

        Every kept weight goes to its nearest centroid -- the label
        ``searchsorted(midpoints, x, side="left")`` -- and each centroid becomes
        the exact mean of its weights (clipped to the range of the kept
        weights; empty clusters are dropped).  A bin that no midpoint crosses
        takes its label from a table; in a bin that one midpoint crosses an
        element compares itself with it, and bins that several cross are
        searched element by element.  The dense layout is built
        here, with its error measured exactly (labels are uint16 while the
        table needs two codes past a codebook of 255 or 256 entries, and are
        handed over as uint8); when a sparse layout could be
        smaller, :func:`codebook_tensor` chooses, and the size is None: the
        caller measures the error and the size.
        """
        c = np.asarray(centroids, dtype=np.float64)
        k = len(c)
        n2 = 2 * self.B
        mids = (c[1:] + c[:-1]) * 0.5
        edges = -self.amax + np.arange(n2) * self.width
        # an element's bin comes from float arithmetic accurate to ~1e-3 bin: widen each
        # bin by 1/100 of a bin on both sides before asking which midpoints it holds
        lab_lo = np.searchsorted(mids, edges - 0.01 * self.width, side="left")
        lab_hi = np.searchsorted(mids, edges + 1.01 * self.width, side="left")
        kept_bin = np.ones(n2, dtype=bool)
        kept_bin[self.B - j : self.B + j] = False
        # table codes besides the labels 0..k-1; pruned elements usually end up in an
        # appended zero centroid, index k, so their code is k
        pruned, straddle = k, k + 1
        table = np.where(lab_lo == lab_hi, lab_lo, straddle).astype(np.uint8 if k + 2 <= 256
                                                                      else np.uint16)
        table[~kept_bin] = pruned
        # a bin that one midpoint crosses: label lab_lo + (x > midpoint); more: searched
        one = lab_hi == lab_lo + 1
        cross = np.where(one, mids[np.minimum(lab_lo, max(k - 2, 0))] if k > 1 else 0.0, np.nan)
        # counts and sums of the kept weights per centroid: whole bins, then straddling elements
        whole = kept_bin & (table < straddle)
        cnt = np.bincount(table[whole], weights=self.cnt[whole], minlength=k)
        tot = np.bincount(table[whole], weights=self.s1[whole], minlength=k)
        labels = np.empty(self.numel, dtype=table.dtype)

        def label(start: int, stop: int) -> list:
            sums = []
            for a0, b0 in _blocks(stop, start):
                c_block, t_block = np.zeros(k), np.zeros(k)
                for a, b in _pieces(a0, b0):
                    out = labels[a:b]
                    table.take(self.idx[a:b], out=out, mode="wrap")
                    at = np.flatnonzero(out == straddle)
                    if len(at):
                        x = _work(flat[a:b], dtype)[at].astype(np.float64)
                        bins = self.idx[a:b][at]
                        m = cross.take(bins)
                        lab = lab_lo.take(bins) + (x > m)
                        many = np.isnan(m)
                        if many.any():
                            lab[many] = np.searchsorted(mids, x[many], side="left")
                        out[at] = lab
                        c_block += np.bincount(lab, minlength=k)
                        t_block += np.bincount(lab, weights=x, minlength=k)
                sums.append((c_block, t_block))
            return sums

        for c_part, t_part in _in_order(parallel.map_ranges(label, self.numel, _BLOCK)):
            cnt += c_part
            tot += t_part
        nnz = int(round(cnt.sum()))
        numel = self.numel
        used = np.flatnonzero(cnt)
        vmin, vmax = extremes
        if nnz and not all(kept_bin[max(0, min(n2 - 1, int((v + self.amax) / self.width) + d))]
                           for v in extremes for d in (-1, 0, 1)):
            kept = _work(flat, dtype)[self.keep_mask(j)]  # an extreme is (near) pruned: rare
            vmin, vmax = float(kept.min()), float(kept.max())
        means = np.clip(tot[used] / cnt[used], vmin, vmax) if nnz else np.zeros(0)
        book = from_float64(means, cdt)
        counts = cnt[used].astype(np.int64)
        dense = _dense_option(book, cdt, dtype, counts, numel, nnz) if nnz else None
        values_size = 8 + len(book) * cdt.itemsize + (_index_stream_size(counts) if len(book) > 1 else 0)
        remap = np.zeros(k + 2, dtype=np.uint16)
        remap[used] = np.arange(len(used))
        if dense is None or (nnz < numel and (nnz + 7) // 8 + values_size < dense[0]):
            # a sparse layout might be smaller: let codebook_tensor size them all
            keep = self.keep_mask(j)
            kept_labels = remap.take(labels[keep])
            del labels
            code = codebook_tensor(name, dtype, shape, keep, means, kept_labels, recipe=recipe,
                                   codebook_dtype=cdt)
            return code, None
        size, zslot, extend = dense
        if extend:
            book = np.concatenate([book, from_float64(np.zeros(1), cdt)])
        if zslot is not None:
            remap[pruned] = zslot
        if len(used) < k or (zslot is not None and zslot != pruned):  # rare: relabel
            remap = remap.astype(labels.dtype)

            def relabel(start: int, stop: int) -> None:
                for a, b in _blocks(stop, start):
                    labels[a:b] = remap.take(labels[a:b], mode="wrap")

            parallel.map_ranges(relabel, numel, _BLOCK)
        # exact error of the reconstruction a decoder returns (centroids as the decoder
        # widens them, held in the work type, which represents them exactly)
        values = to_float64(widen(book, cdt, dtype), dtype).astype(_work(flat[:0], dtype).dtype)
        # labels of a codebook of up to 256 entries go to the writer as uint8, which
        # its Huffman packer reads two at a time as one uint16 (the labels were
        # uint16 only to make room for the table's two extra codes)
        final = np.empty(numel, dtype=np.uint8) if labels.dtype != np.uint8 and len(book) <= 256 else labels

        def error(start: int, stop: int) -> list:
            vbuf = np.empty(min(stop - start, _PIECE), dtype=values.dtype)
            dbuf = np.empty(min(stop - start, _PIECE), dtype=np.float64)
            sums = []
            for a0, b0 in _blocks(stop, start):
                e2, mx = 0.0, 0.0
                for a, b in _pieces(a0, b0):
                    v, d = vbuf[: b - a], dbuf[: b - a]
                    if final is not labels:
                        final[a:b] = labels[a:b]
                    values.take(labels[a:b], out=v, mode="wrap")
                    np.subtract(_work(flat[a:b], dtype), v, out=d, dtype=np.float64)
                    e2 += float(np.einsum("i,i->", d, d))
                    mx = max(mx, float(d.max()), -float(d.min()))
                sums.append((e2, mx))
            return sums

        err2, mx = 0.0, 0.0
        for e_part, m_part in _in_order(parallel.map_ranges(error, numel, _BLOCK)):
            err2 += e_part
            mx = max(mx, m_part)
        rel = math.sqrt(err2) / math.sqrt(self.norm2)
        recipe = dataclasses.replace(recipe, rel_error=rel, max_abs_error=mx)
        code = TensorCode(name, dtype, shape, values=Values.CODEBOOK, codebook=book,
                          codebook_dtype=cdt, indices=final, recipe=recipe)
        return code, 16 + size


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
