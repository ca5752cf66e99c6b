"""Hypothesis strategies shared by the test modules (zarr-python's habit).

Large arrays are drawn as a seed plus a few shape parameters and generated with
numpy, which keeps examples fast; the parameters still shrink to small cases.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from dcfmt.dtypes import DType

#: every element type, with the numpy dtype a test builds its input with
ALL_DTYPES = [
    DType.BOOL, DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16,
    DType.UINT32, DType.UINT64, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64,
]


def skewed_symbols(rng: np.random.Generator, n: int, alphabet: int, used: int,
                   skew: float) -> np.ndarray:
    """``n`` symbols below ``alphabet`` drawn from ``used`` of them with a Zipf-like skew."""
    used = max(1, min(used, alphabet))
    support = np.sort(rng.choice(alphabet, size=used, replace=False))
    p = 1.0 / np.arange(1, used + 1) ** skew
    p /= p.sum()
    return support[rng.choice(used, size=n, p=p)].astype(np.int64)


@st.composite
def huffman_cases(draw, max_n: int = 3000, max_alphabet: int = 4096):
    """(symbols, alphabet, chunk_log, max_length) for a Huffman round trip."""
    alphabet = draw(st.one_of(st.integers(1, 16), st.integers(1, max_alphabet)))
    n = draw(st.one_of(st.just(0), st.integers(1, 40), st.integers(1, max_n)))
    used = draw(st.one_of(st.just(1), st.just(2), st.integers(1, alphabet)))
    skew = draw(st.sampled_from([0.0, 0.7, 1.5, 3.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    chunk_log = draw(st.integers(4, 12))
    max_length = draw(st.integers(1, 16))
    symbols = skewed_symbols(np.random.default_rng(seed), n, alphabet, used, skew)
    return symbols, alphabet, chunk_log, max_length


@st.composite
def position_sets(draw, max_numel: int = 5000):
    """(positions, numel): strictly increasing flat positions of kept elements."""
    numel = draw(st.integers(1, max_numel))
    kind = draw(st.sampled_from(["random", "clustered", "edges", "empty", "full", "sparse-far"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "empty":
        pos = np.zeros(0, np.int64)
    elif kind == "full":
        pos = np.arange(numel, dtype=np.int64)
    elif kind == "edges":
        pos = np.unique(np.array([0, numel - 1] + list(rng.integers(0, numel, 3)), np.int64))
    elif kind == "sparse-far":
        k = draw(st.integers(1, 4))
        pos = np.unique(rng.integers(0, numel, k)).astype(np.int64)
    elif kind == "clustered":
        density = draw(st.floats(0.0, 1.0))
        mask = rng.random(numel) < density
        runs = np.repeat(rng.random((numel + 63) // 64) < 0.5, 64)[:numel]
        pos = np.flatnonzero(mask & runs).astype(np.int64)
    else:
        density = draw(st.sampled_from([0.001, 0.01, 0.05, 0.2, 0.5, 0.9]))
        pos = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
    return pos, numel


def array_for(dtype: DType, shape, rng: np.random.Generator, *, specials: bool = True) -> np.ndarray:
    """A random array of ``dtype`` (bfloat16 as ml_dtypes if available, else uint16 bits).

    Floats include NaN with payloads, +-inf, -0.0 and subnormals when ``specials``.
    """
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if dtype is DType.BOOL:
        flat = rng.random(n) < 0.3
    elif not dtype.is_float:
        info = np.iinfo(dtype.storage)
        flat = rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dtype.storage.newbyteorder("="))
        flat[rng.random(n) < 0.3] = 0
    else:
        bits_dtype = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
        flat_bits = rng.integers(0, np.iinfo(bits_dtype).max, size=n, endpoint=True, dtype=bits_dtype)
        flat_bits[rng.random(n) < 0.3] = 0
        if specials and n:
            specials_bits = {
                2: [0x7E01, 0xFE00, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x7FFF],
                4: [0x7FC00001, 0xFFC00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001],
                8: [0x7FF8000000000001, 0xFFF8000000000000, 0x7FF0000000000000,
                    0xFFF0000000000000, 0x8000000000000000, 0x0000000000000001],
            }[dtype.itemsize]
            if dtype is DType.BFLOAT16:
                specials_bits = [0x7FC1, 0xFFC0, 0x7F80, 0xFF80, 0x8000, 0x0001]
            idx = rng.integers(0, n, size=min(n, len(specials_bits)))
            flat_bits[idx] = np.array(specials_bits[: len(idx)], dtype=bits_dtype)
        if dtype is DType.BFLOAT16:
            flat = flat_bits.view(DType.BFLOAT16.numpy)
        else:
            flat = flat_bits.view(dtype.storage.newbyteorder("="))
    return flat.reshape(shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and -0.0 included)."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
    st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple),
    # maximum rank, at most 2**8 elements
    st.builds(lambda rank, twos: tuple(2 if i in twos else 1 for i in range(rank)),
              st.integers(30, 32), st.sets(st.integers(0, 31), max_size=8)),
)
