"""The memory-mapped lazy loader: dcfmt.open."""

import glob
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dcfmt
from dcfmt import huffman
from dcfmt.errors import ChecksumError, DczError
from dcfmt.record import EncodeOptions, TensorCode
from dcfmt.constants import Layout, Values
from dcfmt.dtypes import DType

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec", "vectors")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A file with every layout, small chunks so slices span many chunks."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("lazy") / "model.dcz"
    dense = (rng.normal(size=(300, 40)) * 0.1).astype(np.float32)
    sparse = np.where(rng.random((500, 30)) < 0.07, rng.normal(size=(500, 30)), 0).astype(np.float32)
    mask = rng.random(64 * 50) < 0.5
    with dcfmt.Writer(path, metadata={"m": "1"}, options=EncodeOptions(chunk_log=5)) as w:
        w.write("dense_cb", dense, plan=dcfmt.FixedPlan(bits=5))
        w.write("sparse_cb", sparse, plan=dcfmt.FixedPlan(bits=4))
        w.write("sparse_raw", sparse, plan="lossless")
        w.write("raw", dense, plan="lossless")
        w.write_code(TensorCode("bitmap_cb", DType.FLOAT32, (64, 50), layout=Layout.BITMAP,
                                values=Values.CODEBOOK, positions=np.flatnonzero(mask),
                                codebook=np.array([-1, 1, 2], np.float32), codebook_dtype=DType.FLOAT32,
                                indices=rng.integers(0, 3, int(mask.sum()))))
        w.write("scalar", np.array(2.5, np.float32), plan="lossless")
    return path, dcfmt.load(path)


def test_keys_metadata_and_tensors_match_load(model):
    path, full = model
    with dcfmt.open(path) as f:
        assert f.keys() == list(full)
        assert len(f) == len(full) and "raw" in f and "nope" not in f
        assert f.metadata() == {"m": "1"}
        for name in f:
            got = f[name]
            assert got.dtype == full[name].dtype and got.tobytes() == full[name].tobytes()
        with pytest.raises(KeyError):
            f["nope"]


def test_every_vector_reads_the_same_lazily():
    for path in sorted(glob.glob(os.path.join(VECTORS, "*.dcz"))):
        full = dcfmt.load(path)
        with dcfmt.open(path) as f:
            assert f.keys() == list(full)
            assert f.metadata() == dcfmt.load_metadata(path)
            for name in f.keys():
                assert f[name].tobytes() == full[name].tobytes()


def test_get_tensors_equals_getting_each(model, many_batches):
    path, full = model
    batches = many_batches
    with dcfmt.open(path) as f:
        every = f.get_tensors()
        some = f.get_tensors(["scalar", "dense_cb", "raw"])
        assert not some["raw"].flags.writeable  # raw tensors stay zero-copy views
        with pytest.raises(KeyError):
            f.get_tensors(["dense_cb", "nope"])
    assert list(every) == list(full) and list(some) == ["scalar", "dense_cb", "raw"]
    for name, arr in every.items():
        assert arr.dtype == full[name].dtype and arr.tobytes() == full[name].tobytes()
    for name, arr in some.items():
        assert arr.tobytes() == full[name].tobytes()
    # the short index and relative streams were decoded together, not one by one
    assert batches and batches[0] >= 3


def test_raw_tensors_are_read_only_zero_copy_views(model):
    path, full = model
    with dcfmt.open(path) as f:
        a = f["raw"]
        assert not a.flags.writeable and not a.flags.owndata
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
        b = f["dense_cb"]
        assert b.flags.writeable  # decoded tensors are fresh arrays
    # the view outlives the file object, and the file is untouched
    assert a.tobytes() == full["raw"].tobytes()
    assert dcfmt.load(path)["raw"].tobytes() == full["raw"].tobytes()


def test_info_reports_encoding_without_decoding(model, monkeypatch):
    path, _ = model
    monkeypatch.setattr(huffman, "decode_chunks", lambda *a, **k: pytest.fail("decoded"))
    with dcfmt.open(path) as f:
        info = f.info("sparse_cb")
        assert info.layout == "relative" and info.values == "codebook"
        assert info.shape == (500, 30) and info.dtype == "float32"
        assert 0 < info.nnz < 500 * 30 and info.codebook_size <= 16
        assert info.recipe["plan"] == "fixed"
        assert info.stored_bytes < info.decoded_bytes
        assert f.info("raw").layout == "dense" and f.info("raw").values == "raw"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_get_slice_equals_slicing_the_full_tensor(model, data):
    path, full = model
    name = data.draw(st.sampled_from(["dense_cb", "sparse_cb", "sparse_raw", "raw", "bitmap_cb"]))
    n = full[name].shape[0]
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    with dcfmt.open(path) as f:
        got = f.get_slice(name)[a:b]
        assert got.shape == full[name][a:b].shape
        assert got.tobytes() == full[name][a:b].tobytes()
        assert f.get_slice(name)[a if a < n else 0].tobytes() == full[name][a if a < n else 0].tobytes()


def test_get_slice_decodes_only_covering_chunks(model, monkeypatch):
    path, full = model
    calls = []
    real = huffman.decode_chunks

    def spy(stream, first, last, *a, **k):
        calls.append((stream.n_chunks, first, last))
        return real(stream, first, last, *a, **k)

    monkeypatch.setattr(huffman, "decode_chunks", spy)
    with dcfmt.open(path) as f:
        rec = f.record("dense_cb")
        row = 40
        got = f.get_slice("dense_cb")[100:103]
        assert got.tobytes() == full["dense_cb"][100:103].tobytes()
        (n_chunks, first, last), = calls
        assert n_chunks == rec.indices.n_chunks
        assert first == (100 * row) // 32 and last == -(-(103 * row) // 32)
        calls.clear()
        f.get_slice("sparse_cb")[250:252]
        total = sum(c[0] for c in calls)
        decoded = sum(c[2] - c[1] for c in calls)
        assert decoded <= 4 and total > 20


def test_slices_of_odd_shapes(model):
    path, full = model
    with dcfmt.open(path) as f:
        with pytest.raises(IndexError):
            f.get_slice("scalar")[0:1]
        with pytest.raises(IndexError):
            f.get_slice("raw")[300]
        assert f.get_slice("raw")[-1].tobytes() == full["raw"][-1].tobytes()
        assert f.get_slice("raw")[::2].tobytes() == full["raw"][::2].tobytes()
        assert f.get_slice("raw").get_shape() == [300, 40]
        with pytest.raises(TypeError):
            f.get_slice("raw")["x"]


def test_closed_file_refuses_access(model):
    path, _ = model
    f = dcfmt.open(path)
    f.close()
    with pytest.raises(ValueError):
        f["raw"]
    f.close()  # idempotent


def test_open_reads_only_header_trailer_and_index(tmp_path):
    # a record whose payload is corrupt: open succeeds, reading it fails
    data = bytearray(dcfmt.encode({"a": np.arange(1, 101, dtype=np.int32), "b": np.ones(3)},
                                  plan="lossless"))
    data[300] ^= 0xFF  # inside the payload of "a" (record at 64, values from 128)
    p = tmp_path / "c.dcz"
    p.write_bytes(bytes(data))
    with dcfmt.open(p) as f:
        assert f.keys() == ["a", "b"]
        assert f["b"].tolist() == [1.0, 1.0, 1.0]
        with pytest.raises(ChecksumError):
            f["a"]
    with dcfmt.open(p, verify=False) as f:
        assert f["a"].tolist() != list(range(1, 101))  # corrupted bytes come through unverified


def test_open_memory_does_not_depend_on_declared_sizes(tmp_path):
    # 2000 tensors: memory at open is about the index, not the tensors
    tensors = {f"t{i:04d}": np.full((256,), i, np.float32) for i in range(2000)}
    p = tmp_path / "many.dcz"
    dcfmt.save(tensors, p, plan="lossless")
    tracemalloc.start()
    f = dcfmt.open(p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000
    assert len(f) == 2000 and f["t1999"][0] == 1999
    f.close()


def test_bad_files_raise_dczerror_at_open(tmp_path):
    p = tmp_path / "x.dcz"
    for data in (b"", b"\x89DCZ", b"PK\x03\x04" + bytes(60), open(os.path.join(VECTORS, "metadata.dcz"), "rb").read()[:-1]):
        p.write_bytes(data)
        with pytest.raises(DczError):
            dcfmt.open(p)
    with pytest.raises(OSError):
        dcfmt.open(tmp_path / "missing.dcz")


def test_get_tensors_reports_errors_in_the_order_of_names(tmp_path):
    from builders import fix_record_crcs
    from dcfmt.errors import FormatError

    rng = np.random.default_rng(9)
    path = tmp_path / "m.dcz"
    dcfmt.save({f"t{i}": (rng.normal(size=(64, 512)) * 0.05).astype(np.float32) for i in range(3)},
               path, plan=dcfmt.FixedPlan(bits=5))
    with dcfmt.open(path) as f:
        s = f.record("t1").indices
    data = bytearray(path.read_bytes())
    mid = s.offset + s.size - len(s.payload) // 2
    data[mid : mid + 8] = bytes(b ^ 0x5A for b in data[mid : mid + 8])
    path.write_bytes(fix_record_crcs(bytes(data)))
    with dcfmt.open(path) as f:
        for names in (None, ["t0", "t1", "nope"], ["t2", "t1"]):
            with pytest.raises(FormatError) as e:
                f.get_tensors(names)
            assert (e.value.rule, e.value.tensor) == ("HUF-11", "t1")
        with pytest.raises(KeyError):
            f.get_tensors(["t0", "nope", "t1"])
        assert f.get_tensors(["t2", "t0"]).keys() == {"t2", "t0"}
