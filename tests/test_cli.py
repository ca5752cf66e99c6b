"""dcfmt.cli: `dcz info` output and stable exit codes (spec 10), one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dcfmt
from builders import build, header, section, tensor_rec
from dcfmt import cli
from dcfmt.constants import SectionKind
from dcfmt.dtypes import DType
from dcfmt.plan import FixedPlan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    pruned = (rng.normal(size=(60, 40)) * 0.05).astype(np.float32)
    pruned[np.abs(pruned) < 0.05] = 0
    tensors = {"conv.weight": (rng.normal(size=(8, 4, 3, 3)) * 0.1).astype(np.float32),
               "fc.weight": pruned, "fc.bias": np.zeros(40, np.float32), "mask": rng.random(100) < 0.2,
               "scalar": np.float64(2.0), "empty": np.zeros((0,), np.int8)}
    path = tmp_path / "model.dcz"
    codes = dcfmt.save(tensors, path, plan=FixedPlan(bits=4), metadata={"arch": "lenet"})
    return path, tensors, codes


def test_info_table(model, capsys):
    path, tensors, _ = model
    assert cli.main(["info", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{path}: .dcz format 1.1, {len(tensors)} tensors")
    assert "arch = 'lenet'" in out
    for name in tensors:
        assert name in out
    assert "fc.weight" in out and "60x40" in out and "relative/codebook" in out
    assert "()" in out  # the scalar's shape
    lines = out.splitlines()
    assert any(line.startswith("total") for line in lines)


def test_info_json(model, capsys):
    path, tensors, codes = model
    assert cli.main(["info", "--json", str(path)]) == 0
    out, _ = capsys.readouterr()

    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    doc = json.loads(out, parse_constant=no_constants)
    assert doc["format_version"] == "1.1" and doc["metadata"] == {"arch": "lenet"}
    assert doc["file_bytes"] == os.path.getsize(path)
    by = {t["name"]: t for t in doc["tensors"]}
    assert list(by) == sorted(tensors)
    assert doc["decoded_bytes"] == sum(np.asarray(v).nbytes for v in tensors.values())
    fc = by["fc.weight"]
    assert fc["shape"] == [60, 40] and fc["dtype"] == "float32"
    assert fc["nnz"] == int(np.count_nonzero(tensors["fc.weight"]))
    assert fc["codebook"] <= 16 and fc["recipe"]["plan"] == "fixed"
    assert 0 < fc["pos_bits_huffman"] and fc["layout"] in ("relative", "bitmap")
    assert by["empty"]["numel"] == 0 and by["empty"]["kept"] == 1.0
    assert by["scalar"]["shape"] == []
    code = {c.name: c for c in codes}["fc.weight"]
    assert fc["layout"] == code.layout.name.lower()


def _one_line_error(capsys, code, argv):
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dcz: error: ") and err.endswith("\n") and err.count("\n") == 1
    assert "Traceback" not in err
    return err


def test_exit_codes(tmp_path, capsys, model):
    path, _, _ = model
    good = path.read_bytes()
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(good[:-1] + b"X")
    err = _one_line_error(capsys, cli.EXIT_INVALID, ["info", str(bad)])
    assert "TRL-1" in err
    bad.write_bytes(b"PK\x03\x04" + bytes(60))
    assert "zip archive" in _one_line_error(capsys, 1, ["info", str(bad)])
    bad.write_bytes(good[:100])
    _one_line_error(capsys, 1, ["info", str(bad)])
    _one_line_error(capsys, cli.EXIT_IO, ["info", str(tmp_path / "missing.dcz")])
    _one_line_error(capsys, cli.EXIT_IO, ["info", str(tmp_path)])  # a directory
    big = build([tensor_rec("t", DType.FLOAT32, (2**40,), sections=section(SectionKind.RAW, b""))])
    bad.write_bytes(big)
    assert "LIM-1" in _one_line_error(capsys, cli.EXIT_LIMIT, ["info", str(bad)])
    huge = build([tensor_rec("t", DType.FLOAT32, (2**62, 2**62), sections=section(SectionKind.RAW, b""))])
    bad.write_bytes(huge)
    assert "TEN-6" in _one_line_error(capsys, cli.EXIT_INVALID, ["info", str(bad)])
    bad.write_bytes(header(major=2) + good[16:])
    assert "HDR-2" in _one_line_error(capsys, cli.EXIT_UNSUPPORTED, ["info", str(bad)])
    bad.write_bytes(header(flags=1) + good[16:])
    assert "HDR-3" in _one_line_error(capsys, cli.EXIT_UNSUPPORTED, ["info", str(bad)])
    bad.write_bytes(build([tensor_rec("t", 77, (1,))]))
    assert "TEN-4" in _one_line_error(capsys, cli.EXIT_UNSUPPORTED, ["info", str(bad)])


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(b"nope")
    with pytest.raises(dcfmt.DczError):
        cli.main(["--debug", "info", str(bad)])


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([])
    assert ei.value.code == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as ei:
        cli.main(["frobnicate"])
    assert ei.value.code == 2
    capsys.readouterr()


def test_exit_code_mapping():
    assert cli.exit_code(dcfmt.LimitError("x")) == 4
    assert cli.exit_code(dcfmt.VersionError("x")) == 5
    assert cli.exit_code(dcfmt.UnsupportedFeatureError("x")) == 5
    assert cli.exit_code(dcfmt.ChecksumError("x")) == 1
    assert cli.exit_code(dcfmt.TruncatedError("x")) == 1
    assert cli.exit_code(FileNotFoundError()) == 3
    assert cli.exit_code(RuntimeError()) == 1


def test_module_entry_point(model):
    path, _, _ = model
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "dcfmt", "info", "--json", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metadata"] == {"arch": "lenet"}
