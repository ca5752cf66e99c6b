"""End-to-end: every plan round-trips a mixed set of tensors through bytes."""

import io

import numpy as np
import pytest

import dcfmt


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "conv": rng.normal(size=(8, 4, 3, 3)).astype(np.float32),
        "fc": (rng.normal(size=(60, 40)) * 0.05).astype(np.float32),
        "bias": rng.normal(size=(40,)).astype(np.float32),
        "scalar": np.float64(3.5),
        "empty": np.zeros((0, 4), np.float32),
        "ints": rng.integers(-5, 5, size=(500,)).astype(np.int64),
        "mask": rng.random(700) < 0.1,
    }


@pytest.mark.parametrize("plan", ["lossless", "error-bounded", "paper"])
def test_every_plan_decodes_to_the_encoders_reconstruction(plan):
    tensors = _tensors()
    buf = io.BytesIO()
    codes = dcfmt.save(tensors, buf, plan=plan, metadata={"k": "v"})
    out = dcfmt.load(buf.getvalue())
    assert list(out) == sorted(tensors)
    for code in codes:
        want = code.reconstruct()
        got = out[code.name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert dcfmt.load_metadata(buf.getvalue()) == {"k": "v"}


def test_lossless_is_bit_exact():
    tensors = _tensors()
    out = dcfmt.decode(dcfmt.encode(tensors, plan="lossless"))
    for name, array in tensors.items():
        array = np.asarray(array)
        assert out[name].dtype == array.dtype and out[name].shape == array.shape
        assert out[name].tobytes() == array.tobytes()


def test_codec_benchmark_runs_and_reports_every_table():
    """``python -m dcfmt.bench --quick`` measures; it asserts correctness, never speed."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dcfmt.bench", "--quick", "--json"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    report = json.loads(out)
    assert [r["stream"] for r in report["huffman"]][:7] == [
        "indices k=4", "indices k=4, 1.0", "indices k=16", "indices k=16, 1.0", "indices k=32",
        "indices k=256", "rel. index b=5, 8% kept"]
    # codebooks of 4 and 16 entries are coded in groups, the forced 1.0 rows never
    assert [r["group"] > 1 for r in report["huffman"]][:4] == [True, False, True, False]
    assert all(r["over_entropy_pct"] >= 0 for r in report["huffman"])
    assert [r["plan"] for r in report["tensors"]] == [
        "lossless", "4-bit codebook", "8-bit codebook", "error-bounded 1%", "90% pruned, 5-bit"]
    assert report["tensors"][0]["ratio"] == pytest.approx(1.0, abs=1e-3)
    assert [r["model"] for r in report["models"]] == ["64 x 64x256", "16 x 256x256"]
    assert report["lazy"] == []


def test_steal_share_from_cpu_counters():
    from dcfmt.bench import cpu_ticks, steal_share

    before = [100, 0, 50, 1000, 10, 0, 5, 20, 7, 0]
    after = [200, 0, 60, 1100, 10, 0, 5, 50, 9, 0]  # +100 user, +10 system, +100 idle, +30 steal
    assert steal_share(before, after) == 30 / 240
    assert steal_share(None, after) is None and steal_share(before, None) is None
    assert steal_share(before[:5], after[:5]) is None  # an old kernel without a steal column
    assert steal_share(before, before) is None         # no time passed
    ticks = cpu_ticks()
    assert ticks is None or (len(ticks) >= 4 and all(t >= 0 for t in ticks))
