"""The ``dcz`` command on hostile input (RELIABILITY.md, "CLI"; spec 10).

``dcz info``, ``dcz validate`` and ``dcz convert`` on every file of the invalid
corpus (spec/vectors/invalid/) and on things that are not .dcz files at all
exit non-zero with the documented code, print one line on stderr (``validate``:
one line per finding on stdout), never a traceback, and ``convert`` leaves no
output and no temporary file behind.  Most runs call ``dcfmt.cli.main``
in-process; a few go through ``python -m dcfmt`` to see the real process.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import dcfmt
from dcfmt import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "spec", "vectors", "invalid")
with open(os.path.join(CORPUS, "manifest.json"), encoding="utf-8") as _f:
    VECTORS = json.load(_f)["vectors"]
IDS = [v["file"][:-4] for v in VECTORS]

EXIT_BY_CLASS = {"FormatError": 1, "TruncatedError": 1, "ChecksumError": 1, "VersionError": 5,
                 "UnsupportedFeatureError": 5, "LimitError": 4}

#: Files whose defect only a full decode finds (a Huffman payload, decoded sparse
#: positions, the CRC of an optional record nobody reads).  ``dcz info`` is a reader of
#: headers by design: it checks the index and each tensor record's framing, CRC and
#: headers, decodes nothing (so it is instant on any file), and prints its table; `dcz
#: validate` is the command that finds these (and does, in test_validate_on_every_invalid_file).
INFO_DECODES_NOTHING = {
    "rcd3_optional_record_crc", "huf11_one_symbol_bit_1", "huf11_chunk_overrun",
    "huf11_leftover_bits", "huf11_relative_stream", "spa2_real_entries_differ",
    "spa2_bitmap_count_differs", "spa3_trailing_filler", "spa4_position_past_end",
    "spa5_tables_disagree", "val7_last_group_not_completed_with_zero",
}
#: A .dcz-named file that is a valid safetensors file: ``dcz convert`` recognises inputs by
#: their bytes (converters/formats.py), so converting it succeeds, by design.
CONVERTS_AS_ANOTHER_FORMAT = {"hdr1_looks_like_safetensors"}


def _run(capsys, argv) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcz: error: "), err
    return lines[0]


def _lazy_exit(path: str) -> int:
    """The exit code of the error a lazy reader of ``path`` meets (what info and convert see)."""
    try:
        with dcfmt.open(path) as f:
            f.metadata()
            for name in f.keys():
                f.stats(name)
    except errors.DczError as exc:
        return EXIT_BY_CLASS[type(exc).__name__] if type(exc).__name__ in EXIT_BY_CLASS else 1
    return 0


@pytest.mark.parametrize("v", [v for v in VECTORS if v["file"][:-4] in INFO_DECODES_NOTHING],
                         ids=lambda v: v["file"][:-4])
def test_info_reads_headers_only(v, capsys):
    path = os.path.join(CORPUS, v["file"])
    rc, out, err = _run(capsys, ["info", path])
    assert rc == 0 and "total" in out and err == ""
    assert _run(capsys, ["validate", path])[0] == v["exit"] != 0


@pytest.mark.parametrize("v", [v for v in VECTORS if v["file"][:-4] not in INFO_DECODES_NOTHING],
                         ids=lambda v: v["file"][:-4])
def test_info_on_every_invalid_file(v, capsys):
    path = os.path.join(CORPUS, v["file"])
    rc, out, err = _run(capsys, ["info", path])
    assert rc != 0, out
    assert rc in (v["exit"], _lazy_exit(path))
    assert out == ""
    _one_error_line(err)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_validate_on_every_invalid_file(v, capsys):
    path = os.path.join(CORPUS, v["file"])
    rc, out, err = _run(capsys, ["validate", path])
    assert rc == v["exit"] and err == ""
    lines = out.splitlines()
    assert len(lines) == len(dcfmt.validate(path).findings) >= 1
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert v["rule"] in lines[0]


# every file to .npz, and a quarter of them to .dcz (through the verifying .dcz sink)
CONVERT_CASES = [pytest.param(v, "out.npz", id=f"{v['file'][:-4]}-npz") for v in VECTORS] + [
    pytest.param(v, "out.dcz", id=f"{v['file'][:-4]}-dcz") for v in VECTORS if v["id"] % 4 == 0]


@pytest.mark.parametrize("v,out_name", CONVERT_CASES)
def test_convert_on_every_invalid_file(v, out_name, tmp_path, capsys):
    path = os.path.join(CORPUS, v["file"])
    out = tmp_path / out_name
    argv = ["convert", path, str(out)] + (["--lossless"] if out_name.endswith(".dcz") else [])
    rc, stdout, err = _run(capsys, argv)
    if v["file"][:-4] in CONVERTS_AS_ANOTHER_FORMAT:
        assert rc == 0 and "the content is a safetensors file" in err  # with a note saying why
        return
    assert rc != 0 and rc in (v["exit"], _lazy_exit(path)), (rc, err)
    assert stdout == ""
    _one_error_line(err)
    assert os.listdir(tmp_path) == [], "an output or temporary file was left"


# ---------------------------------------------------------------------------
# Things that are not .dcz files
# ---------------------------------------------------------------------------


def _safetensors_head(tail: bytes) -> bytes:
    head = b'{"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + tail


@pytest.fixture
def non_files(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.dcz").write_bytes(b"")
    (tmp_path / "safetensors.dcz").write_bytes(_safetensors_head(bytes(3)))  # data cut short
    (tmp_path / "zip.dcz").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40))
    (tmp_path / "gguf.dcz").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(40))
    (tmp_path / "text.dcz").write_bytes("just some text, ünïcödé\n".encode())
    return tmp_path


# name -> (info, validate, convert) exit codes
NON_FILES = {
    "adir": (3, 3, 1),             # a directory (convert: not a sharded checkpoint)
    "missing.dcz": (3, 3, 3),      # no such file
    "empty.dcz": (1, 1, 1),
    "safetensors.dcz": (1, 1, 1),  # info/validate: HDR-1 "looks like safetensors"; convert: corrupt
    "zip.dcz": (1, 1, 1),
    "gguf.dcz": (1, 1, 1),
    "text.dcz": (1, 1, 1),
    "/dev/null": (1, 1, 1),
}
LOOKS = {"safetensors.dcz": "safetensors", "zip.dcz": "zip archive", "gguf.dcz": "GGUF"}


@pytest.mark.parametrize("name", list(NON_FILES))
def test_non_files(non_files, name, capsys):
    path = name if name.startswith("/") else str(non_files / name)
    info, validate, conv = NON_FILES[name]
    rc, out, err = _run(capsys, ["info", path])
    assert rc == info and out == ""
    line = _one_error_line(err)
    if name in LOOKS:
        assert "HDR-1" in line and f"looks like a {LOOKS[name]}" in line
    rc, out, err = _run(capsys, ["validate", path])
    assert rc == validate
    if validate == 3:  # an I/O error is not a finding: one line on stderr
        assert out == "" and len(err.splitlines()) == 1 and "I/O error" in err
    else:
        assert err == "" and len(out.splitlines()) == 1 and "HDR-1" in out
    before = sorted(os.listdir(non_files))
    for target in ("out.dcz", "out.safetensors"):
        rc, out, err = _run(capsys, ["convert", path, str(non_files / target)])
        assert rc == conv and out == ""
        _one_error_line(err)
        assert sorted(os.listdir(non_files)) == before


def test_convert_to_unwritable_places(tmp_path, capsys):
    src = tmp_path / "in.dcz"
    dcfmt.save({"w": np.ones(4, np.float32)}, src, plan="lossless")
    (tmp_path / "out.dcz").mkdir()  # the output path is a directory
    for target, code in ((tmp_path / "out.dcz", 3), (tmp_path / "nodir" / "x.dcz", 3),
                         (tmp_path / "x.unknown", 2)):
        rc, out, err = _run(capsys, ["convert", str(src), str(target)])
        assert rc == code, err
        _one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["in.dcz", "out.dcz"]
    assert os.listdir(tmp_path / "out.dcz") == []


def test_debug_shows_the_traceback(capsys):
    path = os.path.join(CORPUS, VECTORS[0]["file"])
    with pytest.raises(errors.DczError):
        cli.main(["--debug", "info", path])
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "info", path + ".missing"])


# ---------------------------------------------------------------------------
# Real processes: python -m dcfmt
# ---------------------------------------------------------------------------


def test_python_m_dcfmt_on_hostile_input(tmp_path):
    by = {v["rule"]: os.path.join(CORPUS, v["file"]) for v in VECTORS}
    many = tmp_path / "many.dcz"  # enough tensors that `dcz info` outgrows a pipe buffer
    with dcfmt.Writer(many, plan="lossless") as w:
        for i in range(1500):
            w.write(f"layer{i:04d}.weight", np.zeros(2, np.float32))
    runs = {
        "validate": ([sys.executable, "-m", "dcfmt", "validate", by["HUF-11"], by["LIM-1"]], None),
        "info": ([sys.executable, "-m", "dcfmt", "info", by["HDR-2"]], None),
        "convert": ([sys.executable, "-m", "dcfmt", "convert", by["SPA-4"],
                     str(tmp_path / "out.safetensors")], None),
        "missing": ([sys.executable, "-m", "dcfmt", "info", str(tmp_path / "nope.dcz")], None),
        # the reader of our output goes away early: exit 0, nothing on stderr
        "pipe": (f"{sys.executable} -m dcfmt info {many} | head -n 2", "shell"),
    }
    procs = {k: subprocess.Popen(cmd, shell=bool(shell), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 executable="/bin/bash" if shell else None)
             for k, (cmd, shell) in runs.items()}
    res = {k: (p.wait(timeout=120), *p.communicate()) for k, p in procs.items()}
    for k, (rc, out, err) in res.items():
        assert "Traceback" not in out + err, (k, err)
    rc, out, err = res["validate"]
    assert rc == 4 and err == ""  # the worst of invalid (1) and limit (4)
    assert len(out.splitlines()) == 2 and "HUF-11" in out and "LIM-1" in out
    rc, out, err = res["info"]
    assert rc == 5 and out == "" and len(err.splitlines()) == 1 and "HDR-2" in err
    rc, out, err = res["convert"]
    assert rc == 1 and out == "" and len(err.splitlines()) == 1 and "SPA-4" in err
    assert sorted(os.listdir(tmp_path)) == ["many.dcz"]
    rc, out, err = res["missing"]
    assert rc == 3 and out == "" and len(err.splitlines()) == 1 and "No such file" in err
    rc, out, err = res["pipe"]
    assert rc == 0 and err == "" and len(out.splitlines()) == 2
