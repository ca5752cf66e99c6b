"""Element types of the format and their numpy representation (spec 3.4).

numpy has no bfloat16.  dcfmt represents bfloat16 data as its 16-bit patterns:
if the optional package ``ml_dtypes`` is installed, decoded bfloat16 tensors
come back with dtype ``ml_dtypes.bfloat16``; otherwise as ``uint16`` arrays of
bit patterns (the tensor's :class:`DType` still says ``BFLOAT16``).  Writers
accept either form: an ``ml_dtypes.bfloat16`` array, or a ``uint16`` array
together with ``dtype="bfloat16"``.
"""

from __future__ import annotations

import enum

import numpy as np

from .errors import EncodeError, UnsupportedFeatureError

_UNKNOWN = object()
_bf16: object = _UNKNOWN


def _bf16_numpy() -> np.dtype | None:
    """``ml_dtypes.bfloat16`` as a numpy dtype, or None without ml_dtypes.

    Imported on first use, not with dcfmt: importing ml_dtypes 0.7 takes
    ~2 s here (numpy 2.4), which every ``dcz`` command and every program that
    never meets a bfloat16 tensor would pay.
    """
    global _bf16
    if _bf16 is _UNKNOWN:
        try:  # optional: only changes how bfloat16 arrays are presented
            import ml_dtypes

            _bf16 = np.dtype(ml_dtypes.bfloat16)
        except ImportError:  # pragma: no cover - depends on the environment
            _bf16 = None
    return _bf16  # type: ignore[return-value]


class DType(enum.IntEnum):
    """Element type codes (spec 3.4, table "Element types")."""

    BOOL = 1
    INT8 = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    UINT8 = 6
    UINT16 = 7
    UINT32 = 8
    UINT64 = 9
    FLOAT16 = 10
    BFLOAT16 = 11
    FLOAT32 = 12
    FLOAT64 = 13

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        """True for the four floating-point types."""
        return self in _FLOATS

    @property
    def storage(self) -> np.dtype:
        """Little-endian numpy dtype of the stored bytes (bfloat16: its uint16 bits)."""
        return _STORAGE[self]

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype decoded arrays have (native byte order)."""
        if self is DType.BFLOAT16:
            bf16 = _bf16_numpy()
            return bf16 if bf16 is not None else np.dtype(np.uint16)
        return _STORAGE[self].newbyteorder("=")

    @property
    def label(self) -> str:
        """Lower-case name used in the CLI and JSON output, e.g. ``"float32"``."""
        return self.name.lower()


_ITEMSIZE = {
    DType.BOOL: 1, DType.INT8: 1, DType.INT16: 2, DType.INT32: 4, DType.INT64: 8,
    DType.UINT8: 1, DType.UINT16: 2, DType.UINT32: 4, DType.UINT64: 8,
    DType.FLOAT16: 2, DType.BFLOAT16: 2, DType.FLOAT32: 4, DType.FLOAT64: 8,
}
_FLOATS = frozenset({DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64})
_STORAGE = {
    DType.BOOL: np.dtype("?"), DType.INT8: np.dtype("i1"), DType.INT16: np.dtype("<i2"),
    DType.INT32: np.dtype("<i4"), DType.INT64: np.dtype("<i8"), DType.UINT8: np.dtype("u1"),
    DType.UINT16: np.dtype("<u2"), DType.UINT32: np.dtype("<u4"), DType.UINT64: np.dtype("<u8"),
    DType.FLOAT16: np.dtype("<f2"), DType.BFLOAT16: np.dtype("<u2"), DType.FLOAT32: np.dtype("<f4"),
    DType.FLOAT64: np.dtype("<f8"),
}
_BY_KIND = {
    (np.dtype(v).kind, np.dtype(v).itemsize): k
    for k, v in _STORAGE.items()
    if k is not DType.BFLOAT16
}

#: Codebook dtypes a float tensor may use besides its own: values that widen exactly (spec 7).
CODEBOOK_WIDENING = {
    DType.FLOAT32: frozenset({DType.FLOAT16, DType.BFLOAT16}),
    DType.FLOAT64: frozenset({DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32}),
}


def codebook_dtype_allowed(tensor: DType, codebook: DType) -> bool:
    """Whether a codebook stored as ``codebook`` may serve a tensor of type ``tensor``."""
    return codebook == tensor or codebook in CODEBOOK_WIDENING.get(tensor, ())


def from_code(code: int) -> DType:
    """The DType for a stored code; an unknown code is a critical unknown feature."""
    try:
        return DType(code)
    except ValueError:
        raise UnsupportedFeatureError(f"unknown element type code {code}", rule="TEN-4") from None


def from_name(name: str) -> DType:
    """Parse ``"float32"``, ``"bf16"``, ``"bool"`` ... into a DType."""
    key = name.strip().lower()
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32", "fp64": "float64", "double": "float64"}
    key = aliases.get(key, key)
    for d in DType:
        if d.label == key:
            return d
    raise EncodeError(f"unknown dtype name {name!r}")


def from_numpy(dtype: np.dtype) -> DType:
    """The DType of a numpy dtype; raises EncodeError for types the format lacks."""
    dtype = np.dtype(dtype)
    # an ml_dtypes array means ml_dtypes is loaded already: asking costs nothing
    if dtype.name == "bfloat16" and dtype == _bf16_numpy():
        return DType.BFLOAT16
    if dtype.kind in "biuf":
        found = _BY_KIND.get((dtype.kind, dtype.itemsize))
        if found is not None:
            return found
    raise EncodeError(
        f"numpy dtype {dtype} has no .dcz element type (supported: "
        + ", ".join(d.label for d in DType) + ")"
    )


def to_storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    """View or convert ``array`` to the little-endian storage dtype of ``dtype``.

    bfloat16 arrays (ml_dtypes) are viewed as their uint16 bits; big-endian input
    is byte-swapped; the result is C-contiguous.
    """
    # np.asarray(order="C") keeps 0-d arrays 0-d (ascontiguousarray would not)
    if dtype is DType.BFLOAT16 and array.dtype != np.uint16:
        array = np.asarray(array, order="C").view(np.uint16)
    return np.asarray(array, dtype=dtype.storage, order="C")


def to_float64(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Exact float64 copy of stored values (bfloat16 bits are widened)."""
    # converting signalling NaNs raises "invalid value" warnings; NaN stays NaN
    with np.errstate(invalid="ignore"):
        if dtype is DType.BFLOAT16:
            bits = np.asarray(values).view(np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32).astype(np.float64)
        return np.asarray(values).astype(np.float64)


def from_float64(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Round float64 values to ``dtype`` storage (round to nearest even)."""
    if dtype is DType.BFLOAT16:
        f32 = np.asarray(values, dtype=np.float64).astype(np.float32)
        bits = f32.view(np.uint32).astype(np.uint64)
        # round-to-nearest-even on the 16 dropped bits; NaN stays NaN
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        out = rounded.astype(np.uint16)
        nan = np.isnan(f32)
        if nan.any():
            out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
        return out
    return np.asarray(values, dtype=np.float64).astype(dtype.storage)


def widen(values: np.ndarray, source: DType, target: DType) -> np.ndarray:
    """Convert codebook values stored as ``source`` to ``target`` storage, exactly."""
    if source == target:
        return values
    if source is DType.BFLOAT16:
        f32 = (values.astype(np.uint32) << 16).view(np.float32)
        return f32.astype(target.storage)
    return values.astype(target.storage)
