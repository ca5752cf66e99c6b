"""dcfmt.dtypes: element types, bfloat16 handling, exact widening (spec 3.4, 7.3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt import dtypes
from dcfmt.dtypes import DType
from dcfmt.errors import EncodeError, UnsupportedFeatureError

ml_dtypes = pytest.importorskip("ml_dtypes")


def test_ml_dtypes_is_imported_only_when_a_bfloat16_tensor_needs_it():
    # importing ml_dtypes takes seconds on some machines: dcfmt, its converters
    # and a float32 round trip must not pay it
    code = ("import sys, numpy as np, dcfmt, dcfmt.converters\n"
            "data = dcfmt.encode({'w': np.ones(3, np.float32)})\n"
            "assert dcfmt.decode(data)['w'].dtype == np.float32\n"
            "print('ml_dtypes' in sys.modules)\n"
            "print(dcfmt.DType.BFLOAT16.numpy, 'ml_dtypes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "bfloat16", "True"]


def test_codes_and_properties():
    assert [int(d) for d in DType] == list(range(1, 14))
    assert DType.BFLOAT16.itemsize == 2 and DType.BFLOAT16.storage == np.dtype("<u2")
    assert DType.BFLOAT16.numpy == np.dtype(ml_dtypes.bfloat16)
    assert DType.FLOAT64.is_float and not DType.UINT64.is_float and DType.INT8.label == "int8"
    for code in (0, 14, 255):
        with pytest.raises(UnsupportedFeatureError) as ei:
            dtypes.from_code(code)
        assert ei.value.rule == "TEN-4"


def test_names_and_numpy_types():
    for alias, want in [("bf16", DType.BFLOAT16), (" FP16 ", DType.FLOAT16), ("half", DType.FLOAT16),
                        ("float", DType.FLOAT32), ("double", DType.FLOAT64), ("bool", DType.BOOL),
                        ("uint64", DType.UINT64)]:
        assert dtypes.from_name(alias) is want
    with pytest.raises(EncodeError):
        dtypes.from_name("complex64")
    for d in DType:
        assert dtypes.from_numpy(d.numpy) is d
    assert dtypes.from_numpy(np.dtype(">i2")) is DType.INT16
    for bad in ("c8", "O", "U3", "M8[s]", "V4", "f16" if hasattr(np, "float128") else "c16"):
        with pytest.raises(EncodeError):
            dtypes.from_numpy(np.dtype(bad))


def test_codebook_widening_table():
    allowed = {(t, c) for t in DType for c in DType if dtypes.codebook_dtype_allowed(t, c)}
    extra = {(t, c) for t, c in allowed if t != c}
    assert extra == {(DType.FLOAT32, DType.FLOAT16), (DType.FLOAT32, DType.BFLOAT16),
                     (DType.FLOAT64, DType.FLOAT16), (DType.FLOAT64, DType.BFLOAT16),
                     (DType.FLOAT64, DType.FLOAT32)}


@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=40))
def test_bfloat16_rounding_matches_ml_dtypes(values):
    x = np.array(values, dtype=np.float32)
    got = dtypes.from_float64(x.astype(np.float64), DType.BFLOAT16)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert got.tolist() == want.tolist()
    back = dtypes.to_float64(got, DType.BFLOAT16)
    assert np.array_equal(back, want.view(ml_dtypes.bfloat16).astype(np.float64))


def test_bfloat16_nan_stays_nan():
    bits = dtypes.from_float64(np.array([np.nan, -np.nan, 1.0]), DType.BFLOAT16)
    as_float = dtypes.to_float64(bits, DType.BFLOAT16)
    assert np.isnan(as_float[:2]).all() and as_float[2] == 1.0


def test_widen_is_exact():
    half = np.array([0.1, -65504.0, 6e-8], np.float16)
    assert np.array_equal(dtypes.widen(half, DType.FLOAT16, DType.FLOAT32), half.astype(np.float32))
    bf = np.array([0x3F80, 0xC2F7], np.uint16)
    assert dtypes.widen(bf, DType.BFLOAT16, DType.FLOAT64).tolist() == [1.0, -123.5]
    same = np.array([1.5], "<f4")
    assert dtypes.widen(same, DType.FLOAT32, DType.FLOAT32) is same


def test_to_storage():
    be = np.arange(3, dtype=">u4")
    s = dtypes.to_storage(be, DType.UINT32)
    assert s.dtype == np.dtype("<u4") and s.tolist() == [0, 1, 2]
    scalar = dtypes.to_storage(np.array(2.0, ml_dtypes.bfloat16), DType.BFLOAT16)
    assert scalar.shape == () and int(scalar) == 0x4000
