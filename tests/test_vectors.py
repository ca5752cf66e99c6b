"""Conformance: every golden vector in spec/vectors/ decodes to its recorded content.

Vectors are added, never regenerated (spec/vectors/generate.py refuses to
overwrite), so a vector that stops decoding here is a compatibility break.
Every vector is decoded by every path: the streaming Reader with random short
reads, one-shot load from bytes, and both Huffman decoders.
"""

import glob
import io
import json
import os
import random

import numpy as np
import pytest

import dcfmt
from dcfmt import huffman
from dcfmt.dtypes import from_name
from dcfmt.record import decode_tensor

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(os.path.dirname(HERE), "spec", "vectors")
NAMES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(VECTORS, "*.dcz")))


def _expected(name):
    with open(os.path.join(VECTORS, name + ".json")) as f:
        return json.load(f)


def _bytes(name):
    with open(os.path.join(VECTORS, name + ".dcz"), "rb") as f:
        return f.read()


def _check(out, exp):
    assert list(out) == [t["name"] for t in exp["tensors"]]
    for t in exp["tensors"]:
        a = out[t["name"]]
        assert list(a.shape) == t["shape"]
        assert a.dtype == from_name(t["dtype"]).numpy
        assert np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes() == bytes.fromhex(t["data"])


class ShortReads(io.RawIOBase):
    """A stream that returns 1..max_read bytes per read (numpy's BytesIOSRandomSize)."""

    def __init__(self, data, seed, max_read=7):
        self._buf = io.BytesIO(data)
        self._rng = random.Random(seed)
        self._max = max_read

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self._rng.randint(1, self._max))
        chunk = self._buf.read(n)
        b[: len(chunk)] = chunk
        return len(chunk)


def test_there_are_enough_vectors():
    assert len(NAMES) >= 12
    for name in NAMES:
        assert os.path.exists(os.path.join(VECTORS, name + ".json"))


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_expected(name):
    exp = _expected(name)
    data = _bytes(name)
    assert len(data) == exp["bytes"]
    _check(dcfmt.load(os.path.join(VECTORS, name + ".dcz")), exp)
    _check(dcfmt.decode(data), exp)
    assert dcfmt.load_metadata(data) == exp["metadata"]


@pytest.mark.parametrize("name", NAMES)
def test_vector_streams_with_short_reads(name):
    exp = _expected(name)
    with dcfmt.Reader(ShortReads(_bytes(name), seed=len(name))) as r:
        out = {k: v.copy() for k, v in r}
    _check(out, exp)


@pytest.mark.parametrize("method", ["bitarray", "lockstep", "batched"])
@pytest.mark.parametrize("name", NAMES)
def test_vector_huffman_decoders_agree(name, method, monkeypatch):
    """Every Huffman decoder, forced on every stream, gives the expected tensors."""
    with dcfmt.Reader(_bytes(name)) as r:
        recs = list(r.records())
    streams = [s for rec in recs
               for s in (rec.indices, rec.relative.stream if rec.relative else None)
               if s is not None and s.n_symbols]
    pre = None
    if method == "batched":
        # all of the file's streams in one lock-step pass, as Reader batches them
        pre = {s.offset: a for s, a in zip(streams, huffman.decode_many(streams))}
        method = "auto"
    real = huffman.decode_chunks
    calls = []

    def forced(stream, first, last, what="stream", tensor=None, *, method="auto"):
        calls.append(stream.n_chunks)
        return real(stream, first, last, what, tensor, method=forced_method)

    forced_method = method
    monkeypatch.setattr(huffman, "decode_chunks", forced)
    out = {rec.name: decode_tensor(rec, method=method, pre=pre) for rec in recs}
    _check(out, _expected(name))
    # every non-empty Huffman stream went through the forced decoder, or none did
    assert len(calls) == (0 if pre is not None else len(streams))


def test_generator_never_overwrites(tmp_path):
    # the generator only writes files that do not exist yet
    import subprocess
    import sys

    before = {n: _bytes(n) for n in NAMES}
    out = subprocess.run([sys.executable, os.path.join(VECTORS, "generate.py")], capture_output=True,
                         text=True, check=True)
    assert "0 new vectors" in out.stdout
    assert {n: _bytes(n) for n in NAMES} == before
