"""dcfmt.validate and `dcz validate`: findings, exit codes, and validate == load."""

import glob
import io
import json
import os
import struct
import zlib

import numpy as np
from hypothesis import given, settings, strategies as st

import dcfmt
from dcfmt import cli
from dcfmt.constants import Layout
from dcfmt.dtypes import DType
from dcfmt.errors import DczError
from dcfmt.record import TensorCode

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec", "vectors")
PATHS = sorted(glob.glob(os.path.join(VECTORS, "*.dcz")))
SMALL = [p for p in PATHS if os.path.getsize(p) < 2000]


def test_every_vector_is_valid():
    for path in PATHS:
        report = dcfmt.validate(path)
        assert report.valid, report.findings
        version = "1.1" if os.path.basename(path) == "grouped_indices.dcz" else "1.0"
        assert report.version == version and report.file_bytes == os.path.getsize(path)
        assert report.tensors == len(dcfmt.load(path))
        json.dumps(report.to_dict())


def _loads(data):
    try:
        dcfmt.decode(data)
        return True
    except DczError:
        return False


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SMALL), st.data())
def test_validate_passes_exactly_when_load_succeeds(path, data):
    raw = bytearray(open(path, "rb").read())
    op = data.draw(st.sampled_from(["set", "truncate", "extend", "none"]))
    if op == "set":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    elif op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif op == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=8))
    checksums = data.draw(st.booleans())
    report = dcfmt.validate(bytes(raw), checksums=checksums)
    if checksums:
        assert report.valid == _loads(bytes(raw))
    else:
        assert report.valid or report.findings[0].error != "ChecksumError"


def _file_with_two_broken_tensors():
    """Two tensors whose Huffman payloads were altered, with checksums recomputed."""
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(40, 40)).astype(np.float32),
               "b": rng.normal(size=(40, 40)).astype(np.float32),
               "c": np.arange(10, dtype=np.int8)}
    data = bytearray(dcfmt.encode(tensors, plan=dcfmt.FixedPlan(bits=4)))
    with dcfmt.Reader(bytes(data)) as r:
        recs = {rec.name: rec for rec in r.records()}
    for name in ("a", "b"):
        stream = recs[name].indices
        # set the payload's first byte to ones: the first chunk no longer ends where it must
        at = stream.offset + stream.size - len(stream.payload)
        data[at] = 0xFF
        data[at + 1] = 0xFF
        rec = recs[name]
        body_end = rec.offset + rec.size - 4
        data[body_end : body_end + 4] = struct.pack("<I", zlib.crc32(bytes(data[rec.offset : body_end])))
    return bytes(data)


def test_every_broken_tensor_is_reported():
    report = dcfmt.validate(_file_with_two_broken_tensors())
    assert not report.valid
    assert [f.tensor for f in report.findings] == ["a", "b"]
    assert {f.rule for f in report.findings} == {"HUF-11"}
    assert all(f.offset is not None for f in report.findings)


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_valid_files_exit_0(capsys):
    code, out, err = _run(capsys, "validate", *PATHS[:3])
    assert code == 0 and out.count("valid") == 3 and not err


def test_cli_invalid_file_exit_1_one_line_per_finding(tmp_path, capsys):
    p = tmp_path / "bad.dcz"
    p.write_bytes(_file_with_two_broken_tensors())
    code, out, err = _run(capsys, "validate", str(p))
    assert code == cli.EXIT_INVALID
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("HUF-11" in line for line in lines)
    assert "Traceback" not in out + err


def test_cli_io_error_exit_3(tmp_path, capsys):
    code, out, err = _run(capsys, "validate", str(tmp_path / "missing.dcz"))
    assert code == cli.EXIT_IO and "I/O error" in err and "Traceback" not in err


def _huge_tensor_file():
    code = TensorCode("huge", DType.FLOAT32, (1 << 40,), layout=Layout.RELATIVE,
                      positions=np.zeros(0, np.int64), index_bits=1, raw=np.zeros(0, np.float32))
    buf = io.BytesIO()
    with dcfmt.Writer(buf) as w:
        w.write_code(code)
    return buf.getvalue()


def test_cli_limit_exceeded_exit_4(tmp_path, capsys):
    p = tmp_path / "bomb.dcz"
    p.write_bytes(_huge_tensor_file())
    assert len(p.read_bytes()) < 100
    code, out, err = _run(capsys, "validate", str(p))
    assert code == cli.EXIT_LIMIT and "LIM-1" in out


def test_cli_unsupported_exit_5(tmp_path, capsys):
    data = bytearray(open(os.path.join(VECTORS, "metadata.dcz"), "rb").read())
    data[8] = 2  # major version 2
    p = tmp_path / "v2.dcz"
    p.write_bytes(bytes(data))
    code, out, err = _run(capsys, "validate", str(p))
    assert code == cli.EXIT_UNSUPPORTED and "HDR-2" in out


def test_cli_worst_file_decides_and_json(tmp_path, capsys):
    p = tmp_path / "bomb.dcz"
    p.write_bytes(_huge_tensor_file())
    code, out, err = _run(capsys, "validate", "--json", PATHS[0], str(p))
    assert code == cli.EXIT_LIMIT
    reports = json.loads(out)
    assert [r["valid"] for r in reports] == [True, False]
    assert reports[1]["findings"][0]["rule"] == "LIM-1"


def test_cli_no_checksums(tmp_path, capsys):
    data = bytearray(open(os.path.join(VECTORS, "dense_raw_all_dtypes.dcz"), "rb").read())
    data[-40] ^= 1  # inside the index record: with checksums off the index still parses? maybe not
    rec_data = bytearray(open(os.path.join(VECTORS, "dense_codebook.dcz"), "rb").read())
    with dcfmt.Reader(bytes(rec_data)) as r:
        rec = next(r.records())
    # flip a bit of a codebook value: structurally valid, only the CRC notices
    at = rec.sections[4][0] + 3
    rec_data[at] ^= 1
    p = tmp_path / "f.dcz"
    p.write_bytes(bytes(rec_data))
    assert _run(capsys, "validate", str(p))[0] == cli.EXIT_INVALID
    code, out, _ = _run(capsys, "validate", "--no-checksums", str(p))
    assert code == 0 and "checksums not checked" in out
