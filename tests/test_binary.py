"""dcfmt.binary: varints, the bounds-checked Cursor and bit-packed arrays (spec 2)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt.binary import Cursor, pack_uints, packed_size, read_packed, uvar, uvar_size, write_packed
from dcfmt.errors import FormatError, TruncatedError


@pytest.mark.parametrize("value,raw", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_uvar_exact_bytes(value, raw):
    assert uvar(value) == raw and uvar_size(value) == len(raw)
    cur = Cursor(raw)
    assert cur.uvar("v") == value and cur.remaining == 0


@given(st.integers(0, 2**64 - 1))
def test_uvar_roundtrip(value):
    raw = uvar(value)
    assert len(raw) == uvar_size(value) <= 10
    assert Cursor(raw + b"tail").uvar("v") == value


@pytest.mark.parametrize("value", [-1, 2**64, 2**70])
def test_uvar_range(value):
    with pytest.raises(OverflowError):
        uvar(value)


@pytest.mark.parametrize("raw,words", [
    (b"\x80\x00", "not minimal"), (b"\xff\x80\x00", "not minimal"),
    (b"\x80" * 9 + b"\x02", "not below 2**64"), (b"\x80" * 10 + b"\x01", "longer than 10"),
])
def test_bad_varints(raw, words):
    with pytest.raises(FormatError) as ei:
        Cursor(raw, 100).uvar("v")
    assert ei.value.rule == "PRI-1" and words in ei.value.message and ei.value.offset == 100


def test_cursor_primitives_and_overruns():
    data = struct.pack("<BHIQ", 1, 2, 3, 4) + b"abc"
    cur = Cursor(data, 50, tensor="t")
    assert (cur.u8("a"), cur.u16("b"), cur.u32("c"), cur.u64("d")) == (1, 2, 3, 4)
    assert cur.offset == 50 + 15 and cur.remaining == 3
    assert bytes(cur.take(2, "x")) == b"ab"
    with pytest.raises(FormatError) as ei:
        cur.done("thing", "XYZ-1")
    assert ei.value.rule == "XYZ-1" and "1 unexpected bytes" in ei.value.message
    with pytest.raises(FormatError) as ei:
        cur.u16("field")
    assert ei.value.rule == "RCD-5" and ei.value.tensor == "t" and ei.value.offset == 67
    for read in (lambda c: c.u32("f"), lambda c: c.u64("f"), lambda c: c.take(5, "f"),
                 lambda c: c.uvar("f")):
        with pytest.raises(TruncatedError) as ei:
            read(Cursor(b"\x80", overrun=TruncatedError, overrun_rule="FIL-1"))
        assert ei.value.rule == "FIL-1"
    sub = Cursor(b"0123456789", start=2, end=5)
    assert bytes(sub.take(3, "x")) == b"234" and sub.remaining == 0


def test_cursor_text():
    assert Cursor("héllo".encode()).text(6, "t", "R-1") == "héllo"
    for bad in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xe2\x82"):
        with pytest.raises(FormatError) as ei:
            Cursor(bad, 10).text(len(bad), "t", "R-1")
        assert ei.value.rule == "R-1" and "UTF-8" in ei.value.message


@given(st.lists(st.one_of(st.integers(0, 2**40), st.integers(0, 2**63 - 1)), max_size=50))
def test_packed_arrays_roundtrip(values):
    raw = write_packed(values)
    width = max(values).bit_length() if values else 0
    assert raw[0] == width and len(raw) == 1 + packed_size(len(values), width)
    cur = Cursor(raw)
    assert read_packed(cur, len(values), "p", "R-9", max_width=63).tolist() == values
    assert cur.remaining == 0
    assert pack_uints(values, width) == raw[1:]


def test_packed_array_rules():
    def rp(raw, count, max_width=63):
        return read_packed(Cursor(raw), count, "p", "R-9", max_width=max_width)

    assert rp(bytes([0]), 5).tolist() == [0] * 5
    assert rp(bytes([3, 0b101]), 1).tolist() == [5]
    for raw, count, words in [(bytes([4, 0b0101]), 1, "bit length"),   # 5 needs 3 bits
                              (bytes([3, 0b1101]), 1, "padding"),
                              (bytes([64]) + bytes(8), 1, "exceeds")]:
        with pytest.raises(FormatError) as ei:
            rp(raw, count)
        assert ei.value.rule == "R-9" and words in ei.value.message
    with pytest.raises(FormatError) as ei:
        rp(bytes([8, 1]), 2)
    assert ei.value.rule == "RCD-5"
    assert np.array_equal(rp(write_packed([7, 0, 3]), 3), [7, 0, 3])
