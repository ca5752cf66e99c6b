"""dcfmt.record: TensorCode -> record body -> TensorRecord -> ndarray (spec 4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt import dtypes
from dcfmt.binary import Cursor
from dcfmt.constants import ALIGNMENT, Layout, RecordKind, SectionKind, Values
from dcfmt.container import record_prefix
from dcfmt.dtypes import DType
from dcfmt.errors import EncodeError
from dcfmt.recipe import Recipe
from dcfmt.record import (
    EncodeOptions,
    TensorCode,
    check_name,
    decode_tensor,
    encode_tensor,
    parse_tensor,
    raw_padding,
)
from strategies import ALL_DTYPES, array_for, same_bits


def roundtrip(code: TensorCode, options: EncodeOptions = EncodeOptions(), *, at: int = 0):
    """Encode, parse as a record starting at file offset ``at`` (64-aligned), decode."""
    aligned, parts = encode_tensor(code, options)
    body = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    prefix = record_prefix(RecordKind.TENSOR, 2 if aligned else 0, len(body))
    cur = Cursor(body, at + len(prefix), overrun_rule="SEC-5")
    rec = parse_tensor(cur, offset=at, size=len(prefix) + len(body) + 4, aligned=aligned)
    assert rec.name == code.name and rec.dtype == code.dtype
    assert rec.shape == tuple(code.shape) and rec.layout == code.layout
    assert rec.values == code.values and rec.nnz == code.nnz
    if aligned:
        assert rec.raw_offset % ALIGNMENT == 0, "dense raw payloads are 64-byte aligned"
    out = decode_tensor(rec)
    for method in ("lockstep", "bitarray"):
        assert same_bits(decode_tensor(rec, method=method), out)
    return rec, out, aligned


def storage(arr: np.ndarray, dtype: DType) -> np.ndarray:
    return dtypes.to_storage(np.asarray(arr), dtype)


def test_tensor_code_properties():
    code = TensorCode("t", DType.FLOAT32, (3, 0, 2), raw=np.zeros(0, "<f4"))
    assert code.numel == 0 and code.nnz == 0
    code = TensorCode("t", DType.INT8, (), raw=np.array(7, np.int8))
    assert code.numel == 1 and code.nnz == 1
    rec, out, _ = roundtrip(code)
    assert out.shape == () and int(out) == 7 and rec.decoded_bytes == 1


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.label)
@pytest.mark.parametrize("layout", list(Layout), ids=lambda l: l.name)
@pytest.mark.parametrize("values", list(Values), ids=lambda v: v.name)
def test_every_dtype_layout_and_value_encoding(dtype, layout, values):
    rng = np.random.default_rng(int(dtype) * 10 + layout * 3 + values)
    shape = (7, 23)
    arr = storage(array_for(dtype, shape, rng), dtype)
    flat = arr.reshape(-1)
    numel = flat.size
    positions = None
    if layout is not Layout.DENSE:
        positions = np.flatnonzero(rng.random(numel) < 0.3)
    stored = flat if positions is None else flat[positions]
    kw = dict(layout=layout, values=values, positions=positions,
              index_bits=5 if layout is Layout.RELATIVE else None)
    if values is Values.RAW:
        code = TensorCode("w", dtype, shape, raw=stored, **kw)
    else:
        bits = stored.view(f"u{dtype.itemsize}") if dtype is not DType.BOOL else stored.view(np.uint8)
        book_bits, idx = np.unique(bits, return_inverse=True)
        book = book_bits.view(dtype.storage) if dtype is not DType.BOOL else book_bits.astype(bool)
        code = TensorCode("w", dtype, shape, codebook=book, codebook_dtype=dtype, indices=idx, **kw)
    _, out, aligned = roundtrip(code)
    want = code.reconstruct()
    assert same_bits(out, want)
    assert out.dtype == dtype.numpy
    assert aligned == (layout is Layout.DENSE and values is Values.RAW and arr.nbytes >= 64)
    if layout is Layout.DENSE:
        # dense layouts are lossless: every bit of the input comes back
        assert same_bits(np.asarray(out).view(np.uint8), arr.view(np.uint8))


@given(st.integers(0, 2**32 - 1), st.sampled_from(list(Layout)), st.integers(1, 16),
       st.integers(4, 12), st.integers(1, 16), st.integers(0, 5000), st.integers(1, 300))
def test_codebook_tensor_roundtrip_any_options(seed, layout, ib, chunk_log, max_code, numel, k):
    rng = np.random.default_rng(seed)
    positions = None
    nnz = numel
    if layout is not Layout.DENSE:
        positions = np.flatnonzero(rng.random(numel) < rng.random())
        nnz = len(positions)
    book = np.sort(rng.normal(size=k)).astype("<f4")
    idx = rng.integers(0, k, size=nnz) if k > 1 else None
    code = TensorCode("layer.weight", DType.FLOAT32, (numel,), layout=layout, values=Values.CODEBOOK,
                      positions=positions, index_bits=ib if layout is Layout.RELATIVE else None,
                      codebook=book, codebook_dtype=DType.FLOAT32, indices=idx,
                      recipe=Recipe(plan="test", seed=seed))
    rec, out, _ = roundtrip(code, EncodeOptions(chunk_log=chunk_log, max_code_length=max_code))
    assert same_bits(out, code.reconstruct())
    assert rec.recipe == Recipe(plan="test", seed=seed)
    if k == 1:
        assert rec.indices is None and SectionKind.INDICES not in rec.sections


@pytest.mark.parametrize("tensor,book", [
    (DType.FLOAT32, DType.FLOAT16), (DType.FLOAT32, DType.BFLOAT16), (DType.FLOAT64, DType.FLOAT32),
    (DType.FLOAT64, DType.FLOAT16), (DType.FLOAT64, DType.BFLOAT16),
])
def test_narrow_codebooks_widen_exactly(tensor, book):
    vals = np.array([-1.5, 0.0, 0.25, 3.0, 65504.0], dtype=np.float64)
    stored = dtypes.from_float64(vals, book)
    idx = np.array([0, 1, 2, 3, 4, 4, 3, 0])
    code = TensorCode("n", tensor, (8,), values=Values.CODEBOOK, codebook=stored, codebook_dtype=book,
                      indices=idx)
    _, out, _ = roundtrip(code)
    assert same_bits(out, code.reconstruct())
    want = np.array([-1.5, 0.0, 0.25, 3.0, 65504.0 if book is not DType.BFLOAT16 else 65536.0])[idx]
    assert np.array_equal(out.astype(np.float64), want)


def test_bfloat16_decodes_as_ml_dtypes_when_available():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bits = np.array([0x3F80, 0xC000, 0x7FC1, 0x8000], dtype=np.uint16)  # 1, -2, NaN payload, -0
    code = TensorCode("b", DType.BFLOAT16, (4,), raw=bits)
    _, out, _ = roundtrip(code)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert out.view(np.uint16).tolist() == bits.tolist()


def test_raw_padding_puts_payloads_on_64_byte_boundaries():
    from dcfmt.record import payload_offset

    for before in range(0, 300, 7):
        for payload in (64, 100, 127, 128, 16_000, 1 << 20):
            pad = raw_padding(before, payload)
            assert 0 <= pad < 128
            assert payload_offset(before, pad, payload) % 64 == 0
            assert all(payload_offset(before, p, payload) % 64 for p in range(pad))


@pytest.mark.parametrize("name_len", [1, 60, 61, 62, 63, 64, 120, 130])
def test_alignment_for_many_header_sizes(name_len):
    arr = np.arange(40, dtype="<f4")
    code = TensorCode("n" * name_len, DType.FLOAT32, (40,), raw=arr)
    for at in (0, 64, 128 * 3):
        rec, out, aligned = roundtrip(code, at=at)
        assert aligned and rec.raw_offset % 64 == 0
        assert np.array_equal(out, arr)
        view = decode_tensor(rec, copy=False)
        assert not view.flags.writeable and np.array_equal(view, arr)


# ---------------------------------------------------------------------------
# Names and writer duties (EncodeError)
# ---------------------------------------------------------------------------


def test_check_name():
    assert check_name("conv1.weight") == b"conv1.weight"
    assert check_name("ünïcødé/層") == "ünïcødé/層".encode()
    assert check_name("x" * 4096) == b"x" * 4096
    for bad in ["", "a\x00b", "tab\there", "nl\n", "\x7f", "\x1f", "\ud800", "x" * 4097, "é" * 2049]:
        with pytest.raises(EncodeError):
            check_name(bad)
    with pytest.raises(EncodeError):
        check_name(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        check_name(None)  # type: ignore[arg-type]


def _raw(name="t", dtype=DType.FLOAT32, shape=(4,), **kw):
    if "raw" not in kw:
        kw["raw"] = np.zeros(int(np.prod(shape)), dtype.storage)
    return TensorCode(name, dtype, shape, **kw)


@pytest.mark.parametrize("code", [
    _raw(shape=(1,) * 33, raw=np.zeros(1, "<f4")),
    _raw(shape=(2, -1), raw=np.zeros(0, "<f4")),
    _raw(raw=np.zeros(3, "<f4")),
    _raw(raw=None),
    _raw(layout=Layout.BITMAP, positions=np.array([2, 1]), raw=np.zeros(2, "<f4")),
    _raw(layout=Layout.BITMAP, positions=np.array([1, 1]), raw=np.zeros(2, "<f4")),
    _raw(layout=Layout.BITMAP, positions=np.array([4]), raw=np.zeros(1, "<f4")),
    _raw(layout=Layout.BITMAP, positions=np.array([-1]), raw=np.zeros(1, "<f4")),
    _raw(layout=Layout.BITMAP, positions=np.array([[0]]), raw=np.zeros(1, "<f4")),
    _raw(layout=Layout.RELATIVE, positions=np.array([0]), index_bits=0, raw=np.zeros(1, "<f4")),
    _raw(layout=Layout.RELATIVE, positions=np.array([0]), index_bits=17, raw=np.zeros(1, "<f4")),
    _raw(layout=Layout.RELATIVE, positions=np.array([0]), raw=np.zeros(1, "<f4")),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"), codebook_dtype=None, indices=[0] * 4),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f8"), codebook_dtype=DType.FLOAT64,
         indices=[0] * 4),
    _raw(dtype=DType.INT8, values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"),
         codebook_dtype=DType.FLOAT32, indices=[0] * 4),
    _raw(dtype=DType.FLOAT16, values=Values.CODEBOOK, codebook=np.zeros(2, "<u2"),
         codebook_dtype=DType.BFLOAT16, indices=[0] * 4),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(0, "<f4"), codebook_dtype=DType.FLOAT32),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(65537, "<f4"), codebook_dtype=DType.FLOAT32,
         indices=[0] * 4),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"), codebook_dtype=DType.FLOAT32,
         indices=[0] * 3),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"), codebook_dtype=DType.FLOAT32,
         indices=None),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"), codebook_dtype=DType.FLOAT32,
         indices=[0, 1, 2, 0]),
    _raw(values=Values.CODEBOOK, codebook=np.zeros(2, "<f4"), codebook_dtype=DType.FLOAT32,
         indices=[0, -1, 1, 0]),
    _raw(name="bad\x00name"),
    _raw(name=""),
])
def test_encode_rejects_what_the_format_cannot_express(code):
    with pytest.raises(EncodeError):
        encode_tensor(code)


def test_max_rank_and_zero_dims_are_valid():
    for shape in [(1,) * 32, (0,), (5, 0, 3), (0,) * 32, ()]:
        n = int(np.prod(shape)) if shape else 1
        code = TensorCode("r", DType.UINT8, shape, raw=np.arange(n, dtype=np.uint8))
        _, out, _ = roundtrip(code)
        assert out.shape == shape and out.dtype == np.uint8
