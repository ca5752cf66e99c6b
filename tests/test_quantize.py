"""dcfmt.quantize: 1-D k-means weight sharing (Deep Compression, step 2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt.constants import KMeansInit
from dcfmt.quantize import HIST_BINS, kmeans

INITS = ["linear", "density", "random"]


def check_structure(x: np.ndarray, c) -> None:
    """Invariants every clustering has, whatever the initialisation or path."""
    cen, lab = c.centroids, c.labels
    assert cen.dtype == np.float64 and lab.dtype == np.int64 and len(lab) == len(x)
    assert np.all(np.diff(cen) > 0), "centroids strictly ascending"
    assert cen.min() >= x.min() and cen.max() <= x.max()
    assert lab.min() == 0 and lab.max() == len(cen) - 1
    assert len(np.unique(lab)) == len(cen), "no empty cluster survives"
    # clusters are contiguous runs of the sorted values
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(lab[order]) >= 0)
    # each centroid is the exact mean of its cluster
    cnt = np.bincount(lab, minlength=len(cen))
    tot = np.bincount(lab, weights=x, minlength=len(cen))
    span = float(x.max() - x.min()) or 1.0
    assert np.allclose(cen, tot / cnt, rtol=1e-12, atol=1e-12 * span)


def test_docstring_example():
    c = kmeans(np.array([0.0, 0.1, 0.9, 1.0]), 2)
    assert c.centroids.tolist() == [0.05, 0.95] and c.labels.tolist() == [0, 0, 1, 1]
    assert c.init is KMeansInit.LINEAR and c.seed == 0 and c.iterations >= 1


@given(st.integers(2, 256), st.sampled_from(INITS), st.integers(0, 2**31), st.integers(2, 3000),
       st.sampled_from(["normal", "uniform", "heavy", "few"]))
def test_kmeans_invariants_and_determinism(k, init, seed, n, kind):
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.normal(size=n) * 0.05,
         "uniform": lambda: rng.uniform(-1, 1, size=n),
         "heavy": lambda: rng.standard_cauchy(size=n),
         "few": lambda: rng.integers(-3, 4, size=n).astype(np.float64)}[kind]()
    if x.min() == x.max():
        x[0] += 1.0
    c = kmeans(x, k, init=init, seed=seed)
    check_structure(x, c)
    assert len(c.centroids) <= min(k, len(np.unique(x)))
    assert c.init is KMeansInit[init.upper()] and 1 <= c.iterations <= 30
    again = kmeans(x.copy(), k, init=KMeansInit[init.upper()], seed=seed)
    assert again.centroids.tobytes() == c.centroids.tobytes()
    assert np.array_equal(again.labels, c.labels)


@given(st.integers(2, 64), st.sampled_from(INITS), st.integers(0, 2**31), st.integers(2, 800))
def test_labels_are_nearest_once_lloyd_has_converged(k, init, seed, n):
    x = np.random.default_rng(seed).normal(size=n)
    c = kmeans(x, k, init=init, seed=seed, max_iter=10_000, tol=0.0)
    if c.iterations == 10_000:  # pragma: no cover - did not converge (never seen)
        return
    d = np.abs(x[:, None] - c.centroids[None, :])
    assert np.all(d[np.arange(n), c.labels] <= d.min(axis=1))


def test_labels_are_nearest_once_converged_and_centroids_are_means():
    rng = np.random.default_rng(4)
    n = int(rng.integers(2, 2000))
    x = rng.normal(size=n) * rng.choice([1, 1e-3, 1e3])
    for max_iter in (2, 30, 500):
        c = kmeans(x, 25, init="random", seed=4, max_iter=max_iter)
        # every centroid is the exact mean of its cluster, converged or not
        for k, centroid in enumerate(c.centroids):
            assert centroid == pytest.approx(x[c.labels == k].mean(), rel=1e-12, abs=1e-300)
        if c.converged:
            d = np.abs(x[:, None] - c.centroids[None, :])
            assert np.all(d[np.arange(n), c.labels] <= d.min(axis=1))
    assert c.converged  # 500 iterations are plenty here


def test_fewer_distinct_values_than_k_gives_fewer_centroids():
    x = np.repeat(np.arange(5, dtype=np.float64), 7)
    for init in INITS:
        c = kmeans(x, 16, init=init, seed=1)
        assert len(c.centroids) <= 5
        check_structure(x, c)
    c = kmeans(x, 16)  # linear: one centroid lands nearest each value
    assert c.centroids.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert np.array_equal(c.labels, x.astype(np.int64))


def test_constant_empty_and_bad_k():
    c = kmeans(np.full(10, 2.5), 8)
    assert c.centroids.tolist() == [2.5] and c.labels.tolist() == [0] * 10
    c = kmeans(np.full(100_000, -1.0), 256)  # constant large input: no histogram division by 0
    assert c.centroids.tolist() == [-1.0] and not c.labels.any()
    c = kmeans(np.zeros(0), 4)
    assert len(c.centroids) == 0 and len(c.labels) == 0 and c.iterations == 0
    with pytest.raises(ValueError):
        kmeans(np.ones(3), 0)
    with pytest.raises(KeyError):
        kmeans(np.ones(3), 2, init="kmeans++")


def test_k_is_one():
    x = np.array([1.0, 2.0, 6.0])
    c = kmeans(x, 1)
    assert c.centroids.tolist() == [3.0] and c.labels.tolist() == [0, 0, 0]


def test_random_init_depends_on_seed_only():
    x = np.random.default_rng(0).normal(size=2000)
    a = kmeans(x, 16, init="random", seed=1)
    b = kmeans(x, 16, init="random", seed=1)
    assert a.centroids.tobytes() == b.centroids.tobytes() and a.seed == 1
    others = [kmeans(x, 16, init="random", seed=s).centroids.tobytes() for s in range(2, 6)]
    assert any(o != a.centroids.tobytes() for o in others)


@pytest.mark.parametrize("init", INITS)
def test_k256_on_more_than_65536_values_uses_the_histogram(init):
    rng = np.random.default_rng(11)
    x = rng.normal(size=HIST_BINS + 34_464) * 0.05  # 100,000 values
    c = kmeans(x, 256, init=init, seed=3)
    check_structure(x, c)
    assert len(c.centroids) <= 256
    again = kmeans(x, 256, init=init, seed=3)
    assert again.centroids.tobytes() == c.centroids.tobytes()
    assert np.array_equal(again.labels, c.labels)
    if init == "linear":
        # the paper's point: linear init keeps the quantizer at least as good as a
        # uniform one over [min, max]
        span = x.max() - x.min()
        mse = float(np.mean((x - c.centroids[c.labels]) ** 2))
        assert mse <= 1.01 * (span / 256) ** 2 / 12


def test_histogram_path_handles_extreme_values():
    x = np.concatenate([np.zeros(70_000), [1e300, -1e300], np.linspace(-1, 1, 1000)])
    c = kmeans(x, 4)
    check_structure(x, c)
