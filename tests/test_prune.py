"""dcfmt.prune: magnitude pruning by threshold, quality (q x std) or exact sparsity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dcfmt.constants import PruneMethod
from dcfmt.prune import prune_mask

floats = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=12),
                    elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)
                    | st.sampled_from([0.0, -0.0, 0.5, -0.5]))


def test_docstring_example():
    mask, p = prune_mask(np.array([0.1, -2.0, 0.5, 0.0]), threshold=0.2)
    assert mask.tolist() == [False, True, True, False] and p.kept == 2
    assert p.method is PruneMethod.THRESHOLD and p.parameter == 0.2 and p.threshold == 0.2
    assert p.total == 4 and p.sparsity == 0.5


@given(floats, st.floats(0, 2e6, allow_nan=False))
def test_threshold_keeps_strictly_larger_magnitudes(w, t):
    mask, p = prune_mask(w, threshold=t)
    assert mask.shape == w.shape and mask.dtype == bool
    assert np.array_equal(mask, np.abs(w) > t)
    assert p.kept == int(mask.sum()) and p.total == w.size


def test_threshold_zero_removes_exactly_the_zeros():
    w = np.array([[0.0, -0.0, 1e-40], [-5.0, 0.0, 3.0]], dtype=np.float32)  # 1e-40: subnormal
    mask, p = prune_mask(w, threshold=0)
    assert mask.tolist() == [[False, False, True], [True, False, True]]
    assert p.kept == 3


@given(floats, st.floats(0, 4, allow_nan=False))
def test_quality_threshold_is_q_times_std(w, q):
    mask, p = prune_mask(w, quality=q)
    t = q * float(np.std(w)) if w.size else 0.0
    assert p.method is PruneMethod.QUALITY and p.parameter == q and p.threshold == t
    assert np.array_equal(mask, np.abs(w) > t)


@given(floats, st.floats(0, 1))
def test_sparsity_removes_exactly_round_s_n_smallest_ties_by_position(w, s):
    mask, p = prune_mask(w, sparsity=s)
    n = w.size
    remove = int(round(s * n))
    assert int((~mask).sum()) == remove and p.kept == n - remove
    flat = np.abs(w.reshape(-1))
    # reference: sort by (magnitude, position) and drop the first `remove`
    order = sorted(range(n), key=lambda i: (flat[i], i))
    want = np.ones(n, dtype=bool)
    want[order[:remove]] = False
    assert np.array_equal(mask.reshape(-1), want)
    if remove:
        assert p.threshold == flat[order[remove - 1]]
        if remove < n:
            assert flat[~want].max() <= flat[want].min()
    else:
        assert p.threshold == 0.0


def test_sparsity_ties_are_deterministic():
    w = np.ones(10)
    mask, _ = prune_mask(w, sparsity=0.3)
    assert mask.tolist() == [False] * 3 + [True] * 7
    mask, _ = prune_mask(-w, sparsity=0.35)  # round(3.5) == 4 (banker's rounding)
    assert mask.tolist() == [False] * 4 + [True] * 6
    assert prune_mask(w, sparsity=1.0)[1].kept == 0
    assert prune_mask(w, sparsity=0.0)[0].all()


def test_no_rule_keeps_everything():
    w = np.array([[0.0, 1.0]])
    mask, p = prune_mask(w)
    assert mask.all() and mask.shape == (1, 2) and p.method is PruneMethod.NONE and p.kept == 2


def test_empty_and_scalar():
    mask, p = prune_mask(np.zeros((0, 3)), quality=1.0)
    assert mask.shape == (0, 3) and p.threshold == 0.0 and p.sparsity == 0.0
    mask, p = prune_mask(np.float64(-2.0), threshold=1.0)
    assert mask.shape == () and bool(mask) and p.kept == 1


@pytest.mark.parametrize("kwargs", [
    dict(threshold=0.1, quality=1.0),
    dict(threshold=-1.0),
    dict(threshold=float("nan")),
    dict(quality=-0.5),
    dict(sparsity=1.5),
    dict(sparsity=-0.1),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        prune_mask(np.ones(4), **kwargs)
