"""dcfmt.container: file header, record framing, metadata, index and trailer (spec 3)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dcfmt
from builders import header, trailer
from dcfmt import container
from dcfmt.binary import Cursor, uvar
from dcfmt.constants import MAGIC, RecordKind
from dcfmt.container import IndexEntry
from dcfmt.dtypes import DType
from dcfmt.errors import (
    ChecksumError,
    EncodeError,
    FormatError,
    LimitError,
    TruncatedError,
    UnsupportedFeatureError,
    VersionError,
)
from dcfmt.limits import DecodeLimits


def raises(cls, rule, fn, *args, words="", **kw):
    with pytest.raises(cls) as ei:
        fn(*args, **kw)
    assert type(ei.value) is cls, repr(ei.value)
    assert ei.value.rule == rule, ei.value
    assert words in ei.value.message, ei.value.message
    return ei.value


# ---------------------------------------------------------------------------
# Exact bytes
# ---------------------------------------------------------------------------


def test_header_exact_bytes():
    head = MAGIC + bytes([1, 1, 0, 0])
    assert container.encode_header() == head + struct.pack("<I", zlib.crc32(head))
    assert container.encode_header() == header(minor=1)
    assert container.encode_header(minor=0) == header()
    assert MAGIC == b"\x89DCZ\r\n\x1a\n"


def test_trailer_exact_bytes():
    assert container.encode_trailer(1234) == trailer(1234)
    assert container.encode_trailer(16) == (struct.pack("<Q", 16)
                                            + struct.pack("<I", zlib.crc32(struct.pack("<Q", 16)))
                                            + b"DCZE")


def test_minimal_file_exact_bytes():
    # header | index record (kind 3, flags 0, body "count 0") | trailer -> 40 bytes
    index = bytes([3, 0, 1, 0])
    want = header(minor=1) + index + struct.pack("<I", zlib.crc32(index)) + trailer(16)
    assert dcfmt.encode({}, plan="lossless") == want
    assert len(want) == 40
    # without grouped indices the writer writes a 1.0 file
    one_oh = dcfmt.encode({}, plan="lossless", options=dcfmt.EncodeOptions(group_indices=False))
    assert one_oh == header() + want[16:]
    assert dcfmt.decode(want) == {}


def test_one_tensor_file_exact_bytes():
    # tensor "a", int8 scalar 5, dense raw: the smallest possible tensor record
    body = uvar(1) + b"a" + bytes([DType.INT8, 0, 0, 0]) + bytes([6, 0, 1, 5])
    rec = bytes([1, 0, len(body)]) + body
    rec += struct.pack("<I", zlib.crc32(rec))
    entries = uvar(1) + bytes([1]) + uvar(16) + uvar(len(rec)) + uvar(1) + b"a" + bytes([2, 0])
    index = bytes([3, 0, len(entries)]) + entries
    index += struct.pack("<I", zlib.crc32(index))
    want = header(minor=1) + rec + index + trailer(16 + len(rec))
    assert dcfmt.encode({"a": np.int8(5)}, plan="lossless") == want
    out = dcfmt.decode(want)
    assert out["a"].dtype == np.int8 and out["a"].shape == () and int(out["a"]) == 5


# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------


def test_parse_header_accepts_minor_versions_and_optional_flags():
    for minor in (0, 1, 255):
        assert container.parse_header(header(minor=minor)).minor == minor
    for bit in range(8, 16):
        h = container.parse_header(header(flags=1 << bit))
        assert h.flags == 1 << bit and h.major == 1


@pytest.mark.parametrize("bit", range(8))
def test_unknown_critical_header_flag(bit):
    err = raises(UnsupportedFeatureError, "HDR-3", container.parse_header, header(flags=1 << bit))
    assert f"0x{1 << bit:02x}" in err.message and err.offset == 10


@pytest.mark.parametrize("major", [0, 2, 255])
def test_unsupported_major_version(major):
    err = raises(VersionError, "HDR-2", container.parse_header, header(major=major))
    assert f"{major}.0" in err.message


def test_header_crc():
    raises(ChecksumError, "HDR-4", container.parse_header, header(good_crc=False))


@pytest.mark.parametrize("prefix,looks", [
    (b"PK\x03\x04" + bytes(60), "zip archive"),
    (b"GGUF\x03\x00\x00\x00" + bytes(56), "GGUF"),
    (struct.pack("<Q", 120) + b'{"w":{"dtype":"F32"}}' + bytes(40), "safetensors"),
    (b"\x93NUMPY\x01\x00" + bytes(56), "numpy"),
    (b"\x80\x04\x95" + bytes(61), "pickle"),
    (b"\x89HDF\r\n\x1a\n" + bytes(56), "HDF5"),
])
def test_bad_magic_says_what_the_file_looks_like(prefix, looks):
    err = raises(FormatError, "HDR-1", container.parse_header, prefix, words="looks like")
    assert looks in err.message and err.offset == 0
    # the same through the public API
    with pytest.raises(FormatError) as ei:
        dcfmt.decode(prefix)
    assert ei.value.rule == "HDR-1" and looks in str(ei.value)


def test_bad_magic_without_a_guess():
    err = raises(FormatError, "HDR-1", container.parse_header, b"hello world, not a dcz!!")
    assert "looks like" not in err.message and "not a .dcz file" in err.message
    assert container.sniff(b"") is None
    assert container.sniff(struct.pack("<Q", 1 << 41) + b"{") is None


def test_short_header():
    raises(TruncatedError, "HDR-1", container.parse_header, MAGIC[:5])
    raises(TruncatedError, "HDR-1", container.parse_header, b"")
    raises(FormatError, "HDR-1", container.parse_header, b"GGUF")


# ---------------------------------------------------------------------------
# Trailer
# ---------------------------------------------------------------------------


def test_trailer_rules():
    assert container.parse_trailer(trailer(16), 100) == 16
    raises(FormatError, "TRL-1", container.parse_trailer, trailer(16, end=b"DCZF"), 100)
    raises(ChecksumError, "TRL-2", container.parse_trailer, trailer(16, good_crc=False), 100)
    raises(FormatError, "TRL-3", container.parse_trailer, trailer(15), 100)
    raises(FormatError, "TRL-3", container.parse_trailer, trailer(84), 100)
    raises(FormatError, "TRL-3", container.parse_trailer, trailer(1 << 63), 100)
    assert container.parse_trailer(trailer(83), 100) == 83


# ---------------------------------------------------------------------------
# Record flags
# ---------------------------------------------------------------------------


def test_record_flags():
    for kind in (1, 2, 3):
        container.check_record_flags(kind, 0, 16)
    container.check_record_flags(1, 2, 16)  # ALIGNED
    for bit in range(2, 8):
        raises(FormatError, "RCD-2", container.check_record_flags, 1, 1 << bit, 16)
    raises(FormatError, "RCD-1", container.check_record_flags, 0, 0, 16, words="kind 0")
    for kind in (4, 100, 255):
        raises(UnsupportedFeatureError, "RCD-1", container.check_record_flags, kind, 0, 16)
        assert container.check_record_flags(kind, 1, 16) is None  # optional: skipped
    for kind in (1, 2, 3):
        raises(FormatError, "RCD-2", container.check_record_flags, kind, 1, 16,
               words="must not be marked optional")


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


keys = st.text(min_size=1, max_size=12).filter(lambda k: not any(ord(c) < 32 or ord(c) == 127
                                                                 for c in k))


@given(st.dictionaries(keys, st.text(max_size=30), max_size=8))
def test_metadata_roundtrip_and_sorted(meta):
    meta = {k: v for k, v in meta.items() if _utf8(k) and _utf8(v)}
    body = container.encode_metadata(meta)
    cur = Cursor(body)
    assert container.parse_metadata(cur) == meta and cur.pos == len(body)
    assert list(container.parse_metadata(Cursor(body))) == sorted(meta, key=lambda k: k.encode())


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_metadata_values_are_inert_strings():
    meta = {"code": "__import__('os').system('x')", "nl": "a\nb\x00c", "empty": ""}
    assert container.parse_metadata(Cursor(container.encode_metadata(meta))) == meta


@pytest.mark.parametrize("meta", [
    {1: "x"}, {"x": 1}, {"x": None}, {"": "v"}, {"a\x00": "v"}, {"a\nb": "v"}, {"\x7f": "v"},
    {"\ud800": "v"}, {"k": "\udfff"},
])
def test_encode_metadata_rejects(meta):
    with pytest.raises(EncodeError):
        container.encode_metadata(meta)


def _meta(pairs, count=None):
    out = uvar(len(pairs) if count is None else count)
    for k, v in pairs:
        out += uvar(len(k)) + k + uvar(len(v)) + v
    return out


def _parse_meta(body, limits=DecodeLimits()):
    return container.parse_metadata(Cursor(body, 16, overrun_rule="MET-1"), limits)


def test_metadata_hostile():
    raises(FormatError, "MET-1", _parse_meta, _meta([(b"a", b"1")], count=5), words="cannot fit")
    raises(FormatError, "MET-1", _parse_meta, _meta([(b"b", b"1"), (b"a", b"2")]), words="sorted")
    raises(FormatError, "MET-1", _parse_meta, _meta([(b"a", b"1"), (b"a", b"2")]), words="unique")
    raises(FormatError, "MET-1", _parse_meta, _meta([(b"a", b"1")]) + b"\x00", words="unexpected")
    raises(FormatError, "MET-1", _parse_meta, uvar(1) + uvar(5) + b"ab")  # overrun
    raises(FormatError, "MET-2", _parse_meta, _meta([(b"", b"1"), (b"a", b"")]))
    raises(FormatError, "MET-2", _parse_meta, _meta([(b"a\tb", b"1")]))
    err = raises(FormatError, "MET-3", _parse_meta, _meta([(b"\xff", b"1")]), words="UTF-8")
    assert err.offset == 17
    err = raises(FormatError, "MET-3", _parse_meta, _meta([(b"k", b"\xed\xa0\x80")]))  # surrogate
    assert err.offset == 16 + 1 + 1 + 1 + 1
    raises(FormatError, "MET-3", _parse_meta, _meta([(b"k", b"\xc0\x80")]))  # overlong NUL
    raises(LimitError, "LIM-1", _parse_meta, _meta([(b"a", b""), (b"b", b""), (b"c", b"")]),
           DecodeLimits(max_metadata_entries=2))
    raises(LimitError, "LIM-1", _parse_meta, uvar(10**12))
    raises(FormatError, "PRI-1", _parse_meta, b"\x81\x00")


# ---------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------


def _entries():
    return [
        IndexEntry(RecordKind.METADATA, 16, 20),
        IndexEntry(RecordKind.TENSOR, 36, 30, "a", DType.FLOAT32, (2, 3)),
        IndexEntry(RecordKind.TENSOR, 128, 100, "b", DType.BOOL, ()),
        IndexEntry(9, 228, 7),  # an unknown optional record kind, of the minimum size
    ]


def _parse_index(body, index_offset=235, limits=DecodeLimits()):
    return container.parse_index(Cursor(body, index_offset + 3, overrun_rule="NDX-1"),
                                 index_offset, limits)


def test_index_roundtrip():
    assert _parse_index(container.encode_index(_entries())) == _entries()
    assert _parse_index(container.encode_index([]), 16) == []


def _edit(i, **changes):
    import dataclasses

    entries = _entries()
    entries[i] = dataclasses.replace(entries[i], **changes)
    return container.encode_index(entries)


def test_index_hostile():
    raises(LimitError, "LIM-1", _parse_index, container.encode_index(_entries()),
           235, DecodeLimits(max_tensors=3))
    raises(FormatError, "NDX-1", _parse_index, uvar(1000) + bytes(10), words="cannot fit")
    raises(FormatError, "NDX-1", _parse_index, container.encode_index(_entries()) + b"\x00",
           words="unexpected")
    raises(FormatError, "NDX-2", _parse_index, _edit(3, kind=0))
    raises(FormatError, "NDX-2", _parse_index, _edit(3, kind=RecordKind.INDEX))
    raises(FormatError, "FIL-3", _parse_index, _edit(3, kind=RecordKind.METADATA))
    # a record placed after a gap: only padding to the next multiple of 64 is allowed
    raises(FormatError, "NDX-3", _parse_index, _edit(1, offset=37, length=29))
    raises(FormatError, "NDX-3", _parse_index, _edit(2, offset=192, length=36))
    raises(FormatError, "NDX-3", _parse_index, _edit(2, offset=67), words="expected 66")
    raises(FormatError, "NDX-3", _parse_index, _edit(3, length=2))
    raises(FormatError, "NDX-3", _parse_index, _edit(3, length=6))  # below the minimum 7
    raises(FormatError, "NDX-3", _parse_index, _edit(3, length=8), words="overruns")
    raises(FormatError, "NDX-3", _parse_index, container.encode_index(_entries()), 240,
           words="records end at 235")
    raises(FormatError, "TEN-1", _parse_index, _edit(1, name=""))
    raises(FormatError, "TEN-1", _parse_index,
           container.encode_index(_entries()).replace(b"\x01a", b"\x01\xff"), words="UTF-8")
    raises(FormatError, "TEN-2", _parse_index, _edit(1, name="a\x1b"))
    raises(FormatError, "FIL-4", _parse_index, _edit(2, name="a"), words="duplicate")
    raises(LimitError, "LIM-1", _parse_index, _edit(1, name="x" * 20), 235,
           DecodeLimits(max_name_bytes=10))
    err = raises(UnsupportedFeatureError, "TEN-4", _parse_index, _edit(1, dtype=14))
    assert err.tensor == "a"
    raises(FormatError, "TEN-3", _parse_index, _edit(1, shape=(1,) * 33))
    assert _parse_index(_edit(1, shape=(1,) * 32))[1].shape == (1,) * 32  # maximum rank is valid
