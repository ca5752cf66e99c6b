"""The invalid-file corpus (spec/vectors/invalid/): every file is rejected as its manifest says.

For each entry of ``manifest.json``: ``dcfmt.decode`` raises exactly the recorded
error class with the recorded rule id; ``dcfmt.validate`` reports that rule
first; the streaming Reader (random short reads, and from the path) raises the
same; the lazy loader refuses the file when ``lazy_rejects``; ``dcz validate``
exits with the recorded code (spec 10) and prints one line per finding.  The
"must not over-reject" valid vectors the manifest lists are accepted by every
path.  The corpus itself is checked: every rule of spec 12 has a file (HUF-4
cannot, see the README), every error class appears, and the generator only
ever adds files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dcfmt
from builders import ReadOnlyShort, ShortReads
from dcfmt import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "spec", "vectors", "invalid")
SPEC = os.path.join(ROOT, "spec", "dcz.md")

with open(os.path.join(CORPUS, "manifest.json"), encoding="utf-8") as _f:
    MANIFEST = json.load(_f)
VECTORS = MANIFEST["vectors"]
IDS = [v["file"][:-4] for v in VECTORS]

#: spec 10: exit code by error category
EXIT_BY_CLASS = {"FormatError": 1, "TruncatedError": 1, "ChecksumError": 1, "VersionError": 5,
                 "UnsupportedFeatureError": 5, "LimitError": 4}
#: rules no file can break first (see spec/vectors/invalid/README.md)
UNREACHABLE = {"HUF-4"}


def _data(v) -> bytes:
    with open(os.path.join(CORPUS, v["file"]), "rb") as f:
        return f.read()


def _spec_rules() -> list[str]:
    with open(SPEC, encoding="utf-8") as f:
        text = f.read()
    index = text[text.index("## 12 Rule index"):text.index("## 13 ")]
    return re.findall(r"^\| ([A-Z]{3}-\d+) \|", index, flags=re.M)


# ---------------------------------------------------------------------------
# The corpus itself
# ---------------------------------------------------------------------------


def test_manifest_lists_exactly_the_files():
    on_disk = sorted(n for n in os.listdir(CORPUS) if n.endswith(".dcz"))
    assert sorted(v["file"] for v in VECTORS) == on_disk
    ids = [v["id"] for v in VECTORS]
    assert len(set(ids)) == len(ids)
    for v in VECTORS:
        data = _data(v)
        assert len(data) == v["bytes"], v["file"]
        assert hashlib.sha256(data).hexdigest() == v["sha256"], f"{v['file']} was modified"
        assert v["exit"] == EXIT_BY_CLASS[v["error"]], v
        assert v["description"] and "\n" not in v["description"]


def test_every_rule_and_error_class_has_a_file():
    rules = _spec_rules()
    assert len(rules) >= 60 and len(set(rules)) == len(rules)
    covered = {v["rule"] for v in VECTORS}
    assert covered <= set(rules), covered - set(rules)
    assert set(rules) - covered == UNREACHABLE
    classes = {v["error"] for v in VECTORS}
    assert classes == set(EXIT_BY_CLASS)
    for name in classes:
        assert issubclass(getattr(errors, name), errors.DczError)
    # several failure kinds for the codec rules
    per_rule = {r: sum(v["rule"] == r for v in VECTORS) for r in covered}
    assert per_rule["HUF-9"] >= 4 and per_rule["SPA-2"] >= 4 and per_rule["SPA-5"] >= 3
    assert per_rule["HDR-1"] >= 5  # empty, magic prefix, junk, and other formats


def test_must_accept_vectors_are_accepted(tmp_path):
    assert len(MANIFEST["must_accept"]) >= 4
    for rel in MANIFEST["must_accept"]:
        path = os.path.normpath(os.path.join(CORPUS, rel))
        data = open(path, "rb").read()
        whole = dcfmt.decode(data)
        with dcfmt.Reader(ShortReads(data, seed=3, max_read=7)) as r:
            streamed = {k: v.copy() for k, v in r}
        with dcfmt.open(path) as f:
            lazy = {k: np.array(f[k]) for k in f.keys()}
        assert list(whole) == list(streamed) == list(lazy)
        for k in whole:
            assert whole[k].tobytes() == streamed[k].tobytes() == lazy[k].tobytes()
            assert whole[k].shape == lazy[k].shape
        assert dcfmt.validate(path).valid
        assert cli.main(["validate", path]) == 0
    shapes = [a.shape for a in dcfmt.load(os.path.join(CORPUS, "..", "empty_and_scalar.dcz")).values()]
    assert () in shapes and any(0 in s for s in shapes) and any(len(s) == 32 for s in shapes)


# ---------------------------------------------------------------------------
# Every file, every decoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_decode_raises_the_recorded_error(v):
    with pytest.raises(errors.DczError) as ei:
        dcfmt.decode(_data(v))
    err = ei.value
    assert type(err).__name__ == v["error"], repr(err)
    assert err.rule == v["rule"], repr(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_validate_reports_the_rule_first(v):
    path = os.path.join(CORPUS, v["file"])
    for source in (_data(v), path):
        report = dcfmt.validate(source)
        assert not report.valid
        first = report.findings[0]
        assert (first.rule, first.error) == (v["rule"], v["error"]), report.findings
    # without checksums every other rule is still checked
    report = dcfmt.validate(path, checksums=False)
    if v["error"] == "ChecksumError":
        assert report.valid or report.findings[0].error != "ChecksumError"
    else:
        assert not report.valid and report.findings[0].rule == v["rule"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_streaming_reader_agrees(v):
    data = _data(v)
    path = os.path.join(CORPUS, v["file"])
    sources = [ShortReads(data, seed=v["id"], max_read=3), ShortReads(data, seed=v["id"] + 1000),
               ReadOnlyShort(data, seed=v["id"]), path]
    for source in sources:
        with pytest.raises(errors.DczError) as ei:
            with dcfmt.Reader(source) as r:
                r.metadata
                for _ in r:
                    pass
        assert (type(ei.value).__name__, ei.value.rule) == (v["error"], v["rule"]), \
            f"{type(source).__name__}: {ei.value!r}"


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_lazy_loader(v):
    path = os.path.join(CORPUS, v["file"])

    def read_all():
        with dcfmt.open(path) as f:
            f.metadata()
            for name in f.keys():
                np.array(f[name])

    if v["lazy_rejects"]:
        with pytest.raises(errors.DczError):
            read_all()
    else:  # the broken part is one a random-access reader never reads; whatever it does, no crash
        try:
            read_all()
        except errors.DczError:
            pass


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_dcz_validate_exit_code_and_one_line_per_finding(v, capsys):
    path = os.path.join(CORPUS, v["file"])
    assert cli.main(["validate", path]) == v["exit"]
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    findings = dcfmt.validate(path).findings
    assert len(lines) == len(findings) >= 1
    assert lines[0].startswith(f"{path}: {v['rule']}"), lines[0]
    assert "Traceback" not in out


def test_dcz_validate_several_files_exits_with_the_worst(capsys):
    by_exit = {}
    for v in VECTORS:
        by_exit.setdefault(v["exit"], os.path.join(CORPUS, v["file"]))
    assert set(by_exit) == {1, 4, 5}
    good = os.path.join(CORPUS, "..", "no_tensors.dcz")
    # ranked limit (4) > unsupported (5) > invalid (1) > valid (0)
    assert cli.main(["validate", good, by_exit[1]]) == 1
    assert cli.main(["validate", by_exit[5], by_exit[1], good]) == 5
    assert cli.main(["validate", by_exit[1], by_exit[4], by_exit[5]]) == 4
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 2 + 3 + 3


def test_dcz_validate_json(capsys):
    paths = [os.path.join(CORPUS, v["file"]) for v in VECTORS[:5]]
    cli.main(["validate", "--json", *paths])
    doc = json.loads(capsys.readouterr().out)
    assert [d["findings"][0]["rule"] for d in doc] == [v["rule"] for v in VECTORS[:5]]


# ---------------------------------------------------------------------------
# The generator only adds
# ---------------------------------------------------------------------------


def test_generator_adds_nothing_when_complete():
    before = {v["file"]: _data(v) for v in VECTORS}
    out = subprocess.run([sys.executable, os.path.join(CORPUS, "generate.py")], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert "0 new invalid vectors" in out.stdout and "mismatch" not in out.stdout
    assert {v["file"]: _data(v) for v in VECTORS} == before
    with open(os.path.join(CORPUS, "manifest.json"), encoding="utf-8") as f:
        assert json.load(f) == MANIFEST


def test_generator_never_regenerates(tmp_path):
    """In a copy: a missing file is added back identically; an existing file is never rewritten."""
    work = tmp_path / "invalid"
    shutil.copytree(CORPUS, work)
    manifest = json.loads((work / "manifest.json").read_text())
    gone, kept = manifest["vectors"][3], manifest["vectors"][4]
    (work / gone["file"]).unlink()
    manifest["vectors"] = [v for v in manifest["vectors"] if v["file"] != gone["file"]]
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (work / kept["file"]).write_bytes(b"scribbled over")  # an existing file: must stay as it is
    out = subprocess.run([sys.executable, str(work / "generate.py")], capture_output=True, text=True,
                         check=True)
    assert "1 new invalid vectors" in out.stdout, out.stdout
    assert (work / gone["file"]).read_bytes() == _data(gone)
    assert (work / kept["file"]).read_bytes() == b"scribbled over"
    after = json.loads((work / "manifest.json").read_text())
    assert after["vectors"][:-1] == manifest["vectors"]  # old entries untouched, the new one appended
    added = after["vectors"][-1]
    assert added["file"] == gone["file"] and added["sha256"] == gone["sha256"]
    assert added["id"] > max(v["id"] for v in manifest["vectors"])
