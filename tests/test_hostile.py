"""Hostile files (RELIABILITY.md): every bad input raises the right DczError, and only that.

Files are built byte by byte (tests/builders.py) with every checksum recomputed,
so each case reaches the check it is aimed at.  Each case is decoded twice --
from bytes (whole-file) and from a stream with random short reads -- and both
must raise the same class with the same rule id at the same offset.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcfmt
from builders import (
    Rec,
    ShortReads,
    build,
    fix_record_crcs,
    header,
    metadata_body,
    packed,
    raw_padding,
    raw_tensor,
    record,
    section,
    stream_bytes,
    tensor_head,
    tensor_rec,
    trailer,
)
from dcfmt import huffman
from dcfmt.binary import uvar
from dcfmt.constants import RECORD_ALIGNED, Layout, RecordKind, SectionKind, Values
from dcfmt.container import encode_index
from dcfmt.dtypes import DType
from dcfmt.errors import (
    ChecksumError,
    DczError,
    FormatError,
    LimitError,
    TruncatedError,
    UnsupportedFeatureError,
    VersionError,
)
from dcfmt.limits import DEFAULT_LIMITS, DecodeLimits
from dcfmt.plan import FixedPlan

S = SectionKind
F32 = DType.FLOAT32


def lazy_load(data: bytes, **kw) -> dict:
    """Open ``data`` with the memory-mapped lazy loader and decode everything in it."""
    fd, path = tempfile.mkstemp(suffix=".dcz")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with dcfmt.open(path, **kw) as lazy:
            lazy.metadata()
            return {name: np.array(lazy[name]) for name in lazy.keys()}
    finally:
        os.unlink(path)


def expect(data: bytes, cls, rule: str, words: str = "", *, limits=DEFAULT_LIMITS,
           tensor: str | None = None, lazy: bool = True):
    """Both the whole-file and the streaming decoder raise exactly ``cls`` with ``rule``.

    The validator must report the same rule first, and the lazy loader must
    refuse the file too (possibly naming another rule: it reads the index first).
    """
    report = dcfmt.validate(data, limits=limits)
    assert not report.valid and report.findings[0].rule == rule, report.findings
    if lazy:  # lazy=False: a known gap of the lazy loader, see test_lazy_loader_gaps
        with pytest.raises(DczError):
            lazy_load(data, limits=limits)
    errors = []
    for source in (data, ShortReads(data, seed=len(data), max_read=13)):
        with pytest.raises(DczError) as ei:
            dcfmt.load(source, limits=limits)
        err = ei.value
        assert type(err) is cls, f"{type(source).__name__}: {err!r}"
        assert err.rule == rule, f"{type(source).__name__}: {err}"
        assert words in err.message, err.message
        if tensor is not None:
            assert err.tensor == tensor, err
        assert "\n" not in str(err)
        errors.append(err)
    if cls is not TruncatedError:  # a stream reports where it ended, a buffer what was missing
        assert errors[0].offset == errors[1].offset, (errors[0], errors[1])
    return errors[0]


def loads(data: bytes, **kw) -> dict:
    """Whole-file, streaming and lazy decoding agree, and the validator passes."""
    out = dcfmt.load(data, **kw)
    again = dcfmt.load(ShortReads(data, seed=1, max_read=9), **kw)
    lazy = lazy_load(data, **kw)
    assert list(out) == list(again) == list(lazy)
    for k in out:
        assert out[k].tobytes() == again[k].tobytes() == lazy[k].tobytes()
        assert out[k].dtype == lazy[k].dtype and out[k].shape == lazy[k].shape
    assert dcfmt.validate(data, **kw).valid
    return out


def t(sections: bytes, *, name="t", dtype=F32, shape=(4,), layout=0, values=0, flags=0) -> bytes:
    """A file holding one hand-made tensor record."""
    return build([tensor_rec(name, dtype, shape, layout, values, sections, flags=flags)])


RAW16 = section(S.RAW, bytes(16))  # the RAW section of a (4,) float32 tensor


def test_hand_built_files_are_valid():
    assert loads(t(RAW16))["t"].tolist() == [0.0] * 4
    big = raw_tensor("big", np.arange(64, dtype="<f4"), F32)
    assert big.flags == RECORD_ALIGNED
    out = loads(build([Rec(RecordKind.METADATA, metadata_body([("k", "v")])), big]))
    assert out["big"].tolist() == list(range(64))
    assert dcfmt.load_metadata(build([Rec(RecordKind.METADATA, metadata_body([("k", "v")]))])) \
        == {"k": "v"}


# ---------------------------------------------------------------------------
# Framing: header, trailer, truncation, appended bytes
# ---------------------------------------------------------------------------


def test_empty_file():
    expect(b"", TruncatedError, "HDR-1")


@pytest.mark.parametrize("prefix,looks", [
    (struct.pack("<Q", 60) + b'{"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
     + bytes(8), "safetensors"),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "zip archive"),
    (b"GGUF\x03\x00\x00\x00" + bytes(40), "GGUF"),
])
def test_other_formats_are_named(prefix, looks):
    err = expect(prefix, FormatError, "HDR-1", "looks like")
    assert looks in err.message and err.offset == 0


@pytest.mark.parametrize("major", [0, 2])
def test_version_0_and_2(major):
    data = header(major=major) + build([])[16:]
    err = expect(data, VersionError, "HDR-2")
    assert f"{major}.0" in err.message


def test_unknown_critical_header_flag_and_ignored_optional_flag():
    rest = build([tensor_rec("t", F32, (4,), sections=RAW16)])[16:]
    expect(header(flags=0x0001) + rest, UnsupportedFeatureError, "HDR-3")
    expect(header(flags=0x0080) + rest, UnsupportedFeatureError, "HDR-3")
    assert loads(header(flags=0x8100) + rest)["t"].shape == (4,)
    assert loads(header(minor=7) + rest)["t"].shape == (4,)
    expect(header(good_crc=False) + rest, ChecksumError, "HDR-4")


def test_trailer_rules():
    recs = [tensor_rec("t", F32, (4,), sections=RAW16)]
    good = build(recs)
    expect(good[:-4] + b"DCZX", FormatError, "TRL-1")
    expect(build(recs, trailer_bytes=trailer(0, good_crc=False)), ChecksumError, "TRL-2")
    expect(build(recs, trailer_offset=5), FormatError, "TRL-3", "outside")
    expect(build(recs, trailer_offset=len(good) - 16), FormatError, "TRL-3", "outside")
    expect(build(recs, trailer_offset=16), FormatError, "TRL-3", "trailer points at")
    expect(good[:-16], TruncatedError, "FIL-1")


@pytest.mark.parametrize("extra", [b"\x00", b"DCZE", bytes(100)])
def test_bytes_appended(extra):
    good = build([tensor_rec("t", F32, (4,), sections=RAW16)])
    err = expect(good + extra, FormatError, "FIL-2")
    assert err.offset == len(good)


def test_a_file_appended_to_itself():
    good = dcfmt.encode({"w": np.ones(10)}, plan="lossless")
    expect(good + good, FormatError, "FIL-2")


def _small_file() -> bytes:
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(8, 8)) * 0.05).astype(np.float32)
    w[np.abs(w) < 0.04] = 0
    return dcfmt.encode({"a": w, "b": np.array([1, 0, 2], np.int8), "c": np.float16(1.5)},
                        plan=FixedPlan(bits=2), metadata={"m": "v"})


SMALL = _small_file()


def test_every_prefix_is_truncated():
    assert len(SMALL) < 400
    for n in range(len(SMALL)):
        cut = SMALL[:n]
        rule = "HDR-1" if n < 16 else "FIL-1"  # a prefix of the magic is a truncated header
        with pytest.raises(TruncatedError) as ei:
            dcfmt.load(cut)
        assert ei.value.rule == rule
        with pytest.raises(TruncatedError) as ei:
            dcfmt.load(ShortReads(cut, seed=n, max_read=5))
        assert ei.value.rule == rule


def test_every_single_bit_flip_is_detected():
    out = dcfmt.load(SMALL)
    assert sorted(out) == ["a", "b", "c"]
    kinds = set()
    for i in range(len(SMALL)):
        for bit in range(8):
            bad = bytearray(SMALL)
            bad[i] ^= 1 << bit
            with pytest.raises(DczError) as ei:
                dcfmt.load(bytes(bad))
            kinds.add(type(ei.value))
    # magic, version, checksums and framing all show up
    assert {FormatError, VersionError, ChecksumError} <= kinds


def test_every_third_bit_flip_is_detected_when_streaming():
    for i in range(0, len(SMALL), 3):
        bad = bytearray(SMALL)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(DczError):
            dcfmt.load(ShortReads(bytes(bad), seed=i, max_read=7))


# ---------------------------------------------------------------------------
# Corruption behind valid checksums (fuzzing with CRCs fixed)
# ---------------------------------------------------------------------------


def _zoo() -> bytes:
    rng = np.random.default_rng(5)
    pruned = (rng.normal(size=(40, 40)) * 0.05).astype(np.float32)
    pruned[np.abs(pruned) < 0.06] = 0
    mask = np.zeros(300, bool)
    mask[::3] = True
    tensors = {"pruned": pruned, "dense": (rng.normal(size=(30,)) * 0.1).astype(np.float32),
               "mask": mask, "raw": rng.normal(size=(20,)), "s": np.int16(-3),
               "e": np.zeros((0, 2), np.uint8), "idx": rng.integers(0, 3, 900).astype(np.int8)}
    return dcfmt.encode(tensors, plan=FixedPlan(bits=3), metadata={"a": "1", "b": "2"},
                        options=dcfmt.EncodeOptions(chunk_log=4, max_code_length=6))


ZOO = _zoo()


def _outcome(source):
    try:
        out = dcfmt.load(source)
    except DczError as err:
        return (type(err).__name__, err.rule, err.offset, err.tensor)
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in out.items()}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(16, len(ZOO) - 17), st.integers(0, 255)), min_size=1,
                max_size=3), st.integers(0, 2**16))
def test_corrupt_bodies_with_fixed_checksums_raise_only_dczerror(edits, seed):
    bad = bytearray(ZOO)
    for pos, value in edits:
        bad[pos] = value
    data = fix_record_crcs(bytes(bad))
    whole = _outcome(data)  # anything but a DczError propagates and fails the test
    streamed = _outcome(ShortReads(data, seed=seed, max_read=11))
    if isinstance(whole, tuple) and whole[0] == "TruncatedError":
        # a stream reports where it ended, a buffer what was missing
        assert streamed[:2] == whole[:2]
    else:
        assert whole == streamed
    report = dcfmt.validate(data)
    if isinstance(whole, dict):  # still valid: every decoder agrees
        assert report.valid, report.findings
        lazy = lazy_load(data)
        assert {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in lazy.items()} == whole
    else:  # validate fails exactly when a full decode fails, on the same rule
        assert not report.valid and report.findings[0].rule == whole[1]


def test_fix_record_crcs_is_the_identity_on_valid_files():
    assert fix_record_crcs(ZOO) == ZOO and fix_record_crcs(SMALL) == SMALL


# ---------------------------------------------------------------------------
# Record framing (RCD-*), varints (PRI-1)
# ---------------------------------------------------------------------------


def test_record_kind_zero_where_a_record_must_start():
    meta = Rec(RecordKind.METADATA, metadata_body([("k", "v" * 37)]))
    assert len(record(meta.kind, 0, meta.body)) == 48  # the next record starts at 64
    data = header() + record(meta.kind, 0, meta.body) + bytes(20)
    expect(data, FormatError, "RCD-1", "kind 0")


def test_unknown_record_kinds():
    good = tensor_rec("t", F32, (4,), sections=RAW16)
    expect(build([Rec(9, b"future")]), UnsupportedFeatureError, "RCD-1", "critical record kind 9",
           lazy=False)
    out = loads(build([Rec(9, b"future", flags=1), good, Rec(255, b"", flags=1)]))
    assert list(out) == ["t"]


def test_record_flags():
    good = tensor_rec("t", F32, (4,), sections=RAW16)
    good.flags = 0x04
    expect(build([good]), FormatError, "RCD-2", "reserved")
    good.flags = 0x01
    expect(build([good]), FormatError, "RCD-2", "optional")
    expect(build([Rec(RecordKind.METADATA, b"\x00", flags=1)]), FormatError, "RCD-2")


def test_record_checksum():
    rec = tensor_rec("t", F32, (4,), sections=RAW16)
    rec.good_crc = False
    err = expect(build([rec]), ChecksumError, "RCD-3")
    assert "CRC-32" in err.message


def test_alignment_rules():
    big = np.arange(64, dtype="<f4")
    # non-zero padding before an aligned record
    r = raw_tensor("big", big, F32)
    r.pad = bytes(1) + b"\x01" + bytes(46)
    expect(build([r]), FormatError, "RCD-4", "padding bytes are not zero")
    # padding before a record that is not ALIGNED
    r = tensor_rec("t", F32, (4,), sections=RAW16)
    r.pad = bytes(48)
    expect(build([r]), FormatError, "RCD-4", "not ALIGNED")
    # an ALIGNED record at an offset that is not a multiple of 64
    r = raw_tensor("big", big, F32)
    r.pad = b""
    expect(build([r]), FormatError, "RCD-4", "not a multiple of 64")
    # metadata and index records are never ALIGNED
    expect(build([Rec(RecordKind.METADATA, b"\x00", flags=RECORD_ALIGNED)]), FormatError,
           "RCD-4", "metadata record must not be ALIGNED", lazy=False)
    expect(build([], index_flags=RECORD_ALIGNED), FormatError, "RCD-4", "index record")


def test_aligned_flag_must_match_the_content():
    # a small dense raw payload must not be ALIGNED, a large one must be
    expect(build([raw_tensor("s", np.arange(4, dtype="<f4"), F32, aligned=True)]), FormatError,
           "RCD-4", "ALIGNED flag is 1, must be 0", tensor="s")
    expect(build([raw_tensor("b", np.arange(64, dtype="<f4"), F32, aligned=False)]), FormatError,
           "RCD-4", "ALIGNED flag is 0, must be 1", tensor="b")


@pytest.mark.parametrize("length,words", [
    (b"\x84\x00", "not minimal"),
    (b"\xff" * 9 + b"\x02", "not below 2**64"),
    (b"\xff" * 10, "longer than 10 bytes"),
])
def test_bad_varints_in_record_framing(length, words):
    expect(header() + bytes([RecordKind.TENSOR, 0]) + length + bytes(64), FormatError, "PRI-1",
           words)


def test_non_minimal_varint_inside_a_record():
    head = uvar(1) + b"t" + bytes([F32, 1]) + b"\x84\x00" + bytes([0, 0])
    data = build([Rec(RecordKind.TENSOR, head + RAW16, name="t", dtype=F32, shape=(4,))])
    expect(data, FormatError, "PRI-1", tensor="t")


# ---------------------------------------------------------------------------
# Tensor header (TEN-*), limits (LIM-1)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,rule,words", [
    (b"", "TEN-1", "empty"),
    (b"\xff\xfe", "TEN-1", "UTF-8"),
    (b"a\xed\xa0\x80", "TEN-1", "UTF-8"),     # a surrogate
    (b"a\x00b", "TEN-2", "U+0000"),
    (b"line\nbreak", "TEN-2", "U+000A"),
    (b"del\x7f", "TEN-2", "U+007F"),
])
def test_bad_tensor_names(name, rule, words):
    body = tensor_head(name, F32, (4,)) + RAW16
    expect(build([Rec(RecordKind.TENSOR, body, name="x", dtype=F32, shape=(4,))]), FormatError,
           rule, words)


def test_name_longer_than_the_limit():
    body = tensor_head("n" * 5000, F32, (4,)) + RAW16
    expect(build([Rec(RecordKind.TENSOR, body, name="x", dtype=F32, shape=(4,))]), LimitError,
           "LIM-1", "max_name_bytes")
    ok = build([tensor_rec("n" * 4096, F32, (4,), sections=RAW16)])
    assert list(loads(ok)) == ["n" * 4096]
    expect(ok, LimitError, "LIM-1", limits=DecodeLimits(max_name_bytes=100))


def test_path_like_names_are_just_names():
    names = ["../../etc/passwd", "/abs", "C:\\x", "a/b/c", " ", "名前"]
    out = loads(build([tensor_rec(n, F32, (4,), sections=RAW16) for n in names]))
    assert list(out) == names


def test_duplicate_tensor_names():
    recs = [tensor_rec("w", F32, (4,), sections=RAW16), tensor_rec("w", F32, (4,), sections=RAW16)]
    err = expect(build(recs), FormatError, "FIL-4", "duplicate", tensor="w")
    assert err.offset == 16 + len(record(1, 0, recs[0].body))


@pytest.mark.parametrize("code", [0, 14, 99, 255])
def test_unknown_dtype(code):
    expect(t(RAW16, dtype=code), UnsupportedFeatureError, "TEN-4", f"type code {code}", tensor="t")


def test_rank():
    expect(t(RAW16, shape=(1,) * 33), FormatError, "TEN-3", "rank 33")
    assert loads(t(RAW16, shape=(1,) * 31 + (4,)))["t"].shape == (1,) * 31 + (4,)


@pytest.mark.parametrize("layout,values,rule", [(3, 0, "TEN-5"), (255, 0, "TEN-5"), (0, 2, "TEN-5")])
def test_unknown_layout_or_value_encoding(layout, values, rule):
    expect(t(RAW16, layout=layout, values=values), UnsupportedFeatureError, rule, tensor="t")


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("shape,dtype", [
    ((2**63, 2**63, 2**64 - 1), F32),
    ((2**62,), F32),                      # exactly 2**64 bytes
    ((2**32, 2**32), DType.BOOL),
    ((2**61 + 1,) , DType.FLOAT64),
])
def test_dims_whose_byte_size_reaches_2_64_are_refused_before_allocating(shape, dtype):
    data = t(RAW16, shape=shape, dtype=dtype)
    nbytes = DType(dtype).itemsize
    for d in shape:
        nbytes *= d
    err = expect(data, FormatError, "TEN-6", "not below 2**64", tensor="t")
    assert str(nbytes) in err.message

    def run():
        with pytest.raises(FormatError):
            dcfmt.load(data)
    assert _peak(run) < 1 << 20


def test_dims_just_below_2_64_hit_the_size_limit():
    data = t(RAW16, shape=(2**62 - 1,), dtype=F32)
    expect(data, LimitError, "LIM-1", "decoded tensor size", tensor="t")


def test_decompression_bomb():
    # a relative layout with nothing kept declaring 2**30 float32 (4 GiB) in ~40 bytes
    secs = section(S.RELATIVE, bytes([1]) + uvar(0) + uvar(0)) + section(S.RAW, b"")
    data = t(secs, shape=(2**30,), layout=Layout.RELATIVE)
    assert len(data) < 120
    expect(data, LimitError, "LIM-1", "expands", tensor="t")

    def run():
        with pytest.raises(LimitError):
            dcfmt.load(data)
    assert _peak(run) < 1 << 20
    # above max_tensor_bytes it is the size limit that stops it
    expect(t(secs, shape=(2**40,), layout=Layout.RELATIVE), LimitError, "LIM-1",
           "decoded tensor size")
    # the same shape of record at a plausible size decodes (zeros)
    out = loads(t(secs, shape=(1000,), layout=Layout.RELATIVE))
    assert out["t"].shape == (1000,) and not out["t"].any()


def test_huge_record_length_is_refused_before_reading():
    data = header() + bytes([RecordKind.TENSOR, 0]) + uvar(2**40) + bytes(100)
    expect(data, LimitError, "LIM-1", "max_record_bytes")
    data = header() + bytes([RecordKind.METADATA, 0]) + uvar(2**30) + bytes(100)
    expect(data, LimitError, "LIM-1", "max_metadata_bytes")


def test_huge_record_on_a_stream_costs_what_arrived_not_what_was_declared():
    data = header() + bytes([RecordKind.TENSOR, 0]) + uvar(2**35) + bytes(1000)
    expect(data, TruncatedError, "FIL-1")

    def stream():
        with pytest.raises(TruncatedError):
            dcfmt.load(io.BytesIO(data))

    def whole():
        with pytest.raises(TruncatedError):
            dcfmt.load(data)
    assert _peak(whole) < 1 << 20
    assert _peak(stream) < 40 << 20  # one 16 MiB read buffer, not 32 GiB


def test_limits_on_counts_and_sizes():
    meta = Rec(RecordKind.METADATA, metadata_body([("key", "v" * 30)]))
    recs = [meta, tensor_rec("a", F32, (4,), sections=RAW16), tensor_rec("b", F32, (4,), sections=RAW16)]
    data = build(recs)
    assert list(loads(data)) == ["a", "b"]
    expect(data, LimitError, "LIM-1", "max_metadata_bytes", limits=DecodeLimits(max_metadata_bytes=20),
           lazy=False)
    expect(data, LimitError, "LIM-1", "max_index_bytes", limits=DecodeLimits(max_index_bytes=10))
    expect(data, LimitError, "LIM-1", "max_tensors", limits=DecodeLimits(max_tensors=2))
    # max_record_bytes bounds what a streaming reader buffers; a memory map buffers nothing
    expect(data, LimitError, "LIM-1", "max_record_bytes", limits=DecodeLimits(max_record_bytes=10),
           lazy=False)
    expect(data, LimitError, "LIM-1", "max_tensor_bytes", limits=DecodeLimits(max_tensor_bytes=8))
    expect(data, LimitError, "LIM-1", "max_metadata_entries",
           limits=DecodeLimits(max_metadata_entries=0))
    # max_total_bytes bounds one load(); the lazy loader decodes tensors one at a time
    expect(data, LimitError, "LIM-1", "max_total_bytes", limits=DecodeLimits(max_total_bytes=20),
           lazy=False)


# ---------------------------------------------------------------------------
# Metadata (MET-*), placement (FIL-3), index (NDX-*)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pairs,rule,words", [
    ([("a", "1"), ("a", "2")], "MET-1", "unique"),
    ([("b", "1"), ("a", "2")], "MET-1", "sorted"),
    ([(b"\xff", "1")], "MET-3", "UTF-8"),
    ([("k", b"\xc3")], "MET-3", "UTF-8"),
    ([("a\x01", "1")], "MET-2", "control"),
    ([("", "1")], "MET-2", "empty"),
])
def test_bad_metadata(pairs, rule, words):
    expect(build([Rec(RecordKind.METADATA, metadata_body(pairs))]), FormatError, rule, words)


def test_metadata_overrun_and_trailing_bytes():
    expect(build([Rec(RecordKind.METADATA, uvar(1) + uvar(1) + b"k" + uvar(9) + b"v")]),
           FormatError, "MET-1")
    expect(build([Rec(RecordKind.METADATA, metadata_body([("k", "v")]) + b"\x00")]), FormatError,
           "MET-1", "unexpected")
    expect(build([Rec(RecordKind.METADATA, uvar(1000))]), FormatError, "MET-1", "cannot fit")


def test_metadata_that_looks_like_code_is_inert():
    meta = {"__reduce__": "os.system('rm -rf /')", "json": '{"a": NaN}', "big": "9" * 100_000}
    data = dcfmt.encode({"x": np.ones(2)}, metadata=meta)
    assert dcfmt.load_metadata(data) == meta


def test_metadata_must_be_first():
    recs = [tensor_rec("t", F32, (4,), sections=RAW16), Rec(RecordKind.METADATA, b"\x00")]
    expect(build(recs), FormatError, "FIL-3")
    recs = [Rec(RecordKind.METADATA, b"\x00"), Rec(RecordKind.METADATA, b"\x00")]
    expect(build(recs), FormatError, "FIL-3")


def test_index_must_agree_with_the_records():
    recs = [tensor_rec("a", F32, (4,), sections=RAW16), tensor_rec("b", F32, (4,), sections=RAW16)]
    err = expect(build(recs, index_entries=lambda es: es[:1],
                       index_body=lambda es: encode_index(es)), FormatError, "NDX-3")
    assert "records end" in err.message or "overruns" in err.message

    def swap_shape(es):
        import dataclasses
        es[1] = dataclasses.replace(es[1], shape=(2, 2))
        return es
    expect(build(recs, index_entries=swap_shape), FormatError, "NDX-4", "index entry 1")

    def rename(es):
        import dataclasses
        es[0] = dataclasses.replace(es[0], name="z")
        return es
    expect(build(recs, index_entries=rename), FormatError, "NDX-4")
    # one entry spanning both records tiles the file, but the file holds two records

    def merged(es):
        import dataclasses
        return [dataclasses.replace(es[0], kind=9, length=es[0].length + es[1].length, name=None,
                                    dtype=None, shape=None)]
    expect(build(recs, index_entries=merged), FormatError, "NDX-4", "index lists 1 records",
           lazy=False)
    expect(build(recs, index_body=lambda es: encode_index(es) + b"\x00"), FormatError, "NDX-1")
    expect(build(recs, index_body=uvar(3) + bytes(4)), FormatError, "NDX-1", "cannot fit")
    expect(build(recs, index_body=b""), FormatError, "NDX-1")

    def dup(es):
        import dataclasses
        es[1] = dataclasses.replace(es[1], name="a")
        return es
    expect(build(recs, index_entries=dup), FormatError, "FIL-4", "duplicate")


# ---------------------------------------------------------------------------
# Sections (SEC-*), values (VAL-*)
# ---------------------------------------------------------------------------


RECIPE = section(S.RECIPE, b"", flags=1)


@pytest.mark.parametrize("secs,cls,rule,words", [
    (RAW16 + RECIPE, FormatError, "SEC-1", "ascending"),
    (RAW16 + RAW16, FormatError, "SEC-1", "once each"),
    (section(0, b"", flags=1) + RAW16, FormatError, "SEC-1", ""),
    (section(S.RAW, bytes(16), flags=2), FormatError, "SEC-2", "reserved"),
    (section(S.RAW, bytes(16), flags=0x80), FormatError, "SEC-2", "reserved"),
    (section(S.RECIPE, b"") + RAW16, FormatError, "SEC-2", "optional flag"),
    (section(S.RAW, bytes(16), flags=1), FormatError, "SEC-2", "optional flag"),
    (RAW16 + section(7, b"xyz"), UnsupportedFeatureError, "SEC-3", "critical section kind 7"),
    (b"", FormatError, "SEC-4", "missing ['RAW']"),
    (section(S.BITMAP, uvar(4) + b"\x0f") + RAW16, FormatError, "SEC-4", "unexpected ['BITMAP']"),
    (section(S.RAW, bytes(16), length=100), FormatError, "RCD-5", "needs 100 bytes"),
    (section(S.RAW, bytes(15)), FormatError, "VAL-5", "holds 15 bytes"),
    (section(S.RAW, bytes(20)), FormatError, "VAL-5", "holds 20 bytes"),
    (RAW16 + b"\x06", FormatError, "RCD-5", "section flags"),  # a section header cut short
])
def test_section_rules(secs, cls, rule, words):
    expect(t(secs), cls, rule, words, tensor="t")


def test_unknown_optional_sections_and_recipes_are_fine():
    rec = dcfmt.Recipe(plan="hand", seed=3).to_bytes()
    out = loads(t(section(S.RECIPE, rec, flags=1) + RAW16 + section(9, b"later", flags=1)))
    assert out["t"].tolist() == [0.0] * 4
    with dcfmt.Reader(t(section(S.RECIPE, rec, flags=1) + RAW16)) as r:
        (only,) = list(r.records())
    assert only.recipe == dcfmt.Recipe(plan="hand", seed=3)


def test_bad_recipe_inside_a_file():
    expect(t(section(S.RECIPE, bytes([8, 1, 2]), flags=1) + RAW16), FormatError, "RCP-3", tensor="t")
    expect(t(section(S.RECIPE, bytes([3, 4]) + bytes(4) + bytes([2, 1, 1]), flags=1) + RAW16),
           FormatError, "RCP-1")
    expect(t(section(S.RECIPE, bytes([2, 5, 1]), flags=1) + RAW16), FormatError, "RCP-2")
    expect(t(section(S.RECIPE, bytes([2]), flags=1) + RAW16), FormatError, "SEC-5")


def _book(dtype, values: bytes, k: int | None = None) -> bytes:
    n = len(values) // DType(dtype).itemsize if k is None else k
    return section(S.CODEBOOK, bytes([dtype]) + uvar(n) + values)


def _indices(symbols, k) -> bytes:
    return section(S.INDICES, huffman.encode_stream(np.asarray(symbols), k, chunk_log=4))


CB = dict(values=Values.CODEBOOK)


def test_valid_codebook_records():
    book = np.array([-1.0, 2.5], "<f4").tobytes()
    out = loads(t(_book(F32, book) + _indices([0, 1, 1, 0], 2), **CB))
    assert out["t"].tolist() == [-1.0, 2.5, 2.5, -1.0]
    out = loads(t(_book(F32, np.array([7.0], "<f4").tobytes()), **CB))  # k = 1: no indices
    assert out["t"].tolist() == [7.0] * 4
    half = np.array([0.5, -2.0], "<f2").tobytes()
    out = loads(t(_book(DType.FLOAT16, half) + _indices([1, 1, 0, 1], 2), **CB))
    assert out["t"].dtype == np.float32 and out["t"].tolist() == [-2.0, -2.0, 0.5, -2.0]


@pytest.mark.parametrize("secs,dtype,cls,rule,words", [
    (_book(DType.BOOL, bytes([0, 2])) + _indices([0, 1, 1, 0], 2), DType.BOOL, FormatError, "VAL-1",
     "bool codebook"),
    (_book(DType.FLOAT64, bytes(16)) + _indices([0, 1, 1, 0], 2), F32, FormatError, "VAL-2",
     "float64 codebook cannot serve a float32"),
    (_book(F32, bytes(8)) + _indices([0, 1, 1, 0], 2), DType.INT8, FormatError, "VAL-2", ""),
    (_book(DType.BFLOAT16, bytes(4)) + _indices([0, 1, 1, 0], 2), DType.FLOAT16, FormatError,
     "VAL-2", ""),
    (_book(F32, b"", k=0), F32, FormatError, "VAL-3", "codebook size 0"),
    (_book(F32, b"", k=65537), F32, FormatError, "VAL-3", "65537"),
    (_book(F32, bytes(4), k=2) + _indices([0, 1, 1, 0], 2), F32, FormatError, "SEC-5", ""),
    (section(S.CODEBOOK, bytes([99]) + uvar(1) + bytes(4)), F32, UnsupportedFeatureError, "TEN-4",
     "type code 99"),
    (_book(F32, bytes(8)) + _indices([0, 1, 1], 2), F32, FormatError, "VAL-4", "3 codebook indices"),
    (_book(F32, bytes(4)) + _indices([0, 0, 0, 0], 1), F32, FormatError, "SEC-4", "2+ entries"),
    (_indices([0, 1, 1, 0], 2), F32, FormatError, "SEC-4", "2+ entries"),
    (_book(F32, bytes(8)), F32, FormatError, "SEC-4", "missing ['INDICES']"),
    (section(S.CODEBOOK, bytes([F32]) + uvar(2) + bytes(9)) + _indices([0, 1, 1, 0], 2), F32,
     FormatError, "SEC-5", "unexpected bytes"),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1, 1], 4, 4, b"\x00")), F32,
     FormatError, "HUF-2", ""),
    (_book(F32, bytes(12)) + section(S.INDICES, stream_bytes(4, [1, 1, 1], 4, 4, b"\x00")), F32,
     FormatError, "HUF-5", "over-subscribed"),
    (_book(F32, bytes(12)) + section(S.INDICES, stream_bytes(4, [1, 2], 4, 4, b"\x00")), F32,
     FormatError, "HUF-5", "incomplete"),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [0, 2], 4, 8, b"\x00")), F32,
     FormatError, "HUF-6", ""),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1], 4, 3, b"\x00")), F32,
     FormatError, "HUF-8", ""),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1], 4, 4, b"")), F32,
     FormatError, "SEC-5", "payload"),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1], 4, 4, b"\xf0")), F32,
     FormatError, "HUF-10", ""),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1], 4, 4, b"\x00", max_len=2)),
     F32, FormatError, "HUF-1", ""),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [1, 1], 3, 4, b"\x00")), F32,
     FormatError, "HUF-7", ""),
    (_book(F32, bytes(8)) + section(S.INDICES, stream_bytes(4, [0, 1], 4, 4, b"\x04")), F32,
     FormatError, "HUF-11", "chunk 0"),
])
def test_codebook_and_index_rules(secs, dtype, cls, rule, words):
    expect(t(secs, dtype=dtype, **CB), cls, rule, words, tensor="t")


def test_bool_raw_values_are_0_or_1():
    expect(t(section(S.RAW, bytes([0, 1, 2, 1])), dtype=DType.BOOL), FormatError, "VAL-1",
           "bool value", tensor="t")
    assert loads(t(section(S.RAW, bytes([0, 1, 1, 0])), dtype=DType.BOOL))["t"].tolist() == \
        [False, True, True, False]


def test_raw_padding_rules():
    name = "p" * 10
    head = tensor_head(name, F32, (64,))
    pad = raw_padding(len(head), 256)
    assert pad > 0
    arr = np.arange(64, dtype="<f4")
    expect(build([raw_tensor(name, arr, F32, pad_byte=1)]), FormatError, "VAL-5",
           "padding bytes are not zero", tensor=name)
    expect(build([raw_tensor(name, arr, F32, pad=pad + 1)]), FormatError, "VAL-5", "holds")
    expect(build([raw_tensor(name, arr, F32, pad=pad + 64)]), FormatError, "VAL-5", "holds")
    assert loads(build([raw_tensor(name, arr, F32)]))[name].tolist() == list(range(64))


# ---------------------------------------------------------------------------
# Sparse layouts (SPA-*)
# ---------------------------------------------------------------------------


def _rel(bits, nnz, symbols, tables=b"", chunk_log=4) -> bytes:
    stream = huffman.encode_stream(np.asarray(symbols, np.int64), 1 << bits, chunk_log=chunk_log) \
        if len(symbols) else uvar(0)
    return section(S.RELATIVE, bytes([bits]) + uvar(nnz) + stream + tables)


REL = dict(layout=Layout.RELATIVE)


def test_valid_sparse_records():
    out = loads(t(_rel(2, 2, [1, 0]) + section(S.RAW, np.array([5, 6], "<f4").tobytes()), **REL))
    assert out["t"].tolist() == [0.0, 5.0, 6.0, 0.0]
    out = loads(t(section(S.BITMAP, uvar(2) + bytes([0b1001])) + section(S.RAW, bytes(8)),
                  layout=Layout.BITMAP))
    assert out["t"].tolist() == [0.0] * 4
    # a multi-chunk relative index with chunk tables, by hand
    symbols = [0] * 20
    secs = _rel(2, 20, symbols, packed([16]) + packed([0])) + section(S.RAW, bytes(80))
    assert loads(t(secs, shape=(30,), **REL))["t"].shape == (30,)


@pytest.mark.parametrize("secs,shape,rule,words", [
    (_rel(0, 0, []) + section(S.RAW, b""), (4,), "SPA-1", "index width 0"),
    (_rel(17, 0, []) + section(S.RAW, b""), (4,), "SPA-1", ""),
    (_rel(2, 5, [0] * 5) + section(S.RAW, bytes(20)), (4,), "SPA-2", "5 kept elements"),
    (_rel(2, 3, [0, 0]) + section(S.RAW, bytes(12)), (4,), "SPA-2", "index entries"),
    (_rel(2, 0, [0]) + section(S.RAW, b""), (4,), "SPA-2", "without kept"),
    (_rel(2, 1, [0, 3]) + section(S.RAW, bytes(4)), (8,), "SPA-3", "filler"),
    (_rel(2, 1, [0, 0]) + section(S.RAW, bytes(4)), (8,), "SPA-2", "more than the 1 kept"),
    # more real entries than values: found by fuzz_stream as a numpy broadcast error
    (_rel(2, 2, [0, 0, 0]) + section(S.RAW, bytes(8)), (8,), "SPA-2", "more than the 2 kept"),
    (_rel(2, 2, [2, 2]) + section(S.RAW, bytes(8)), (5,), "SPA-4", "position 5"),
    (_rel(2, 20, [0] * 20, packed([15]) + packed([0])) + section(S.RAW, bytes(80)), (30,), "SPA-5",
     "out of range"),
    (_rel(2, 20, [0] * 20, packed([40]) + packed([0])) + section(S.RAW, bytes(80)), (30,), "SPA-5",
     "exceed"),
    (_rel(2, 20, [0] * 20, packed([17]) + packed([0])) + section(S.RAW, bytes(80)), (30,), "SPA-5",
     "disagree"),
    (_rel(2, 20, [0] * 20, packed([16]) + packed([0], 3)) + section(S.RAW, bytes(80)), (30,),
     "SPA-5", "bit length"),
    (_rel(2, 20, [0] * 20) + section(S.RAW, bytes(80)), (30,), "SEC-5", ""),
    (section(S.RAW, bytes(16)), (4,), "SEC-4", "positions section"),
    (section(S.BITMAP, uvar(2) + bytes([0b11])) + section(S.RAW, bytes(8)), (4,), "SEC-4",
     "positions section"),
])
def test_relative_layout_rules(secs, shape, rule, words):
    expect(t(secs, shape=shape, **REL), FormatError, rule, words, tensor="t")


@pytest.mark.parametrize("secs,rule,words", [
    (section(S.BITMAP, uvar(5) + bytes([0b1111])) + section(S.RAW, bytes(20)), "SPA-2",
     "5 kept elements"),
    (section(S.BITMAP, uvar(1) + bytes([0b10001])) + section(S.RAW, bytes(4)), "SPA-6", "padding"),
    (section(S.BITMAP, uvar(1) + bytes([0b11])) + section(S.RAW, bytes(4)), "SPA-2", "set bits"),
    # more set bits than values: found by fuzz_stream as a numpy broadcast error
    (section(S.BITMAP, uvar(2) + bytes([0b111])) + section(S.RAW, bytes(8)), "SPA-2", "set bits"),
    (section(S.BITMAP, uvar(1)) + section(S.RAW, bytes(4)), "SEC-5", ""),
    (section(S.RAW, bytes(16)), "SEC-4", "positions section"),
])
def test_bitmap_layout_rules(secs, rule, words):
    expect(t(secs, layout=Layout.BITMAP), FormatError, rule, words, tensor="t")


def test_sparse_codebook_record_with_bad_index_stream():
    # relative positions fine, codebook index stream has a 1 bit in a one-symbol code
    secs = (_rel(2, 2, [1, 0]) + _book(F32, bytes(8))
            + section(S.INDICES, stream_bytes(2, [0, 1], 4, 2, b"\x02")))
    expect(t(secs, layout=Layout.RELATIVE, values=Values.CODEBOOK), FormatError, "HUF-11",
           tensor="t")


def test_impossible_symbol_counts_cost_nothing():
    secs = _book(F32, bytes(8)) + section(S.INDICES, stream_bytes(2**62, [1, 1], 4, 2**62, b""))
    data = t(secs, shape=(2**30,), **CB)

    def run():
        with pytest.raises(DczError):
            dcfmt.load(data)
    assert _peak(run) < 1 << 20


# ---------------------------------------------------------------------------
# The lazy loader (dcfmt.open) on hostile files
# ---------------------------------------------------------------------------


def _lazy_fails(data, cls, rule, words="", **kw):
    with pytest.raises(DczError) as ei:
        lazy_load(data, **kw)
    assert type(ei.value) is cls and ei.value.rule == rule, repr(ei.value)
    assert words in ei.value.message
    with pytest.raises(DczError):
        dcfmt.load(data)  # the whole-file reader refuses it too
    return ei.value


def test_lazy_loader_structure_checks():
    recs = [tensor_rec("a", F32, (4,), sections=RAW16), tensor_rec("b", F32, (4,), sections=RAW16)]
    good = build(recs)
    assert lazy_load(good)["b"].tolist() == [0.0] * 4
    # shorter than a header and a trailer
    _lazy_fails(header() + b"\x03\x00", TruncatedError, "FIL-1", "fewer than a header")
    # the trailer points at a tensor record, not the index
    _lazy_fails(build(recs, trailer_offset=16), FormatError, "TRL-3", "not the index")
    # a byte between the index and the trailer
    _lazy_fails(good[:-16] + b"\x00" + good[-16:-4] + b"DCZE", FormatError, "TRL-3")
    bad = bytearray(build(recs))
    bad[-17] ^= 0x01  # last byte of the index CRC
    _lazy_fails(bytes(bad), ChecksumError, "RCD-3", "index")

    # an index entry whose record has another kind
    def as_tensor(es):
        import dataclasses
        return [dataclasses.replace(es[0], kind=RecordKind.TENSOR, name="a", dtype=F32, shape=(4,))]
    _lazy_fails(build([Rec(9, b"x" * 20, flags=1)], index_entries=as_tensor), FormatError, "NDX-4",
                "does not match its index entry")

    # an index entry naming another tensor than its record
    def rename(es):
        import dataclasses
        es[0] = dataclasses.replace(es[0], name="z")
        return es
    _lazy_fails(build(recs, index_entries=rename), FormatError, "NDX-4", "'a'")


def test_lazy_loader_alignment_checks():
    big = np.arange(64, dtype="<f4")
    r = raw_tensor("big", big, F32)
    r.pad = bytes(1) + b"\x01" + bytes(46)
    _lazy_fails(build([r]), FormatError, "RCD-4", "padding bytes are not zero")
    r = raw_tensor("big", big, F32)
    r.pad = b""
    _lazy_fails(build([r]), FormatError, "RCD-4", "ALIGNED flag")
    r = raw_tensor("big", big, F32)
    assert lazy_load(build([r]))["big"].tolist() == list(range(64))


@pytest.mark.parametrize("case", ["critical-kind", "aligned-metadata", "metadata-limit", "merged"])
def test_lazy_loader_gaps(case):
    recs = [tensor_rec("a", F32, (4,), sections=RAW16), tensor_rec("b", F32, (4,), sections=RAW16)]
    limits = DEFAULT_LIMITS
    if case == "critical-kind":
        data = build([Rec(9, b"future")] + recs)
    elif case == "aligned-metadata":
        data = build([Rec(RecordKind.METADATA, b"\x00", flags=RECORD_ALIGNED)] + recs)
    elif case == "metadata-limit":
        data = build([Rec(RecordKind.METADATA, metadata_body([("key", "v" * 30)]))] + recs)
        limits = DecodeLimits(max_metadata_bytes=20)
    else:
        import dataclasses
        data = build(recs, index_entries=lambda es: [dataclasses.replace(
            es[0], kind=9, length=es[0].length + es[1].length, name=None, dtype=None, shape=None)])
    with pytest.raises(DczError):
        dcfmt.load(data, limits=limits)
    try:
        lazy_load(data, limits=limits)
    except DczError:
        return
    raise AssertionError("the lazy loader accepted a file that load() rejects")
