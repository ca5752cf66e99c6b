"""Converters and ``dcz convert``: real files written by the real torch and safetensors.

Everything is generated in ``tmp_path``; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import load_file as st_load_file  # noqa: E402
from safetensors.torch import save_file as st_save_file  # noqa: E402

import dcfmt  # noqa: E402
from dcfmt.cli import main as dcz_main  # noqa: E402
from dcfmt.constants import Layout, Values  # noqa: E402
from dcfmt.converters import (  # noqa: E402
    ALIASES_KEY,
    ConvertError,
    ConvertLimitError,
    ConvertLimits,
    UnsafePickleError,
    UnsupportedInputError,
    VerificationError,
    convert,
    load_plan_file,
    load_state_dict,
    plan_from_spec,
    save_state_dict,
)
from dcfmt.converters import formats as fmts  # noqa: E402
from dcfmt.converters import safety  # noqa: E402
from dcfmt.plan import ErrorBoundedPlan, prepare  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bits(t) -> np.ndarray:
    """The raw bytes of a tensor (exact comparison, NaN and -0.0 included)."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)


def same(a, b) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and np.array_equal(bits(a), bits(b))


def all_dtype_tensors(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {
        "f32": torch.randn(33, 17, generator=g),
        "f16": torch.randn(8, 5, generator=g).half(),
        "bf16": torch.randn(6, 7, generator=g).to(torch.bfloat16),
        "f64": torch.randn(5, generator=g).double(),
        "i8": torch.randint(-128, 127, (9,), dtype=torch.int8, generator=g),
        "i16": torch.randint(-3000, 3000, (4, 4), dtype=torch.int16, generator=g),
        "i32": torch.randint(-10**9, 10**9, (7,), dtype=torch.int32, generator=g),
        "i64": torch.randint(-10**12, 10**12, (3, 2), dtype=torch.int64, generator=g),
        "u8": torch.randint(0, 255, (10,), dtype=torch.uint8, generator=g),
        "bool": torch.rand(12, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "specials": torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-40, 0.0]),
    }
    out["sparse_f32"] = torch.randn(40, 40, generator=g) * (torch.rand(40, 40, generator=g) < 0.1)
    return out


def run_cli(*argv):
    """Run ``dcz`` in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = dcz_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dcz: error: ") and "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------


def test_safetensors_lossless_round_trip_is_exact(tmp_path):
    tensors = all_dtype_tensors()
    src = tmp_path / "model.safetensors"
    meta = {"format": "pt", "author": "tests", "emoji": "κ✓"}
    st_save_file(tensors, str(src), metadata=meta)
    dcz = tmp_path / "model.dcz"
    report = convert(src, dcz, plan="lossless")
    assert report.verified and report.source_format == "safetensors" and not report.aliases
    assert all(t.rel_error is None for t in report.tensors)
    assert dcfmt.load_metadata(str(dcz)) == meta
    back = tmp_path / "back.safetensors"
    convert(dcz, back)
    loaded = st_load_file(str(back))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert same(loaded[name], t), name
    with safetensors.safe_open(str(back), framework="np") as f:
        assert f.metadata() == meta


def test_safetensors_written_by_numpy_and_the_dcz_is_valid(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"a": rng.normal(size=(30, 20)).astype(np.float32), "b": np.arange(10, dtype=np.uint16),
               "c": np.array([[True, False]]), "d": np.arange(6, dtype=np.uint64).reshape(2, 3)}
    src = tmp_path / "np.safetensors"
    np_save_file(tensors, str(src))
    dcz = tmp_path / "np.dcz"
    convert(src, dcz, plan="lossless")
    assert dcfmt.validate(str(dcz)).valid
    out = dcfmt.load(str(dcz))
    for name, a in tensors.items():
        assert out[name].dtype == a.dtype and np.array_equal(out[name], a)


def test_unsupported_safetensors_dtypes_are_refused_with_their_name(tmp_path):
    src = tmp_path / "fp8.safetensors"
    st_save_file({"ok": torch.ones(2), "w8": torch.ones(3).to(torch.float8_e4m3fn)}, str(src))
    with pytest.raises(UnsupportedInputError, match=r"'w8'.*F8_E4M3"):
        convert(src, tmp_path / "x.dcz")
    assert not (tmp_path / "x.dcz").exists()
    src = tmp_path / "c64.safetensors"
    st_save_file({"z": torch.zeros(2, dtype=torch.complex64)}, str(src))
    code, _, err = run_cli("convert", src, tmp_path / "y.dcz")
    assert code == 5 and "C64" in one_line_error(err)


def test_corrupt_safetensors_is_an_invalid_input(tmp_path):
    good = tmp_path / "good.safetensors"
    st_save_file({"w": torch.randn(20, 20)}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) - 100])  # truncated data
    with pytest.raises(ConvertError):
        convert(bad, tmp_path / "bad.dcz")
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].replace(b'"F32"', b'"F33"')
    bad.write_bytes(data[:8] + header + data[8 + n :])
    code, _, err = run_cli("convert", bad, tmp_path / "bad.dcz")
    assert code == 1 and "safetensors" in one_line_error(err)
    assert not (tmp_path / "bad.dcz").exists()


# ---------------------------------------------------------------------------
# torch checkpoints and the Python API
# ---------------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(72, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn(self.conv(x)), 1))


def test_torch_state_dict_round_trips_through_dcz_and_loads_into_a_module(tmp_path):
    torch.manual_seed(0)
    net = Net()
    net.bn.running_mean.uniform_()
    sd = net.state_dict()
    pt = tmp_path / "net.pt"
    torch.save(sd, pt)
    dcz = tmp_path / "net.dcz"
    report = convert(pt, dcz, plan="lossless")
    assert report.source_format == "torch"
    loaded = load_state_dict(str(dcz))
    assert list(loaded) == list(sd)
    for k in sd:
        assert same(loaded[k], sd[k]), k
    fresh = Net()
    fresh.load_state_dict(loaded, strict=True)
    x = torch.randn(2, 3, 5, 5)
    net.eval(), fresh.eval()
    assert torch.equal(net(x), fresh(x))
    # and back to a torch checkpoint, read with weights_only
    back = tmp_path / "back.pth"
    convert(dcz, back)
    again = torch.load(back, weights_only=True)
    assert list(again) == list(sd) and all(same(again[k], sd[k]) for k in sd)


def test_save_state_dict_of_a_module_with_every_dtype(tmp_path):
    tensors = all_dtype_tensors(3)
    path = tmp_path / "all.dcz"
    report = save_state_dict(tensors, str(path), plan="lossless", metadata={"k": "v"})
    assert len(report.tensors) == len(tensors)
    out = load_state_dict(str(path))
    assert all(same(out[k], t) for k, t in tensors.items())
    assert out["bf16"].dtype == torch.bfloat16
    net = Net().to(torch.bfloat16)
    save_state_dict(net, str(path))  # default plan on a bf16 module
    fresh = Net().to(torch.bfloat16)
    fresh.load_state_dict(load_state_dict(str(path)))
    assert all(v.dtype == net.state_dict()[k].dtype for k, v in fresh.state_dict().items())


def test_training_checkpoint_uses_the_nested_state_dict(tmp_path):
    net = Net()
    ck = tmp_path / "ck.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3, "lr": 0.1}, ck)
    report = convert(ck, tmp_path / "ck.dcz", plan="lossless")
    assert {t.name for t in report.tensors} == set(net.state_dict())
    assert any("'epoch'" in n for n in report.notes)
    torch.save({"epoch": 3, "weights": [torch.ones(2)]}, ck)
    with pytest.raises(UnsupportedInputError, match="not a tensor"):
        convert(ck, tmp_path / "ck2.dcz")


def test_legacy_torch_pickle_is_read(tmp_path):
    sd = {"w": torch.randn(4, 3), "b": torch.arange(3)}
    legacy = tmp_path / "legacy.bin"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    convert(legacy, tmp_path / "legacy.dcz", plan="lossless")
    out = load_state_dict(str(tmp_path / "legacy.dcz"))
    assert all(same(out[k], v) for k, v in sd.items())


def test_fp8_complex_and_quantized_torch_tensors_are_refused(tmp_path):
    for bad in (torch.ones(3).to(torch.float8_e5m2), torch.zeros(2, dtype=torch.complex64)):
        with pytest.raises(UnsupportedInputError, match="cannot store"):
            save_state_dict({"ok": torch.ones(2), "bad": bad}, str(tmp_path / "x.dcz"))
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch, not gone
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    with pytest.raises(UnsupportedInputError, match="quantized"):
        save_state_dict({"q": q}, str(tmp_path / "x.dcz"))
    pt = tmp_path / "fp8.pt"
    torch.save({"w": torch.ones(3).to(torch.float8_e4m3fn)}, pt)
    code, _, err = run_cli("convert", pt, tmp_path / "fp8.dcz")
    assert code == 5 and "float8_e4m3fn" in one_line_error(err)
    assert not (tmp_path / "x.dcz").exists() and not (tmp_path / "fp8.dcz").exists()


def test_non_contiguous_and_tied_tensors(tmp_path):
    base = torch.randn(6, 8)
    emb = torch.randn(10, 4)
    sd = {
        "embed.weight": emb,
        "lm_head.weight": emb,                # tied: the same tensor
        "transposed": base.t(),               # non-contiguous
        "strided": base[:, ::2],              # non-contiguous view
        "part_a": base[0:3],                  # overlapping views of one storage
        "part_b": base[2:5],
        "also_tied": emb.view(10, 4),         # a different view object, same memory
    }
    path = tmp_path / "tied.dcz"
    report = save_state_dict(sd, str(path), plan="lossless")
    assert report.aliases == {"lm_head.weight": "embed.weight", "also_tied": "embed.weight"}
    assert any("share memory" in n for n in report.notes)
    with dcfmt.open(str(path)) as f:
        assert "lm_head.weight" not in f.keys() and "embed.weight" in f.keys()
        assert json.loads(f.metadata()[ALIASES_KEY]) == report.aliases
    out = load_state_dict(str(path))
    assert out["lm_head.weight"] is out["embed.weight"] is out["also_tied"]
    for k, v in sd.items():
        assert same(out[k], v.contiguous()), k
    # .pt output shares storage again; safetensors and npz get copies plus the metadata
    pt = tmp_path / "tied.pt"
    convert(path, pt)
    loaded = torch.load(pt, weights_only=True)
    assert loaded["lm_head.weight"].untyped_storage().data_ptr() == \
        loaded["embed.weight"].untyped_storage().data_ptr()
    for ext in ("safetensors", "npz"):
        copy = tmp_path / f"tied.{ext}"
        convert(path, copy)
        again = tmp_path / f"again_{ext}.dcz"
        rep = convert(copy, again, plan="lossless")
        assert rep.aliases == report.aliases
    copies = st_load_file(str(tmp_path / "tied.safetensors"))
    assert set(copies) == set(sd) and all(same(v, sd[k].contiguous()) for k, v in copies.items())


# ---------------------------------------------------------------------------
# Pickles that would run code, zip bombs
# ---------------------------------------------------------------------------


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class EvilShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle", "shell"])
def test_evil_pickle_is_refused_and_never_executed(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {"w": torch.ones(2), "x": Evil(str(marker)) if kind != "shell" else EvilShell(str(marker))}
    if kind in ("zip", "shell"):
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="refusing|refused"):
        convert(path, tmp_path / "out.dcz")
    assert not marker.exists()
    code, _, err = run_cli("convert", path, tmp_path / "out.dcz")
    assert code == 1 and "pickle" in one_line_error(err)
    assert not marker.exists() and not (tmp_path / "out.dcz").exists()


def test_torch_weights_only_is_the_second_guard(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil(str(marker))}, path)
    monkeypatch.setattr("dcfmt.converters.torch_io.scan_pickle", lambda *a, **k: None)
    with pytest.raises(UnsafePickleError, match="weights_only"):
        convert(path, tmp_path / "out.dcz")
    assert not marker.exists()


def test_pickled_module_is_refused_before_loading(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(Net(), path)
    with pytest.raises(UnsafePickleError, match="refusing.*Net"):
        convert(path, tmp_path / "m.dcz")
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafePickleError, match=r"nn\.Module"):
        convert(path, tmp_path / "m.dcz")


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, method in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def test_zip_bombs_are_refused_before_loading(tmp_path):
    # a member that inflates 1000x+ (zeros deflate ~1000:1)
    bomb = tmp_path / "bomb.pt"
    _zip_with(bomb, [("archive/data.pkl", pickle.dumps({}), zipfile.ZIP_STORED),
                     ("archive/data/0", bytes(4 << 20), zipfile.ZIP_DEFLATED)])
    with pytest.raises(ConvertLimitError, match="zip bomb"):
        safety.check_zip(str(bomb), ConvertLimits(max_ratio=100))
    # a central directory that lies about sizes
    data = bytearray(bomb.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 0xFFFFFFF0)  # uncompressed size of the last member
    lying = tmp_path / "lying.pt"
    lying.write_bytes(bytes(data))
    with pytest.raises(ConvertLimitError):
        safety.check_zip(str(lying), ConvertLimits(max_member_bytes=1 << 30))
    code, _, err = run_cli("convert", lying, tmp_path / "out.dcz")
    assert code == 4 and "zip" in one_line_error(err)
    with pytest.raises(ConvertLimitError):  # zeros deflate ~1030:1, over the default 1000
        safety.check_zip(str(bomb))
    fine = tmp_path / "fine.pt"
    _zip_with(fine, [("archive/data.pkl", pickle.dumps({}), zipfile.ZIP_STORED),
                     ("archive/data/0", os.urandom(4096) * 4, zipfile.ZIP_DEFLATED)])
    assert len(safety.check_zip(str(fine))) == 2
    # members past the end of a truncated archive
    trunc = tmp_path / "trunc.npz"
    np.savez(trunc, a=np.arange(1000))
    raw = trunc.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[:200] + raw[-100:])
    with pytest.raises(ConvertError):
        convert(cut, tmp_path / "cut.dcz")


# ---------------------------------------------------------------------------
# npz, sharded checkpoints, detection
# ---------------------------------------------------------------------------


def test_npz_round_trip_with_bfloat16_and_metadata(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"w": rng.normal(size=(12, 7)).astype(np.float32), "be": np.arange(5, dtype=">i4"),
              "fortran": np.asfortranarray(rng.normal(size=(3, 4))), "flag": np.array(True)}
    src = tmp_path / "a.npz"
    np.savez_compressed(src, **arrays)
    dcz = tmp_path / "a.dcz"
    convert(src, dcz, plan="lossless", metadata={"note": "from npz"})
    out = dcfmt.load(str(dcz))
    for k, a in arrays.items():
        assert np.array_equal(out[k], a) and out[k].dtype == a.dtype.newbyteorder("=")
    bf = {"bf": torch.randn(4, 4).to(torch.bfloat16)}
    save_state_dict(bf, str(tmp_path / "bf.dcz"), plan="lossless", metadata={"m": "1"})
    npz = tmp_path / "bf.npz"
    convert(tmp_path / "bf.dcz", npz)
    with np.load(npz, allow_pickle=False) as z:
        assert z["bf"].dtype == np.uint16  # bit patterns; the dtype is in __metadata__
        assert json.loads(str(z["__metadata__"]))["bfloat16"] == ["bf"]
    convert(npz, tmp_path / "bf2.dcz", plan="lossless")
    assert same(load_state_dict(str(tmp_path / "bf2.dcz"))["bf"], bf["bf"])
    assert dcfmt.load_metadata(str(tmp_path / "bf2.dcz")) == {"m": "1"}


def test_npz_with_object_arrays_is_refused(tmp_path):
    src = tmp_path / "obj.npz"
    np.savez(src, o=np.array([{"a": 1}], dtype=object), w=np.ones(3))
    with pytest.raises(UnsupportedInputError, match="pickle"):
        convert(src, tmp_path / "obj.dcz")


def _sharded(tmp_path, tensors: dict, per_shard: int = 2) -> pathlib.Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    names = list(tensors)
    shards = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st_save_file({n: tensors[n] for n in group}, str(d / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return d


def test_sharded_checkpoint_to_one_dcz(tmp_path):
    tensors = {f"layers.{i}.weight": torch.randn(16, 8) for i in range(5)}
    tensors["norm.weight"] = torch.ones(8, dtype=torch.bfloat16)
    d = _sharded(tmp_path, tensors)
    out = tmp_path / "model.dcz"
    code, stdout, _ = run_cli("convert", d, out, "--lossless")
    assert code == 0 and "sharded" in stdout
    got = load_state_dict(str(out))
    assert set(got) == set(tensors) and all(same(got[k], v) for k, v in tensors.items())
    assert dcfmt.load_metadata(str(out)) == {"format": "pt"}


def test_sharded_index_is_checked(tmp_path):
    d = _sharded(tmp_path, {"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(4)})
    index = d / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["a"] = "../outside.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(ConvertError, match="not a file name"):
        convert(d, tmp_path / "x.dcz")
    doc["weight_map"]["a"] = doc["weight_map"]["c"]  # the shard does not hold "a"
    index.write_text(json.dumps(doc))
    with pytest.raises(ConvertError, match="index"):
        convert(d, tmp_path / "x.dcz")
    index.write_text('{"weight_map": {"a": "x", "a": "y"}}')
    with pytest.raises(ConvertError, match="duplicate"):
        convert(d, tmp_path / "x.dcz")


def test_format_detection_uses_content_and_extension(tmp_path):
    src = tmp_path / "weights.bin"  # a safetensors file under a torch extension
    st_save_file({"w": torch.randn(3, 3)}, str(src))
    report = convert(src, tmp_path / "w.dcz", plan="lossless")
    assert report.source_format == "safetensors" and any("extension" in n for n in report.notes)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, this is not a checkpoint")
    code, _, err = run_cli("convert", junk, tmp_path / "j.dcz")
    assert code == 1 and "cannot convert" in one_line_error(err)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert run_cli("convert", tmp_path / "empty.pt", tmp_path / "e.dcz")[0] == 1
    assert fmts.output_format("x.safetensors") == "safetensors"
    with pytest.raises(ConvertError):
        fmts.output_format("x.onnx")


# ---------------------------------------------------------------------------
# Lossy conversions, atomic output, verification
# ---------------------------------------------------------------------------


def test_lossy_conversion_decodes_to_exactly_what_the_encoder_intended(tmp_path):
    g = torch.Generator().manual_seed(5)
    tensors = {"big": torch.randn(300, 200, generator=g) * 0.02,
               "conv": torch.randn(16, 8, 3, 3, generator=g) * 0.1,
               "half": (torch.randn(64, 64, generator=g) * 0.05).half(),
               "bf": (torch.randn(64, 32, generator=g)).to(torch.bfloat16),
               "bias": torch.randn(200, generator=g) * 0.01,
               "steps": torch.tensor(7)}
    src = tmp_path / "m.safetensors"
    st_save_file(tensors, str(src))
    out = tmp_path / "m.dcz"
    report = convert(src, out)  # default: error-bounded, 1 %
    decoded = dcfmt.load(str(out))
    plan = ErrorBoundedPlan()
    lossy = 0
    for rep in report.tensors:
        storage, dt = prepare(tensors[rep.name].view(torch.int16).numpy().view(np.uint16)
                              if tensors[rep.name].dtype == torch.bfloat16
                              else tensors[rep.name].numpy(),
                              "bfloat16" if tensors[rep.name].dtype == torch.bfloat16 else None)
        intended = plan.encode(rep.name, storage, dt).reconstruct()
        got = decoded[rep.name]
        assert got.dtype == intended.dtype and np.array_equal(
            got.reshape(-1).view(np.uint8), intended.reshape(-1).view(np.uint8)), rep.name
        if rep.rel_error is not None:
            lossy += 1
            assert rep.rel_error <= 0.01 and rep.plan == "error-bounded"
            a = dcfmt.dtypes.to_float64(storage, dt).reshape(-1)
            b = dcfmt.dtypes.to_float64(dcfmt.dtypes.to_storage(got, dt), dt).reshape(-1)
            assert rep.rel_error == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(a), rel=1e-6)
            assert rep.max_abs_error == pytest.approx(np.max(np.abs(a - b)), rel=1e-9)
    assert lossy >= 3


def test_error_bounded_plan_compresses_large_gaussian_tensors():
    # Lloyd from linear centroids stalls here; the density restart must meet the bound
    w = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32) * np.float32(0.02)
    code = ErrorBoundedPlan().encode("w", w, dcfmt.DType.FLOAT32)
    assert code.values is Values.CODEBOOK and code.recipe.rel_error <= 0.01
    assert code.recipe.kmeans_init.name == "DENSITY"
    assert len(dcfmt.encode({"w": w})) < w.nbytes / 3


def test_output_path_equal_to_input_path(tmp_path):
    tensors = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    path = tmp_path / "m.safetensors"
    st_save_file(tensors, str(path), metadata={"k": "v"})
    convert(path, path)  # safetensors -> safetensors in place
    assert all(same(v, tensors[k]) for k, v in st_load_file(str(path)).items())
    dcz = tmp_path / "m.dcz"
    convert(path, dcz, plan="lossless")
    with dcfmt.open(str(dcz)):  # a live map of the old file must not be disturbed
        code, _, _ = run_cli("convert", dcz, dcz, "--plan", "paper")
    assert code == 0
    lossy = dcfmt.load(str(dcz))
    assert lossy["w"].shape == (64, 64) and not np.array_equal(lossy["w"], tensors["w"].numpy())
    assert np.array_equal(lossy["b"], tensors["b"].numpy())  # 1-D: lossless in the paper plan
    assert sorted(os.listdir(tmp_path)) == ["m.dcz", "m.safetensors"]  # no temporary files left


def test_failed_verification_leaves_the_target_untouched(tmp_path, monkeypatch):
    path = tmp_path / "m.dcz"
    save_state_dict({"w": torch.randn(8, 8)}, str(path), plan="lossless")
    before = path.read_bytes()
    real = fmts.matches_code
    calls = []

    def corrupting(array, code):
        calls.append(1)
        seen = np.array(array)  # the re-read sees one other bit
        seen.reshape(-1).view(np.uint8)[0] ^= 1
        return real(seen, code)

    monkeypatch.setattr(fmts, "matches_code", corrupting)
    with pytest.raises(VerificationError, match="untouched"):
        convert(path, path)
    assert path.read_bytes() == before and calls
    assert os.listdir(tmp_path) == ["m.dcz"]


@pytest.mark.parametrize("make", [
    lambda rng: (rng.normal(size=(300, 7)) * 0.02).astype(np.float32),  # dense codebook
    lambda rng: np.float16(1.5) * np.ones((4, 4), np.float16),            # one value
    lambda rng: np.array(2.5, np.float64),                                 # 0-d
    lambda rng: rng.random((5, 6)) > 0.5,                                  # bool
    lambda rng: np.where(rng.random(4000) < 0.1, rng.normal(size=4000), 0).astype(np.float32),
])
def test_matches_code_is_bit_exact(make):
    from dcfmt.plan import ErrorBoundedPlan, prepare

    rng = np.random.default_rng(4)
    x = make(rng)
    storage, dt = prepare(np.asarray(x), None)
    code = ErrorBoundedPlan().encode("x", storage, dt)
    good = code.reconstruct()
    assert fmts.matches_code(good, code)
    if good.size:
        bad = np.array(good)
        bad.reshape(-1).view(np.uint8)[-1] ^= 1  # one bit of the last element
        assert not fmts.matches_code(bad, code)
    assert not fmts.matches_code(np.asarray(good).reshape(-1, 1), code)  # another shape
    if good.dtype != np.float64:
        assert not fmts.matches_code(np.asarray(good).astype(np.float64), code)


# ---------------------------------------------------------------------------
# Plans: CLI options and TOML files
# ---------------------------------------------------------------------------


def _model_file(tmp_path) -> pathlib.Path:
    g = torch.Generator().manual_seed(9)
    src = tmp_path / "model.safetensors"
    st_save_file({"features.0.weight": torch.randn(16, 3, 3, 3, generator=g),
                  "features.0.bias": torch.randn(16, generator=g),
                  "classifier.weight": torch.randn(10, 144, generator=g),
                  "classifier.bias": torch.randn(10, generator=g)}, str(src))
    return src


def test_toml_plan_file_rules_match_by_glob(tmp_path):
    src = _model_file(tmp_path)
    plan = tmp_path / "plan.toml"
    plan.write_text("""
[default]
plan = "error-bounded"
max_error = 0.02

[[rule]]
match = "*.bias"
plan = "lossless"

[[rule]]
match = ["features.*"]
plan = "fixed"
bits = 4
quality = 0.5

[[rule]]
match = "classifier.weight"
plan = "paper"
fc_bits = 3
sparsity = 0.9
index_bits = 5
""")
    out = tmp_path / "model.dcz"
    code, stdout, err = run_cli("convert", src, out, "--plan", plan)
    assert code == 0, err
    assert "total" in stdout
    with dcfmt.open(str(out)) as f:
        fc = f.record("classifier.weight")
        assert fc.layout is Layout.RELATIVE and fc.relative.bits == 5 and len(fc.codebook) <= 8
        assert f.record("features.0.weight").codebook is not None
        assert len(f.record("features.0.weight").codebook) <= 17
        assert f.record("features.0.bias").recipe is None  # lossless
    assert isinstance(load_plan_file(str(plan)), dcfmt.RulePlan)


@pytest.mark.parametrize("text, words", [
    ('[[rule]]\nmatch = "*"\nplan = "fixed"\nbitz = 4\n', "'bitz' is not an option"),
    ('[[rule]]\nmatch = "*"\nplan = "nope"\n', "plan must be one of"),
    ('[[rule]]\nplan = "lossless"\n', "match must be"),
    ('[[rule]]\nmatch = "*"\nplan = "fixed"\nbits = 40\n', "bits must be in"),
    ('[[rule]]\nmatch = "*"\nplan = "fixed"\nsparsity = 0.5\nquality = 1.0\n', "at most one"),
    ("this is = not toml [", "invalid TOML"),
    ('extra = 1\n', "unknown top-level"),
])
def test_invalid_plan_files_are_usage_errors(tmp_path, text, words):
    src = _model_file(tmp_path)
    plan = tmp_path / "bad.toml"
    plan.write_text(text)
    code, _, err = run_cli("convert", src, tmp_path / "o.dcz", "--plan", plan)
    assert code == 2 and words in one_line_error(err)


def test_cli_plan_options(tmp_path):
    src = _model_file(tmp_path)
    out = tmp_path / "o.dcz"
    code, stdout, _ = run_cli("convert", src, out, "--max-error", "0.05")
    assert code == 0 and "error-bounded (max relative L2 error 0.05)" in stdout
    assert all(r.recipe is None or r.recipe.rel_error <= 0.05 for r in dcfmt.Reader(str(out)).records())
    code, _, _ = run_cli("convert", src, out, "--conv-bits", "6", "--fc-bits", "2", "--quality", "0.5")
    with dcfmt.open(str(out)) as f:
        assert len(f.record("classifier.weight").codebook) <= 5
        assert f.record("classifier.weight").recipe.plan == "paper"
    code, _, _ = run_cli("convert", src, out, "--plan", "fixed", "--bits", "3", "--sparsity", "0.8",
                         "--index-bits", "3")
    with dcfmt.open(str(out)) as f:
        rec = f.record("classifier.weight")
        assert rec.layout is Layout.RELATIVE and rec.relative.bits == 3
    assert code == 0
    code, stdout, _ = run_cli("convert", src, out, "--json")
    doc = json.loads(stdout)
    assert doc["target_format"] == "dcz" and len(doc["tensors"]) == 4 and doc["verified"]
    assert plan_from_spec({"plan": "lossless", "index_bits": 4}).index_bits == 4


@pytest.mark.parametrize("args, words", [
    (["--lossless", "--bits", "4"], "--bits cannot be used with the lossless plan"),
    (["--max-error", "0.1", "--bits", "4"], "--max-error cannot be used with the paper plan"),
    (["--plan", "weird"], "unknown plan"),
    (["--bits", "99"], "--bits must be in"),
    (["--index-bits", "0"], "--index-bits must be in"),
    (["--metadata", "novalue"], "KEY=VALUE"),
])
def test_cli_usage_errors(tmp_path, args, words):
    src = _model_file(tmp_path)
    code, _, err = run_cli("convert", src, tmp_path / "o.dcz", *args)
    assert code == 2 and words in one_line_error(err)


def test_cli_exit_codes_and_one_line_errors(tmp_path):
    src = _model_file(tmp_path)
    code, _, err = run_cli("convert", tmp_path / "missing.safetensors", tmp_path / "o.dcz")
    assert code == 3 and "No such file" in one_line_error(err)
    code, _, err = run_cli("convert", src, tmp_path / "o.onnx")
    assert code == 2 and "extension" in one_line_error(err)
    code, _, err = run_cli("convert", src, tmp_path / "o.safetensors", "--lossless")
    assert code == 2 and "plan options apply" in one_line_error(err)
    code, _, err = run_cli("convert", src, tmp_path / "no-such-dir" / "o.dcz")
    assert code == 3
    good = tmp_path / "good.dcz"
    convert(src, good, plan="lossless")
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(good.read_bytes()[:-30])
    code, _, err = run_cli("convert", bad, tmp_path / "o.safetensors")
    assert code == 1 and one_line_error(err)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ConvertError):  # --debug: the exception escapes with its traceback
        dcz_main(["--debug", "convert", str(junk), str(tmp_path / "x.dcz")])
    code, stdout, err = run_cli("convert", src, tmp_path / "ok.dcz", "--quiet")
    assert code == 0 and stdout == "" and err == ""


def test_lossless_output_is_never_much_larger_than_the_input(tmp_path):
    g = torch.Generator().manual_seed(11)
    tensors = {f"blocks.{i}.{kind}": torch.randn(*shape, generator=g)
               for i in range(6) for kind, shape in (("w", (128, 96)), ("b", (96,)), ("g", (96,)))}
    tensors["mask"] = torch.rand(50, 50, generator=g) > 0.5
    src = tmp_path / "m.safetensors"
    st_save_file(tensors, str(src))
    out = tmp_path / "m.dcz"
    convert(src, out, plan="lossless")
    assert out.stat().st_size <= src.stat().st_size * 1.001 + 4096


def test_info_and_validate_work_without_torch(tmp_path):
    src = _model_file(tmp_path)
    out = tmp_path / "m.dcz"
    convert(src, out, plan="lossless")
    code = ("import sys; sys.modules['torch'] = None; from dcfmt.cli import main; "
            f"sys.exit(main(['info', {str(out)!r}]) or main(['validate', {str(out)!r}]) or "
            f"main(['convert', {str(src)!r}, {str(tmp_path / 'n.dcz')!r}, '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_progress_bar_goes_to_a_tty_only(tmp_path):
    from dcfmt.converters import cli as ccli

    assert ccli._progress_bar(100, quiet=False) is None  # stderr is not a terminal under pytest
    assert ccli._progress_bar(100, quiet=True) is None


def test_oversized_safetensors_header_is_a_limit(tmp_path):
    src = tmp_path / "huge.safetensors"
    src.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": 1}')
    code, _, err = run_cli("convert", src, tmp_path / "h.dcz", "--from", "safetensors")
    assert code == 4 and "max_header_bytes" in one_line_error(err)


def test_tensor_names_that_cannot_be_npz_members_are_refused(tmp_path):
    path = tmp_path / "names.dcz"
    dcfmt.save({"../../escape": np.ones(2)}, str(path), plan="lossless")
    with pytest.raises(ConvertError, match="member name"):
        convert(path, tmp_path / "names.npz")
    assert not (tmp_path / "names.npz").exists()


@pytest.mark.parametrize("name", ["dcfmt.converters.plans", "dcfmt.converters.safety",
                                  "dcfmt.converters.formats", "dcfmt.converters.convert"])
def test_docstring_examples_of_the_converters(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_a_failure_mid_conversion_leaves_no_trace(tmp_path):
    class Failing(dcfmt.Plan):
        name = "failing"

        def __init__(self):
            self.calls = 0

        def encode(self, name, storage, dtype):
            self.calls += 1
            if self.calls == 3:
                raise dcfmt.EncodeError("plan gave up")
            return dcfmt.LosslessPlan().encode(name, storage, dtype)

    src = tmp_path / "m.safetensors"
    st_save_file({f"t{i}": torch.randn(50, 50) for i in range(5)}, str(src))
    out = tmp_path / "m.dcz"
    out.write_bytes(b"old content")
    with pytest.raises(dcfmt.EncodeError, match="gave up"):
        convert(src, out, plan=Failing())
    assert out.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["m.dcz", "m.safetensors"]
    report = convert(src, out, plan="lossless", verify=False)  # no read-back thread at all
    assert not report.verified and dcfmt.validate(str(out)).valid


def test_verified_conversion_of_many_mid_size_tensors_finishes(tmp_path):
    """The read-back check follows the writer through a pipe-like tee that holds
    at most two tensors; a reader that read ahead to batch short Huffman streams
    would wait for records the writer cannot write yet (a deadlock once seen)."""
    from dcfmt import decoder

    rng = np.random.default_rng(5)
    tensors = {f"layer{i}.weight": (rng.normal(size=(256, 512)) * 0.02).astype(np.float32)
               for i in range(6)}
    src = tmp_path / "m.safetensors"
    np_save_file(tensors, str(src))
    out = tmp_path / "m.dcz"
    subprocess.run([sys.executable, "-m", "dcfmt", "convert", str(src), str(out), "--quiet"],
                   check=True, timeout=240)
    with dcfmt.Reader(str(out)) as r:
        assert all(decoder.batched_streams(rec) for rec in r.records())  # the case that hung
    got = dcfmt.load(out)
    assert list(got) == sorted(tensors)
