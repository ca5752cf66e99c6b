"""Every single-bit flip and every truncation of every golden vector is detected.

For each corrupted file: ``dcfmt.validate`` reports it invalid, ``dcfmt.load``
raises a DczError (and nothing else), and the lazy loader raises a DczError
from ``open`` or from reading the metadata and every tensor -- except for
bytes the lazy loader never reads by design (an unknown OPTIONAL record,
which only the full walk checks).
"""

import glob
import os

import pytest

import dcfmt
from dcfmt.errors import DczError

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec", "vectors")
PATHS = sorted(glob.glob(os.path.join(VECTORS, "*.dcz")))


def _lazy_read_all(path):
    with dcfmt.open(path) as f:
        f.metadata()
        for name in f.keys():
            f[name]


def _unread_by_lazy(data):
    """Byte ranges of records the lazy loader skips (unknown optional kinds)."""
    with dcfmt.Reader(data) as r:
        list(r.records())
        entries = r.entries
    return [(e.offset, e.offset + e.length) for e in entries if e.kind not in (1, 2)]


@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p) for p in PATHS])
def test_every_bit_flip_is_detected(path, tmp_path):
    data = open(path, "rb").read()
    skipped = _unread_by_lazy(data)
    target = tmp_path / "flipped.dcz"
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            bad = bytes(bad)
            report = dcfmt.validate(bad)
            assert not report.valid, f"flip of byte {i} bit {bit} not reported"
            with pytest.raises(DczError):
                dcfmt.decode(bad)
            if any(a <= i < b for a, b in skipped):
                continue
            target.write_bytes(bad)
            with pytest.raises(DczError):
                _lazy_read_all(target)


@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p) for p in PATHS])
def test_every_truncation_is_detected(path, tmp_path):
    data = open(path, "rb").read()
    target = tmp_path / "short.dcz"
    for n in range(len(data)):
        short = data[:n]
        assert not dcfmt.validate(short).valid
        with pytest.raises(DczError):
            dcfmt.decode(short)
        target.write_bytes(short)
        with pytest.raises(DczError):
            _lazy_read_all(target)
