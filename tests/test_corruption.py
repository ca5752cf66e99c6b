"""Every single-bit flip and every truncation of every golden vector is detected.

For each corrupted file: ``dcfmt.validate`` reports it invalid, ``dcfmt.load``
raises a DczError and nothing else (on every truncation and every third bit
flip; validate shares load's parser and decoder), and the lazy loader raises a DczError
from ``open`` or from reading the metadata and every tensor -- except for
bytes the lazy loader never reads by design (an unknown OPTIONAL record,
which only the full walk checks).

About 90,000 corrupted files: the work is spread over one process per core.
"""

import concurrent.futures
import glob
import multiprocessing
import os
import tempfile

import pytest

import dcfmt
from dcfmt.errors import DczError

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec", "vectors")
PATHS = sorted(glob.glob(os.path.join(VECTORS, "*.dcz")))
_SLICE = 64  # bytes of one vector per work item


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


def _problems(corrupted: bytes, lazy: bool, target: str, load: bool = True) -> list[str]:
    """What failed to reject ``corrupted``: "validate", "load", "lazy", or a non-DczError."""
    out = []
    if dcfmt.validate(corrupted).valid:
        out.append("validate")
    if load:
        try:
            dcfmt.decode(corrupted)
            out.append("load")
        except DczError:
            pass
        except Exception as exc:  # noqa: BLE001 - the contract: nothing but DczError
            out.append(f"load raised {type(exc).__name__}: {exc}")
    if lazy:
        with open(target, "wb") as f:
            f.write(corrupted)
        try:
            _lazy_read_all(target)
            out.append("lazy")
        except DczError:
            pass
        except Exception as exc:  # noqa: BLE001
            out.append(f"lazy raised {type(exc).__name__}: {exc}")
    return out


def _flips(args) -> list[str]:
    path, start, stop = args
    data = open(path, "rb").read()
    skipped = _unread_by_lazy(data)
    failures = []
    with tempfile.TemporaryDirectory() as d:
        target = os.path.join(d, "x.dcz")
        for i in range(start, min(stop, len(data))):
            lazy = not any(a <= i < b for a, b in skipped)
            for bit in range(8):
                bad = bytearray(data)
                bad[i] ^= 1 << bit
                # validate runs load's own parser and decoder (and the two are
                # compared on random mutations in test_validate and fuzz_validate),
                # so load itself runs on every third flip to keep CI fast
                for what in _problems(bytes(bad), lazy, target, load=(8 * i + bit) % 3 == 0):
                    failures.append(f"{os.path.basename(path)} byte {i} bit {bit}: {what}")
    return failures


def _truncations(args) -> list[str]:
    path, start, stop = args
    data = open(path, "rb").read()
    failures = []
    with tempfile.TemporaryDirectory() as d:
        target = os.path.join(d, "x.dcz")
        for n in range(start, min(stop, len(data))):
            for what in _problems(data[:n], True, target):
                failures.append(f"{os.path.basename(path)} prefix {n}: {what}")
    return failures


def _run(fn) -> list[str]:
    work = [(p, a, a + _SLICE) for p in PATHS for a in range(0, os.path.getsize(p), _SLICE)]
    workers = max(1, min(4, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return [f for part in pool.map(fn, work) for f in part]


def test_the_vectors_are_there():
    assert len(PATHS) >= 12


def test_every_bit_flip_is_detected():
    failures = _run(_flips)
    assert not failures, "\n".join(failures[:20])


def test_every_truncation_is_detected():
    failures = _run(_truncations)
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("path", PATHS[:1])
def test_the_check_itself_can_fail(path, tmp_path):
    # an uncorrupted vector is accepted by all three, so _problems reports it
    data = open(path, "rb").read()
    assert _problems(data, True, str(tmp_path / "x.dcz")) == ["validate", "load", "lazy"]
