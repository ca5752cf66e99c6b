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
