"""Crash-safe writers under faults (RELIABILITY.md, "Writers under faults"; ARCHITECTURE.md 11).

For every fault: the target holds its old bytes (or nothing, if it did not
exist) or a complete valid file that decodes to the intended tensors; the
source is unchanged; the failure is reported.

* SIGKILL at every file operation of a write (each ``write``, also half-done,
  ``flush``, ``fsync``, ``close``, ``os.replace`` and the directory fsync):
  ``dcfmt.save`` and ``dcz convert`` run in forked children of one driver
  process, so hundreds of kill points cost one interpreter start.  After a
  SIGKILL, temporary files ``.<name>.<random>.tmp`` beside the target may
  remain (nothing can remove them); they never carry the target's name.
* ENOSPC and EIO on write, flush, fsync, close, rename and the directory
  fsync, in process: the call raises ``OSError`` with that errno (never a
  ``DczError``), the temporary file is removed, the target keeps its old bytes
  -- except for a failed fsync of the directory, which comes after the rename:
  then the target already is the complete new file, and the ``OSError`` says
  that its durability is not known.
* The input raising or ending mid-way, the output pipe closing early, the same
  path as input and output, and two writers racing for one path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pytest

import dcfmt
from dcfmt import cli
from dcfmt.errors import DczError, EncodeError, TruncatedError

safetensors_numpy = pytest.importorskip("safetensors.numpy")
from dcfmt.converters import convert  # noqa: E402  (after the importorskip)
from dcfmt.converters import formats as cformats  # noqa: E402

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sha(path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def _tensors(n: int, seed: int, rows: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"layer{i:02d}.weight": rng.normal(size=(rows, 4 + i)).astype(np.float32)
           for i in range(n)}
    out["bias"] = np.arange(70, dtype=np.float32)  # 280 bytes: an ALIGNED record, with padding
    out["mask"] = rng.random(30) < 0.5
    out["step"] = np.array(seed, dtype=np.int64)  # a 0-d tensor
    return out


def _same(got: dict, want: dict) -> bool:
    return list(sorted(got)) == list(sorted(want)) and all(
        np.asarray(got[k]).dtype == np.asarray(want[k]).dtype
        and np.asarray(got[k]).shape == np.asarray(want[k]).shape
        and np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes() for k in want)


def _tmp_pattern(target) -> re.Pattern:
    return re.compile(r"^\." + re.escape(os.path.basename(target)) + r"\.[A-Za-z0-9_]+\.tmp$")


# ---------------------------------------------------------------------------
# SIGKILL at many points of a write
# ---------------------------------------------------------------------------

DRIVER = r'''
"""Fork a writer per kill point; SIGKILL it before its k-th file operation (see test_faults.py)."""
import hashlib, json, os, shutil, signal, sys, time

cfg_all = json.load(open(sys.argv[1]))
import numpy as np
import dcfmt
from dcfmt import cli
import dcfmt.converters.cli, dcfmt.converters.convert, dcfmt.converters.formats  # noqa: F401
import safetensors.numpy  # noqa: F401  (everything imported before forking)


def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


class Killer:
    def __init__(self, k, half, log):
        self.n, self.k, self.half, self.log = 0, k, half, log

    def event(self, kind, data=None, real=None):
        self.n += 1
        if self.log is not None:
            self.log.append(kind)
        if self.n == self.k:
            if self.half and data is not None:
                view = memoryview(data).cast("B")
                real.write(view[: len(view) // 2])  # half the bytes reach the file, then death
                real.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class Proxy:
    def __init__(self, real, killer):
        self._real, self._killer = real, killer

    def write(self, data):
        self._killer.event("write", data, self._real)
        return self._real.write(data)

    def flush(self):
        self._killer.event("flush")
        return self._real.flush()

    def close(self):
        self._killer.event("close")
        return self._real.close()

    def __getattr__(self, name):
        return getattr(self._real, name)


def job(cfg, killer, tensors):
    real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace
    os.fdopen = lambda *a, **kw: Proxy(real_fdopen(*a, **kw), killer)

    def fsync(fd):
        killer.event("fsync")
        return real_fsync(fd)

    def replace(a, b):
        killer.event("replace")
        return real_replace(a, b)

    os.fsync, os.replace = fsync, replace
    if cfg["mode"] == "save":
        dcfmt.save(tensors, cfg["target"], plan="lossless", metadata={"gen": "new"})
        return 0
    return cli.main(cfg["argv"])


def run(cfg, tensors, k, half, log=None):
    pid = os.fork()
    if pid == 0:
        code = 97
        try:
            code = job(cfg, Killer(k, half, log), tensors)
            if log is not None:
                with open(cfg["events_out"], "w") as f:
                    json.dump(log, f)
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            sys.stderr.write(f"child failed: {exc!r}\n")
            code = 98
        finally:
            os._exit(code if isinstance(code, int) else 99)
    _, status = os.waitpid(pid, 0)
    return status


def reset(cfg):
    d = os.path.dirname(cfg["target"])
    for name in os.listdir(d):
        if name not in cfg["keep"]:
            os.unlink(os.path.join(d, name))
    if cfg["old"] is not None:
        shutil.copyfile(cfg["old"], cfg["target"])


def warm_up(cfg, tensors):
    """Run the job once in this process, so that lazy imports and caches are in place
    before forking (each child would pay for them again)."""
    scratch = cfg["target"] + ".warm"
    os.makedirs(scratch)
    if cfg["mode"] == "save":
        dcfmt.save(tensors, os.path.join(scratch, "w.dcz"), plan="lossless")
    else:
        argv = [a.replace(os.path.dirname(cfg["target"]), scratch) if i == 2 else a
                for i, a in enumerate(cfg["argv"])]
        assert cli.main(argv) == 0
    shutil.rmtree(scratch)


def scenario(cfg):
    tensors = dict(np.load(cfg["tensors"])) if cfg["mode"] == "save" else None
    reset(cfg)
    warm_up(cfg, tensors)
    status = run(cfg, tensors, 0, False, log=[])
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    events = json.load(open(cfg["events_out"]))
    points = [(k, False) for k in range(1, len(events) + 1)]
    points += [(k, True) for k in range(1, len(events) + 1) if events[k - 1] == "write"]
    if len(points) > cfg["max_points"]:
        keep = [p for p in points if events[p[0] - 1] != "write"]
        rest = [p for p in points if events[p[0] - 1] == "write"]
        step = len(rest) / max(1, cfg["max_points"] - len(keep))
        points = keep + [rest[int(i * step)] for i in range(cfg["max_points"] - len(keep))]
    d = os.path.dirname(cfg["target"])
    runs, seen = [], set()
    for k, half in points + [(0, False)]:  # the last run is not killed: the complete file
        reset(cfg)
        status = run(cfg, tensors, k, half)
        target = sha(cfg["target"])
        if target is not None and target not in seen:
            seen.add(target)
            shutil.copyfile(cfg["target"], os.path.join(cfg["contents"], target))
        runs.append({"k": k, "half": half, "event": events[k - 1] if k else None,
                     "signaled": os.WIFSIGNALED(status),
                     "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                     "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                     "target": target, "source": sha(cfg["source"]) if cfg["source"] else None,
                     "others": sorted(n for n in os.listdir(d) if n not in cfg["keep"]
                                      and n != os.path.basename(cfg["target"]))})
    reset(cfg)
    return {"events": events, "runs": runs}


results = {}
for name, cfg in cfg_all.items():
    t0 = time.perf_counter()
    results[name] = scenario(cfg)
    results[name]["seconds"] = time.perf_counter() - t0
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
'''


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    """Run every SIGKILL scenario in one driver process; returns (configs, results)."""
    base = tmp_path_factory.mktemp("kills")
    configs = {}

    def setup(name, mode, *, old_tensors=None, source=None, argv_extra=(), max_points=400,
              target_name="model.dcz", same_path=False, intended=None, metadata=None):
        d = base / name
        d.mkdir()
        (base / f"{name}.contents").mkdir()
        target = d / target_name
        keep = []
        old = None
        if old_tensors is not None:
            old = base / f"{name}.old"
            dcfmt.save(old_tensors, old, plan="lossless", metadata={"gen": "old"})
        src = None
        if source is not None:
            src = target if same_path else d / source[0]
            source[1](src)
            if same_path:
                old = base / f"{name}.old"
                old.write_bytes(src.read_bytes())
            else:
                keep.append(src.name)
        np.savez(base / f"{name}.npz", **intended)
        configs[name] = {
            "mode": mode, "target": str(target), "old": None if old is None else str(old),
            "source": None if src is None or same_path else str(src), "keep": keep,
            "tensors": str(base / f"{name}.npz"), "events_out": str(base / f"{name}.events"),
            "contents": str(base / f"{name}.contents"), "max_points": max_points,
            "argv": ["convert", str(src), str(target), "-q", *argv_extra]
            if src is not None else None,
            "intended": intended, "metadata": metadata,
            "old_sha": None if old is None else _sha(old),
        }

    new = _tensors(18, seed=1)
    setup("save_over_old", "save", old_tensors=_tensors(3, seed=9), intended=new,
          metadata={"gen": "new"}, max_points=160)
    setup("save_new_file", "save", intended=new, metadata={"gen": "new"}, max_points=20)
    st = _tensors(16, seed=2)
    setup("convert_safetensors", "convert", old_tensors=_tensors(2, seed=8), intended=st,
          argv_extra=("--lossless",), max_points=100,
          source=("in.safetensors", lambda p: safetensors_numpy.save_file(st, str(p))),
          metadata={})
    same = _tensors(6, seed=3)
    setup("convert_same_path", "convert", same_path=True, intended=same, max_points=40,
          source=("x.dcz", lambda p: dcfmt.save(same, p, plan="lossless", metadata={"gen": "1"})),
          argv_extra=("--lossless", "--metadata", "gen=2"), target_name="x.dcz",
          metadata={"gen": "2"})
    setup("convert_to_safetensors", "convert", old_tensors=None, intended=same, max_points=20,
          source=("in.dcz", lambda p: dcfmt.save(same, p, plan="lossless")),
          target_name="out.safetensors", metadata=None)

    cfg_path = base / "config.json"
    cfg_path.write_text(json.dumps({k: {kk: vv for kk, vv in v.items()
                                        if kk not in ("intended", "metadata", "old_sha")}
                                    for k, v in configs.items()}))
    out_path = base / "results.json"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(cfg_path), str(out_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return configs, json.loads(out_path.read_text())


def _load_any(path: str) -> tuple[dict, dict | None]:
    if path.endswith(".safetensors") or open(path, "rb").read(8) != b"\x89DCZ\r\n\x1a\n":
        return safetensors_numpy.load_file(path), None
    assert dcfmt.validate(path).valid, dcfmt.validate(path).findings
    return dcfmt.load(path), dcfmt.load_metadata(path)


@needs_fork
@pytest.mark.parametrize("name", ["save_over_old", "save_new_file", "convert_safetensors",
                                  "convert_same_path", "convert_to_safetensors"])
def test_sigkill_leaves_old_bytes_or_a_complete_file(kills, name):
    configs, results = kills
    cfg, res = configs[name], results[name]
    events, runs = res["events"], res["runs"]
    # the counted operations are the ones a crash-safe write is made of
    kinds = Counter(events)
    assert kinds["write"] >= 5 and kinds["fsync"] == 2 and kinds["replace"] == 1, kinds
    complete = runs[-1]
    assert complete["k"] == 0 and complete["exit"] == 0 and not complete["signaled"]
    new_sha = complete["target"]
    assert new_sha is not None and new_sha != cfg["old_sha"]
    # the complete file is valid and holds exactly the intended tensors (and metadata)
    got, meta = _load_any(os.path.join(cfg["contents"], new_sha))
    assert _same(got, cfg["intended"])
    if cfg["metadata"] is not None:
        assert meta == cfg["metadata"]
    allowed = {cfg["old_sha"], new_sha}  # old_sha None: the target did not exist
    pattern = _tmp_pattern(cfg["target"])
    states = Counter()
    leftovers = 0
    for r in runs[:-1]:
        where = f"killed before {r['event']} #{r['k']}{' (half written)' if r['half'] else ''}"
        assert r["signaled"] and r["signal"] == signal.SIGKILL, (where, r)
        assert r["target"] in allowed, f"{where}: the target holds something else"
        states["old" if r["target"] == cfg["old_sha"] else "new"] += 1
        if cfg["source"]:
            assert r["source"] == _sha(cfg["source"]), f"{where}: the source changed"
        for other in r["others"]:  # what else is in the directory: temporary files only
            assert pattern.match(other), f"{where}: unexpected file {other!r}"
        leftovers += bool(r["others"])
    # the kills straddle the commit: both outcomes were seen, at distinct points
    assert states["old"] and states["new"], states
    points = {(r["k"], r["half"]) for r in runs[:-1]}
    assert len(points) == len(runs) - 1
    if cfg["max_points"] >= 100:
        assert len(points) >= 100, len(points)
    # a kill after the temporary file exists and before the rename leaves it behind
    assert leftovers > 0
    # killed before the rename (or during it): the old bytes; after it: the new file
    rename = events.index("replace") + 1  # the k of the rename
    for r in runs[:-1]:
        assert r["target"] == (cfg["old_sha"] if r["k"] <= rename else new_sha), r


@needs_fork
def test_sigkill_points_add_up_to_hundreds(kills):
    _, results = kills
    total = sum(len(r["runs"]) - 1 for r in results.values())
    assert total >= 300, total


# ---------------------------------------------------------------------------
# ENOSPC / EIO on write, flush, fsync, close, rename, directory fsync (in process)
# ---------------------------------------------------------------------------


class Faults:
    """Count AtomicFile's file operations and make the k-th of one kind raise OSError(err)."""

    OPS = ("write", "flush", "fsync", "close", "replace", "dirfsync")

    def __init__(self, monkeypatch) -> None:
        self.counts: Counter = Counter()
        self.armed: tuple[str, int, int] | None = None
        real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace
        faults = self

        class FaultyFile:
            def __init__(self, real):
                self._real = real

            def write(self, data):
                faults.hit("write")
                return self._real.write(data)

            def flush(self):
                faults.hit("flush")
                return self._real.flush()

            def close(self):
                faults.hit("close")
                return self._real.close()

            def __getattr__(self, name):
                return getattr(self._real, name)

        def fsync(fd):
            faults.hit("dirfsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
            return real_fsync(fd)

        def replace(a, b):
            faults.hit("replace")
            return real_replace(a, b)

        monkeypatch.setattr(os, "fdopen", lambda *a, **kw: FaultyFile(real_fdopen(*a, **kw)))
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def arm(self, op: str | None, k: int = 1, err: int = errno.ENOSPC) -> None:
        self.counts.clear()
        self.armed = None if op is None else (op, k, err)

    def hit(self, op: str) -> None:
        self.counts[op] += 1
        if self.armed and self.armed[0] == op and self.counts[op] == self.armed[1]:
            raise OSError(self.armed[2], os.strerror(self.armed[2]))


@pytest.fixture
def faults(monkeypatch):
    return Faults(monkeypatch)


SRC = _tensors(5, seed=4)
OLD = _tensors(2, seed=5)


def _prepare(d, scenario: str):
    """Files for ``scenario``: returns (run, target, source, intended tensors)."""
    d.mkdir(exist_ok=True)
    for name in os.listdir(d):
        os.unlink(d / name)
    if scenario == "save":
        target = d / "out.dcz"
        dcfmt.save(OLD, target, plan="lossless")
        return (lambda: dcfmt.save(SRC, target, plan="lossless")), target, None
    if scenario == "st_to_dcz":
        src, target = d / "in.safetensors", d / "out.dcz"
        safetensors_numpy.save_file(SRC, str(src))
        dcfmt.save(OLD, target, plan="lossless")
        return (lambda: convert(str(src), str(target), plan="lossless")), target, src
    if scenario in ("dcz_to_st", "dcz_to_npz"):
        src = d / "in.dcz"
        target = d / ("out.safetensors" if scenario == "dcz_to_st" else "out.npz")
        dcfmt.save(SRC, src, plan="lossless")
        target.write_bytes(b"old bytes of the target")
        return (lambda: convert(str(src), str(target))), target, src
    if scenario == "same_dcz":
        target = d / "x.dcz"
        dcfmt.save(SRC, target, plan="lossless", metadata={"gen": "1"})
        return (lambda: convert(str(target), str(target), plan="lossless",
                                metadata={"gen": "2"})), target, None
    if scenario == "same_st":
        target = d / "x.safetensors"
        safetensors_numpy.save_file(SRC, str(target), metadata={"gen": "1"})
        return (lambda: convert(str(target), str(target), metadata={"gen": "2"})), target, None
    raise AssertionError(scenario)


def _check_new(target) -> None:
    got, _ = _load_any(str(target)) if not str(target).endswith(".npz") else \
        (dict(np.load(target)), None)
    got.pop("__metadata__", None)
    assert _same(got, SRC)


SCENARIOS = ["save", "st_to_dcz", "dcz_to_st", "dcz_to_npz", "same_dcz", "same_st"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_enospc_and_eio_on_every_file_operation(tmp_path, faults, scenario, err):
    d = tmp_path / "w"
    run, target, src = _prepare(d, scenario)
    faults.arm(None)
    run()  # a dry run counts the operations
    total = dict(faults.counts)
    assert total["write"] >= 1 and total["fsync"] == 1 and total["replace"] == 1, total
    assert total["dirfsync"] == 1 and total["close"] >= 1, total
    _check_new(target)
    tried = 0
    for op in Faults.OPS:
        n = total.get(op, 0)
        for k in sorted({1, (n + 1) // 2, n} - {0}):
            run, target, src = _prepare(d, scenario)
            old, source = _sha(target), _sha(src) if src else None
            faults.arm(op, k, err)
            where = f"{scenario}: {os.strerror(err)} on {op} #{k} of {n}"
            with pytest.raises(OSError) as ei:
                run()
            assert ei.value.errno == err and not isinstance(ei.value, DczError), where
            assert faults.counts[op] >= k, where
            faults.arm(None)
            assert sorted(os.listdir(d)) == sorted(p.name for p in (target, src) if p), \
                f"{where}: temporary file left: {os.listdir(d)}"
            if src is not None:
                assert _sha(src) == source, f"{where}: the source changed"
            if op == "dirfsync":  # after the rename: the complete new file, durability unknown
                _check_new(target)
            else:
                assert _sha(target) == old, f"{where}: the target changed"
            tried += 1
    assert tried >= len(Faults.OPS) + 2


def test_enospc_through_dcz_convert_exits_3(tmp_path, faults, capsys):
    run, target, src = _prepare(tmp_path / "w", "st_to_dcz")
    old = _sha(target)
    faults.arm("write", 3, errno.ENOSPC)
    assert cli.main(["convert", str(src), str(target), "--lossless", "-q"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "No space left on device" in err
    assert "Traceback" not in err
    assert _sha(target) == old and sorted(os.listdir(target.parent)) == ["in.safetensors", "out.dcz"]


def test_failed_npz_write_closes_its_archive(tmp_path, faults, monkeypatch):
    """An aborted .npz sink closes its ZipFile: else, collected later, it writes to the closed
    temporary file and prints "Exception ignored in ZipFile.__del__" after the one-line error."""
    import gc

    run, target, src = _prepare(tmp_path / "w", "dcz_to_npz")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    faults.arm("write", 5, errno.EIO)
    with pytest.raises(OSError):
        run()
    gc.collect()
    assert not unraisable, [u.exc_value for u in unraisable]
    assert sorted(os.listdir(target.parent)) == ["in.dcz", "out.npz"]


@pytest.mark.parametrize("out", ["out.npz", "out.pt"])
def test_sink_refusing_at_start_leaves_no_temporary_file(tmp_path, monkeypatch, out):
    src = tmp_path / "in.safetensors"
    if out.endswith(".npz"):  # a name that would be a path out of the archive
        safetensors_numpy.save_file({"../evil": np.ones(3, np.float32)}, str(src))
        expected = cformats.ConvertError
    else:  # torch missing
        from dcfmt.converters import torch_io

        safetensors_numpy.save_file(SRC, str(src))

        def no_torch():
            raise cformats.UnsupportedInputError("torch is not installed")
        monkeypatch.setattr(torch_io, "require_torch", no_torch)
        expected = cformats.UnsupportedInputError
    with pytest.raises(expected):
        convert(str(src), str(tmp_path / out))
    assert os.listdir(tmp_path) == ["in.safetensors"]


def test_writer_object_on_failed_write_is_aborted(tmp_path, faults):
    target = tmp_path / "out.dcz"
    target.write_bytes(b"old")
    faults.arm("write", 4, errno.EIO)
    w = dcfmt.Writer(target, plan="lossless")
    with pytest.raises(OSError):
        for name in sorted(SRC):
            w.write(name, SRC[name])
    with pytest.raises(EncodeError, match="aborted"):
        w.write("late", np.ones(3))
    w.close()  # a no-op once aborted
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.dcz"]


# ---------------------------------------------------------------------------
# The input raising or ending mid-way
# ---------------------------------------------------------------------------


class RaisingTensors(Mapping):
    """A mapping of tensors whose n-th lookup raises (a source that fails mid-way)."""

    def __init__(self, tensors, n):
        self._t, self._n, self.looked = tensors, n, 0

    def __getitem__(self, name):
        self.looked += 1
        if self.looked == self._n:
            raise RuntimeError("the source failed")
        return self._t[name]

    def __iter__(self):
        return iter(self._t)

    def __len__(self):
        return len(self._t)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_save_from_a_source_that_raises(tmp_path, n):
    target = tmp_path / "out.dcz"
    dcfmt.save(OLD, target, plan="lossless")
    old = _sha(target)
    src = RaisingTensors(SRC, n)
    with pytest.raises(RuntimeError, match="the source failed"):
        dcfmt.save(src, target, plan="lossless")
    assert src.looked == n
    assert _sha(target) == old and os.listdir(tmp_path) == ["out.dcz"]


def test_writer_block_that_raises_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.dcz"
    target.write_bytes(b"old")

    def tensors():
        yield from list(SRC.items())[:2]
        raise KeyError("iterator failed")

    with pytest.raises(KeyError):
        with dcfmt.Writer(target, plan="lossless") as w:
            for name, array in tensors():
                w.write(name, array)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.dcz"]


class FailingFile:
    """A file that delivers ``limit`` bytes, then raises EIO (``mode='raise'``) or ends."""

    def __init__(self, f, limit: int, mode: str) -> None:
        self._f, self._limit, self._mode, self.pos = f, limit, mode, 0

    def _room(self, n: int) -> int:
        if self.pos >= self._limit:
            if self._mode == "raise":
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return 0
        return min(n, self._limit - self.pos)

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        got = self._f.readinto(view[: self._room(len(view))]) or 0
        self.pos += got
        return got

    def read(self, n: int = -1) -> bytes:
        n = self._limit if n is None or n < 0 else n
        data = self._f.read(self._room(n))
        self.pos += len(data)
        return data

    def close(self) -> None:
        self._f.close()


@pytest.mark.parametrize("mode", ["raise", "eof"])
@pytest.mark.parametrize("out", ["out.safetensors", "out.dcz", "out.npz"])
def test_convert_from_a_dcz_whose_reads_fail(tmp_path, monkeypatch, mode, out):
    import dcfmt.reader

    src, target = tmp_path / "in.dcz", tmp_path / out
    dcfmt.save(SRC, src, plan="lossless")
    target.write_bytes(b"old bytes")
    source = _sha(src)
    limit = src.stat().st_size // 2
    opened = []

    def failing_open(path, mode_="rb", *a, **kw):
        f = FailingFile(open(path, mode_, *a, **kw), limit, mode)
        opened.append(f)
        return f

    monkeypatch.setattr(dcfmt.reader, "open", failing_open, raising=False)
    expected = OSError if mode == "raise" else TruncatedError
    with pytest.raises(expected) as ei:
        convert(str(src), str(target), plan="lossless")
    if mode == "eof":
        assert ei.value.rule == "FIL-1"
    else:
        assert ei.value.errno == errno.EIO and not isinstance(ei.value, DczError)
    assert opened and opened[0].pos == limit  # it failed mid-way, not at the start
    assert target.read_bytes() == b"old bytes" and _sha(src) == source
    assert sorted(os.listdir(tmp_path)) == sorted(["in.dcz", out])


def test_load_from_a_stream_that_raises_reports_the_io_error(tmp_path):
    data = dcfmt.encode(SRC, plan="lossless")
    import io

    with pytest.raises(OSError) as ei:
        dcfmt.load(FailingFile(io.BytesIO(data), len(data) // 2, "raise"))
    assert ei.value.errno == errno.EIO and not isinstance(ei.value, DczError)
    with pytest.raises(TruncatedError):
        dcfmt.load(FailingFile(io.BytesIO(data), len(data) // 2, "eof"))


def test_convert_from_a_safetensors_source_that_raises(tmp_path, monkeypatch):
    src, target = tmp_path / "in.safetensors", tmp_path / "out.dcz"
    safetensors_numpy.save_file(SRC, str(src))
    dcfmt.save(OLD, target, plan="lossless")
    old, source = _sha(target), _sha(src)
    real = cformats.SafetensorsSource.read
    calls = []

    def read(self, name):
        calls.append(name)
        if len(calls) == 4:
            raise OSError(errno.EIO, "disk read error")
        return real(self, name)

    monkeypatch.setattr(cformats.SafetensorsSource, "read", read)
    with pytest.raises(OSError, match="disk read error"):
        convert(str(src), str(target), plan="lossless")
    assert len(calls) == 4
    assert _sha(target) == old and _sha(src) == source
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.dcz"]


# ---------------------------------------------------------------------------
# The output pipe closing early
# ---------------------------------------------------------------------------


def test_writer_to_a_pipe_whose_reader_closes_raises_broken_pipe():
    r, w = os.pipe()
    received = []

    def reader():
        received.append(os.read(r, 100))
        os.close(r)

    th = threading.Thread(target=reader)
    th.start()
    big = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)  # 1 MiB
    with os.fdopen(w, "wb", buffering=0) as f:
        writer = dcfmt.Writer(f, plan="lossless")
        with pytest.raises(BrokenPipeError):
            writer.write("a", big)
            writer.write("b", big)
            writer.close()
        th.join()
        with pytest.raises(EncodeError, match="aborted"):
            writer.write("c", big)
        writer.close()  # a no-op once aborted: no second error
    assert received and received[0][:8] == b"\x89DCZ\r\n\x1a\n"


def test_save_to_a_closed_pipe_raises_broken_pipe_and_nothing_else():
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "wb", buffering=0) as f:
        with pytest.raises(BrokenPipeError) as ei:
            dcfmt.save(SRC, f, plan="lossless")
    assert type(ei.value) is BrokenPipeError and ei.value.__cause__ is None


# ---------------------------------------------------------------------------
# The same path as input and output
# ---------------------------------------------------------------------------


def test_convert_dcz_onto_itself(tmp_path, capsys):
    x = tmp_path / "x.dcz"
    dcfmt.save(SRC, x, plan="lossless", metadata={"gen": "1"})
    before = x.read_bytes()
    assert cli.main(["convert", str(x), str(x), "--lossless", "-q", "--metadata", "gen=2"]) == 0
    assert x.read_bytes() != before and dcfmt.validate(x).valid
    assert _same(dcfmt.load(x), SRC) and dcfmt.load_metadata(x) == {"gen": "2"}
    assert os.listdir(tmp_path) == ["x.dcz"]


def test_convert_safetensors_onto_itself(tmp_path):
    x = tmp_path / "x.safetensors"
    safetensors_numpy.save_file(SRC, str(x), metadata={"gen": "1"})
    convert(str(x), str(x), metadata={"gen": "2"})
    assert _same(safetensors_numpy.load_file(str(x)), SRC)
    from safetensors import safe_open

    with safe_open(str(x), framework="np") as f:
        assert f.metadata() == {"gen": "2"}
    assert os.listdir(tmp_path) == ["x.safetensors"]


@pytest.mark.parametrize("name", ["x.dcz", "x.safetensors"])
@pytest.mark.parametrize("failure", ["verify", "replace", "write", "input"])
def test_same_path_conversion_that_fails_leaves_the_source_intact(tmp_path, monkeypatch, faults,
                                                                  name, failure):
    x = tmp_path / name
    if name.endswith(".dcz"):
        dcfmt.save(SRC, x, plan="lossless", metadata={"gen": "1"})
    else:
        safetensors_numpy.save_file(SRC, str(x), metadata={"gen": "1"})
    before = x.read_bytes()
    if failure == "verify" and name.endswith(".dcz"):
        # the read-back (while writing) finds something else than the encoder meant
        real = cformats.matches_code

        def flipped(array, code):
            seen = np.array(array)
            seen.reshape(-1).view(np.uint8)[0] ^= 1
            return real(seen, code)
        monkeypatch.setattr(cformats, "matches_code", flipped)
        expected = cformats.VerificationError
    elif failure == "verify":  # a bit of the finished temporary file rots before the read-back
        real_check = cformats.SafetensorsSink._check

        def rot_then_check(self, tmp):
            with open(tmp, "r+b") as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)[0]
                f.seek(-1, os.SEEK_END)
                f.write(bytes([last ^ 1]))
            return real_check(self, tmp)
        monkeypatch.setattr(cformats.SafetensorsSink, "_check", rot_then_check)
        expected = cformats.VerificationError
    elif failure == "input":
        real_read = cformats.DczSource.read if name.endswith(".dcz") else \
            cformats.SafetensorsSource.read
        cls = cformats.DczSource if name.endswith(".dcz") else cformats.SafetensorsSource

        def read(self, tensor, _n=[0]):
            _n[0] += 1
            if _n[0] == 3:
                raise OSError(errno.EIO, "input failed")
            return real_read(self, tensor)
        monkeypatch.setattr(cls, "read", read)
        expected = OSError
    else:
        faults.arm(failure, 2 if failure == "write" else 1, errno.ENOSPC)
        expected = OSError
    with pytest.raises(expected):
        convert(str(x), str(x), plan="lossless" if name.endswith(".dcz") else None,
                metadata={"gen": "2"})
    assert x.read_bytes() == before and os.listdir(tmp_path) == [name]


# ---------------------------------------------------------------------------
# Two writers to one path
# ---------------------------------------------------------------------------


def test_two_threads_saving_to_one_path(tmp_path):
    a = {"w": np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32),
         "tag": np.int8(1)}
    b = {"w": np.random.default_rng(2).normal(size=(300, 200)).astype(np.float32),
         "tag": np.int8(2), "extra": np.ones(1000, np.float64)}
    enc = {dcfmt.encode(a, plan="lossless"), dcfmt.encode(b, plan="lossless")}
    assert len(enc) == 2
    target = tmp_path / "same.dcz"
    winners = Counter()
    for _ in range(6):
        barrier = threading.Barrier(2)
        errors = []

        def save(t):
            try:
                barrier.wait()
                dcfmt.save(t, target, plan="lossless")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(t,)) for t in (a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        data = target.read_bytes()
        assert data in enc, "the target is a mix of the two writes"
        winners[data == dcfmt.encode(a, plan="lossless")] += 1
        assert os.listdir(tmp_path) == ["same.dcz"]
    assert sum(winners.values()) == 6


RACER = r'''
import os, sys, time
from dcfmt import cli
import dcfmt.converters.cli, dcfmt.converters.convert  # noqa: F401
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.005)
sys.exit(cli.main(["convert", sys.argv[2], sys.argv[3], "--lossless", "-q"]))
'''


def test_two_processes_converting_to_one_path(tmp_path):
    a = {"w": np.random.default_rng(3).normal(size=(400, 300)).astype(np.float32)}
    b = {"w": np.random.default_rng(4).normal(size=(300, 500)).astype(np.float32),
         "b": np.zeros(7, np.float32)}
    safetensors_numpy.save_file(a, str(tmp_path / "a.safetensors"))
    safetensors_numpy.save_file(b, str(tmp_path / "b.safetensors"))
    target, go = tmp_path / "same.dcz", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(go), str(tmp_path / f"{n}.safetensors"),
                               str(target)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for n in "ab"]
    time.sleep(0.5)
    go.write_text("")
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert dcfmt.validate(target).valid
    got = dcfmt.load(target)
    assert _same(got, a) or _same(got, b)
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors", "go", "same.dcz"]
