"""dcfmt.Reader / dcfmt.Writer / dcfmt.atomic: streaming, pipes, atomic replacement."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dcfmt
from builders import NoSeekSink, ReadOnlyShort, Rec, ShortReads, build, raw_tensor, section, tensor_rec
from dcfmt import writer as writer_mod
from dcfmt.atomic import AtomicFile
from dcfmt.constants import RecordKind, SectionKind
from dcfmt.dtypes import DType
from dcfmt.errors import DczError, EncodeError, LimitError, TruncatedError
from dcfmt.limits import DecodeLimits
from strategies import same_bits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def _tensors():
    rng = np.random.default_rng(0)
    pruned = (rng.normal(size=(70, 50)) * 0.05).astype(np.float32)
    pruned[np.abs(pruned) < 0.07] = 0
    mask = np.zeros(3000, bool)
    mask[::7] = True
    return {
        "a.raw": rng.normal(size=(33, 17)).astype(np.float32),   # aligned dense raw
        "b.codebook": (rng.normal(size=(64, 64)) * 0.05).astype(np.float32),
        "c.pruned": pruned,
        "d.mask": mask,
        "e.scalar": np.float64(-0.0),
        "f.empty": np.zeros((4, 0), np.int16),
        "g.ints": rng.integers(0, 5, size=5000).astype(np.uint8),
        "h.half": rng.normal(size=(9,)).astype(np.float16),
    }


TENSORS = _tensors()
FILE = dcfmt.encode(TENSORS, metadata={"arch": "test", "ü": "ß"})
ONE_SHOT = dcfmt.decode(FILE)


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert same_bits(a[k], b[k]), k


# ---------------------------------------------------------------------------
# Streaming reads
# ---------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, 7, 64, 1000, None]))
def test_streaming_with_random_short_reads_equals_one_shot(seed, max_read):
    stream = ShortReads(FILE, seed, max_read)
    with dcfmt.Reader(stream) as r:
        assert r.metadata == {"arch": "test", "ü": "ß"}
        got = dict(r)
        assert r.header.major == 1 and len(r.entries) == len(TENSORS) + 1
    _same(got, ONE_SHOT)
    assert stream.calls > 1


@given(st.integers(0, 2**32 - 1))
def test_streaming_with_read_only_file_objects(seed):
    _same(dcfmt.load(ReadOnlyShort(FILE, seed)), ONE_SHOT)


def test_every_source_type_gives_the_same(tmp_path):
    path = tmp_path / "m.dcz"
    path.write_bytes(FILE)
    with open(path, "rb") as f:
        from_file = dcfmt.load(f)
    for source in (str(path), path, FILE, bytearray(FILE), memoryview(FILE), io.BytesIO(FILE)):
        _same(dcfmt.load(source), ONE_SHOT)
    _same(from_file, ONE_SHOT)
    assert dcfmt.load_metadata(path) == {"arch": "test", "ü": "ß"}
    with pytest.raises(TypeError):
        dcfmt.Reader(12345)


def test_lossless_content_matches_the_input():
    out = dcfmt.decode(dcfmt.encode(TENSORS, plan="lossless"))
    for k, v in TENSORS.items():
        assert same_bits(out[k], np.asarray(v)), k


def test_streaming_reader_from_a_pipe():
    rfd, wfd = os.pipe()

    def feed():
        with os.fdopen(wfd, "wb") as w:
            for i in range(0, len(FILE), 333):
                w.write(FILE[i : i + 333])

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(rfd, "rb", buffering=0) as r:
        got = dcfmt.load(r)
    t.join()
    _same(got, ONE_SHOT)


def test_records_and_metadata_without_decoding():
    with dcfmt.Reader(FILE) as r:
        recs = list(r.records())
        assert [x.name for x in recs] == sorted(TENSORS)
        assert r.entries is not None and r.entries[0].kind == RecordKind.METADATA
    # a file without metadata has an empty mapping
    with dcfmt.Reader(dcfmt.encode({"x": np.ones(3)})) as r:
        assert r.metadata == {}
        assert [n for n, _ in r] == ["x"]


def test_records_after_the_end_yields_nothing():
    with dcfmt.Reader(io.BytesIO(FILE)) as r:
        assert len(list(r.records())) == len(TENSORS)
        assert list(r.records()) == [] and list(r) == []


def test_a_record_bigger_than_one_stream_read():
    # records above 16 MiB are gathered in pieces from the stream
    big = np.random.default_rng(1).integers(0, 2**31, size=(17 << 20) // 4, dtype=np.int32)
    data = dcfmt.encode({"big": big, "small": np.arange(3)}, plan="lossless")
    for source in (io.BytesIO(data), ShortReads(data, seed=2, max_read=5 << 20)):
        out = dcfmt.load(source)
        assert np.array_equal(out["big"], big) and out["small"].tolist() == [0, 1, 2]


def test_load_metadata_reads_only_the_first_record():
    cut = FILE[: FILE.index(b"arch") + 40]  # header + metadata record + a bit of the next
    assert dcfmt.load_metadata(cut) == {"arch": "test", "ü": "ß"}
    with pytest.raises(TruncatedError):
        dcfmt.load(cut)


def test_decoded_arrays_do_not_alias_caller_bytes():
    data = bytearray(FILE)
    out = dcfmt.load(data)
    for arr in out.values():
        if arr.size:
            assert arr.flags.writeable
            arr.reshape(-1)[0] = 1
    assert bytes(data) == FILE


def test_total_bytes_limit():
    with pytest.raises(LimitError) as ei:
        dcfmt.load(FILE, limits=DecodeLimits(max_total_bytes=20_000))
    assert ei.value.rule == "LIM-1" and "decoded bytes so far" in ei.value.message


def test_unknown_optional_record_and_section_are_skipped_when_streaming():
    opt_section = section(9, b"future data", flags=1)
    t = tensor_rec("t", DType.INT8, (3,), sections=section(SectionKind.RAW, b"\x01\x02\x03")
                   + opt_section)
    data = build([Rec(RecordKind.METADATA, b"\x00"), Rec(200, b"opaque", flags=1), t,
                  raw_tensor("big", np.arange(30, dtype="<i4"), DType.INT32)])
    for source in (data, ShortReads(data, 1, 5)):
        out = dcfmt.load(source)
        assert out["t"].tolist() == [1, 2, 3] and out["big"].tolist() == list(range(30))


# ---------------------------------------------------------------------------
# Writers that never seek
# ---------------------------------------------------------------------------


def _write(target, **kw):
    with dcfmt.Writer(target, metadata={"arch": "test", "ü": "ß"}, **kw) as w:
        for name in sorted(TENSORS):
            w.write(name, TENSORS[name])
    return w


@pytest.mark.parametrize("mode", ["full", "short", "none"])
def test_writer_to_a_non_seekable_sink(mode):
    sink = NoSeekSink(mode, seed=3)
    w = _write(sink)
    assert sink.getvalue() == FILE and sink.flushed and w.bytes_written == len(FILE)
    assert w.codes == []  # not kept unless asked: they would hold every tensor


def test_writer_to_an_os_pipe():
    rfd, wfd = os.pipe()
    chunks = []

    def drain():
        with os.fdopen(rfd, "rb") as r:
            while True:
                b = r.read(4096)
                if not b:
                    return
                chunks.append(b)

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(wfd, "wb", buffering=0) as f:
        _write(f)
    t.join()
    assert b"".join(chunks) == FILE


def test_writer_to_a_path_is_the_same_bytes(tmp_path):
    path = tmp_path / "out.dcz"
    _write(str(path))
    assert path.read_bytes() == FILE
    _write(path, verify=False)
    assert path.read_bytes() == FILE
    assert os.listdir(tmp_path) == ["out.dcz"]


def test_writer_state_errors():
    buf = io.BytesIO()
    w = dcfmt.Writer(buf, plan="lossless", keep_codes=True)
    w.write("a", np.ones(3))
    with pytest.raises(EncodeError, match="duplicate"):
        w.write("a", np.ones(3))
    with pytest.raises(EncodeError, match="duplicate"):
        w.write_code(w.codes[0])
    w.close()
    w.close()  # idempotent
    with pytest.raises(EncodeError, match="closed"):
        w.write("b", np.ones(3))
    with pytest.raises(EncodeError, match="closed"):
        w.write_code(w.codes[0])
    assert list(dcfmt.decode(buf.getvalue())) == ["a"]
    w2 = dcfmt.Writer(io.BytesIO())
    w2.abort()
    with pytest.raises(EncodeError, match="aborted"):
        w2.write("x", np.ones(2))
    w2.close()  # closing an aborted writer does nothing
    with pytest.raises(TypeError):
        dcfmt.Writer(42)


@pytest.mark.parametrize("name,array", [
    ("", np.ones(2)), ("a\x00b", np.ones(2)), ("ctl\x1b", np.ones(2)), ("\ud800", np.ones(2)),
    ("x" * 4097, np.ones(2)), ("c64", np.ones(2, np.complex64)), ("obj", np.array([None, 1])),
    ("str", np.array(["a", "b"])), ("dt", np.array([1], "datetime64[s]")),
])
def test_writer_rejects_bad_names_and_dtypes_and_stays_usable(name, array):
    buf = io.BytesIO()
    with dcfmt.Writer(buf, plan="lossless") as w:
        with pytest.raises(EncodeError):
            w.write(name, array)
        w.write("ok", np.arange(4))
    assert dcfmt.decode(buf.getvalue())["ok"].tolist() == [0, 1, 2, 3]


def test_writer_rejects_bad_dtype_override():
    with dcfmt.Writer(io.BytesIO()) as w:
        with pytest.raises(EncodeError):
            w.write("x", np.ones(2), dtype="complex64")


def test_bad_metadata_aborts_a_path_writer(tmp_path):
    path = tmp_path / "m.dcz"
    with pytest.raises(EncodeError):
        dcfmt.Writer(path, metadata={"k": 1})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Atomic replacement
# ---------------------------------------------------------------------------


def test_exception_inside_with_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.dcz"
    path.write_bytes(FILE)
    with pytest.raises(RuntimeError, match="boom"):
        with dcfmt.Writer(path) as w:
            w.write("x", np.ones(1000, np.float32))
            raise RuntimeError("boom")
    assert path.read_bytes() == FILE
    assert os.listdir(tmp_path) == ["model.dcz"]
    # a failed write inside the block is reported the same way
    with pytest.raises(EncodeError):
        with dcfmt.Writer(path) as w:
            w.write("x", np.ones(10, np.complex128))
    assert path.read_bytes() == FILE and os.listdir(tmp_path) == ["model.dcz"]


def test_failed_rename_or_verify_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.dcz"
    path.write_bytes(FILE)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        _write(path)
    monkeypatch.undo()
    assert path.read_bytes() == FILE and os.listdir(tmp_path) == ["model.dcz"]

    def bad_verify(p):
        raise dcfmt.ChecksumError("simulated", rule="RCD-3")

    monkeypatch.setattr(writer_mod, "_verify_file", bad_verify)
    with pytest.raises(dcfmt.ChecksumError):
        _write(path)
    assert path.read_bytes() == FILE and os.listdir(tmp_path) == ["model.dcz"]


def test_io_error_while_writing_aborts():
    class Failing(NoSeekSink):
        def write(self, data):
            if sum(map(len, self.chunks)) > 100:
                raise OSError(5, "I/O error")
            return super().write(data)

    sink = Failing()
    w = dcfmt.Writer(sink, plan="lossless")
    with pytest.raises(OSError):
        w.write("big", np.arange(1000.0))
    with pytest.raises(EncodeError, match="aborted"):
        w.write("more", np.ones(2))

    class Stuck(NoSeekSink):
        def write(self, data):
            return 0

    with pytest.raises(OSError, match="no progress"):
        dcfmt.Writer(Stuck())


def test_reading_and_replacing_the_same_path(tmp_path):
    # the source stays readable while the new file replaces it
    path = tmp_path / "same.dcz"
    path.write_bytes(FILE)
    with dcfmt.Reader(path) as r:
        first = next(iter(r))
        dcfmt.save({"new": np.arange(5)}, path, plan="lossless")
        rest = list(r)
    assert first[0] == "a.raw" and len(rest) == len(TENSORS) - 1
    assert list(dcfmt.load(path)) == ["new"]
    # load then save over the same path
    dcfmt.save(dcfmt.load(path), path, plan="lossless")
    assert dcfmt.load(path)["new"].tolist() == [0, 1, 2, 3, 4]


def test_atomic_file_directly(tmp_path):
    path = tmp_path / "f.bin"
    with AtomicFile(path) as f:
        f.write(b"abc")
    assert not path.exists() and os.listdir(tmp_path) == []  # never committed
    a = AtomicFile(path)
    a.write(b"xyz")
    a.commit()
    a.abort()  # after commit: nothing to undo
    assert path.read_bytes() == b"xyz" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("k", [0, 4])
def test_killed_writer_leaves_old_file_or_nothing(tmp_path, k):
    path = tmp_path / "model.dcz"
    path.write_bytes(FILE)
    script = textwrap.dedent(f"""
        import os, numpy as np, dcfmt
        with dcfmt.Writer({str(path)!r}, plan="lossless") as w:
            for i in range(10):
                if i == {k}:
                    os._exit(9)
                w.write(f"t{{i}}", np.full(5000, i, np.int32))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert proc.returncode == 9
    assert path.read_bytes() == FILE
    leftovers = [p for p in os.listdir(tmp_path) if p != "model.dcz"]
    assert all(p.startswith(".model.dcz.") and p.endswith(".tmp") for p in leftovers)


def test_failed_load_returns_nothing():
    bad = bytearray(FILE)
    bad[-30] ^= 0xFF  # inside the index record: its CRC fails after every tensor was read
    with pytest.raises(DczError):
        dcfmt.load(bytes(bad))


# -- batched decoding of short streams ----------------------------------------------


def _mid_tensors(n=4, shape=(64, 512)):
    """Tensors whose index streams are short enough to be decoded together."""
    rng = np.random.default_rng(7)
    return {f"t{i}": (rng.normal(size=shape) * 0.05).astype(np.float32) for i in range(n)}


def _records(data):
    with dcfmt.Reader(data) as r:
        return list(r.records())


def test_reader_decodes_short_streams_together(monkeypatch, many_batches):
    from dcfmt import decoder, huffman
    from dcfmt.plan import FixedPlan
    from dcfmt.record import decode_tensor

    data = dcfmt.encode(_mid_tensors(shape=(400, 512)), plan=FixedPlan(bits=5, sparsity=0.85))
    recs = _records(data)
    one_by_one = {rec.name: decode_tensor(rec) for rec in recs}
    # both the relative index and the codebook index of every tensor qualify
    assert [len(decoder.batched_streams(rec)) for rec in recs] == [2, 2, 2, 2]
    batches = many_batches
    monkeypatch.setattr(huffman, "decode_chunks", lambda *a, **k: pytest.fail("decoded alone"))
    out = dcfmt.decode(data)
    assert batches == [8]
    assert list(out) == list(one_by_one)
    for name in out:
        assert same_bits(out[name], one_by_one[name])


def test_reader_batches_are_bounded(monkeypatch, many_batches):
    from dcfmt import decoder
    from dcfmt.plan import FixedPlan

    data = dcfmt.encode(_mid_tensors(6), plan=FixedPlan(bits=5))
    batches = many_batches
    monkeypatch.setattr(decoder, "BATCH_SYMBOLS", 2 * 64 * 512)  # two tensors' worth
    assert list(dcfmt.decode(data)) == [f"t{i}" for i in range(6)]
    assert batches == [2, 2, 2]


def test_batched_reader_keeps_file_order_around_unbatched_records():
    from dcfmt import decoder

    t = _mid_tensors(3)
    t["t1"] = t["t1"][:2, :3]  # too small to batch: decoded alone, between the others
    data = dcfmt.encode(t, plan="paper")
    assert [bool(decoder.batched_streams(rec)) for rec in _records(data)] == [True, False, True]
    with dcfmt.Reader(data) as r:
        assert [name for name, _ in r] == ["t0", "t1", "t2"]


def _corrupt_stream(data: bytes, name: str) -> bytes:
    """Flip payload bits of ``name``'s index stream and fix every CRC (a HUF-11 error)."""
    from builders import fix_record_crcs

    rec = next(r for r in _records(data) if r.name == name)
    s = rec.indices
    buf = bytearray(data)
    mid = s.offset + s.size - len(s.payload) // 2
    buf[mid : mid + 8] = bytes(b ^ 0x5A for b in buf[mid : mid + 8])
    return fix_record_crcs(bytes(buf))


def test_batched_reader_reports_errors_in_file_order():
    from dcfmt.errors import FormatError
    from dcfmt.plan import FixedPlan

    data = _corrupt_stream(dcfmt.encode(_mid_tensors(3), plan=FixedPlan(bits=5)), "t1")
    got = []
    with pytest.raises(FormatError) as e:
        with dcfmt.Reader(data) as r:
            for name, _ in r:
                got.append(name)
    assert got == ["t0"]
    assert (e.value.rule, e.value.tensor) == ("HUF-11", "t1")


def test_batched_reader_decodes_read_ahead_records_before_a_later_error():
    from dcfmt.errors import ChecksumError, FormatError
    from dcfmt.plan import FixedPlan

    data = dcfmt.encode(_mid_tensors(3), plan=FixedPlan(bits=5))
    good = dcfmt.decode(data)
    # t2's record body changes without its CRC: a checksum error when t2 is read,
    # which a one-by-one reader meets only after handing out t0 and t1
    t2 = next(r for r in _records(data) if r.name == "t2")
    buf = bytearray(data)
    buf[t2.offset + t2.size // 2] ^= 1
    got = {}
    with pytest.raises(ChecksumError):
        with dcfmt.Reader(bytes(buf)) as r:
            for name, arr in r:
                got[name] = arr
    assert list(got) == ["t0", "t1"] and all(same_bits(got[n], good[n]) for n in got)
    # ... and an earlier tensor's decoding error still comes first
    bad = bytearray(_corrupt_stream(data, "t1"))
    bad[t2.offset + t2.size // 2] ^= 1
    with pytest.raises(FormatError) as e:
        dcfmt.decode(bytes(bad))
    assert (e.value.rule, e.value.tensor) == ("HUF-11", "t1")


def test_reader_reads_ahead_only_where_that_cannot_block(tmp_path, many_batches):
    from dcfmt.plan import FixedPlan

    data = dcfmt.encode(_mid_tensors(3), plan=FixedPlan(bits=5))
    path = tmp_path / "m.dcz"
    path.write_bytes(data)
    batches = many_batches

    def batched(source, **kw):
        batches.clear()
        with dcfmt.Reader(source, **kw) as r:
            assert [n for n, _ in r] == ["t0", "t1", "t2"]
        return batches == [3]

    assert batched(data) and batched(str(path)) and batched(io.BytesIO(data))
    # a file object of a regular file cannot wait on a writer either
    with open(path, "rb") as f:
        assert batched(f)
    with open(path, "rb") as f:
        assert not batched(f, batch=False)
    # a pipe may be fed by a writer that waits for this reader ...
    r_fd, w_fd = os.pipe()

    def feed():
        with os.fdopen(w_fd, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(r_fd, "rb") as f:
        assert not batched(f)
    writer.join()
    # ... as may an object without a descriptor; batch=True overrides
    assert not batched(ShortReads(data))
    assert batched(ShortReads(data), batch=True)
    assert not batched(data, batch=False)
