"""The encoder's thread helpers, and file bytes that do not depend on the thread count."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt import api, huffman, parallel
from dcfmt.binary import Cursor
from dcfmt.plan import ErrorBoundedPlan, FixedPlan


@given(n=st.integers(0, 10_000), align=st.integers(1, 700), parts=st.integers(1, 9))
def test_split_covers_the_range_in_aligned_pieces(n, align, parts):
    ranges = parallel.split(n, align, parts)
    assert len(ranges) <= parts
    if n == 0:
        assert ranges == []
        return
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c
    for a, b in ranges:
        assert a < b and a % align == 0
    # as even as whole units allow
    units = [-(-(b - a) // align) for a, b in ranges]
    assert max(units) - min(units) <= 1


def test_split_examples():
    assert parallel.split(10, 4, 2) == [(0, 4), (4, 10)]
    assert parallel.split(10, 4, 8) == [(0, 4), (4, 8), (8, 10)]
    assert parallel.split(3, 4, 2) == [(0, 3)]


@pytest.mark.parametrize("env, expected", [("1", 1), ("3", 3), ("0", 1), ("-2", 1)])
def test_threads_from_the_environment(monkeypatch, env, expected):
    monkeypatch.setenv("DCZ_THREADS", env)
    assert parallel.threads() == expected


def test_threads_default_ignores_a_malformed_value(monkeypatch):
    monkeypatch.delenv("DCZ_THREADS", raising=False)
    default = parallel.threads()
    assert 1 <= default <= 8
    monkeypatch.setenv("DCZ_THREADS", "many")
    assert parallel.threads() == default


def test_ranges_is_one_range_when_small_or_single_threaded(monkeypatch):
    monkeypatch.setenv("DCZ_THREADS", "4")
    assert parallel.ranges(100, 10) == [(0, 20), (20, 50), (50, 70), (70, 100)]
    assert parallel.ranges(19, 10) == [(0, 19)]  # under 2 * align
    monkeypatch.setenv("DCZ_THREADS", "1")
    assert parallel.ranges(100, 10) == [(0, 100)]


def test_run_returns_results_in_order_from_several_threads(monkeypatch):
    monkeypatch.setenv("DCZ_THREADS", "3")
    seen = set()

    def fn(a, b):
        seen.add(threading.current_thread().name)
        return (a, b)

    parts = parallel.ranges(90, 10)
    assert parallel.run(fn, parts) == parts == [(0, 30), (30, 60), (60, 90)]
    assert threading.current_thread().name in seen and len(seen) >= 2


def test_run_raises_the_first_failure_after_every_call_ends(monkeypatch):
    monkeypatch.setenv("DCZ_THREADS", "3")
    done = []

    def fn(a, b):
        if a:
            raise KeyError(a)
        done.append(a)
        return a

    with pytest.raises(KeyError) as info:
        parallel.map_ranges(fn, 90, 10)
    assert info.value.args == (30,) and done == [0]


def test_a_pool_thread_that_splits_again_runs_inline(monkeypatch):
    # every worker waiting on the pool would deadlock; the inner split must not use it
    monkeypatch.setenv("DCZ_THREADS", "2")

    def inner(a, b):
        return b - a

    def outer(a, b):
        return parallel.map_ranges(inner, 100, 10)

    out = parallel.map_ranges(outer, 100, 10)
    assert out[0] == [50, 50] and out[1] == [100]  # the calling thread splits, a pool thread cannot


# ---------------------------------------------------------------------------
# The bytes never depend on the thread count
# ---------------------------------------------------------------------------


def _stream_bytes(monkeypatch, threads, symbols, alphabet, **kw):
    monkeypatch.setenv("DCZ_THREADS", str(threads))
    return huffman.encode_stream(symbols, alphabet, **kw)


@pytest.mark.parametrize("chunk_log", [4, 10, 21])
def test_huffman_stream_bytes_do_not_depend_on_threads(monkeypatch, chunk_log):
    rng = np.random.default_rng(chunk_log)
    n = 3 * huffman._RANGE_ALIGN + 12345  # several ranges, the last one short
    symbols = np.minimum(rng.geometric(0.3, n) - 1, 40).astype(np.uint8)
    one = _stream_bytes(monkeypatch, 1, symbols, 41, chunk_log=chunk_log)
    for t in (2, 3, 5):
        assert _stream_bytes(monkeypatch, t, symbols, 41, chunk_log=chunk_log) == one
    stream = huffman.parse_stream(Cursor(one), 41, "test")
    assert np.array_equal(huffman.decode(stream), symbols)


def test_huffman_out_of_alphabet_symbol_in_a_later_range(monkeypatch):
    monkeypatch.setenv("DCZ_THREADS", "2")
    symbols = np.zeros(3 * huffman._RANGE_ALIGN, dtype=np.uint16)
    symbols[-1] = 9
    with pytest.raises(ValueError, match="symbol 9 is outside the alphabet of 5"):
        huffman.encode_stream(symbols, 5)


@pytest.mark.parametrize("plan", [ErrorBoundedPlan(), ErrorBoundedPlan(max_error=0.05), FixedPlan(bits=4)],
                         ids=["error-bounded", "error-bounded-5%", "fixed-4"])
def test_plan_bytes_do_not_depend_on_threads(monkeypatch, plan):
    rng = np.random.default_rng(7)
    tensors = {
        "w": (rng.standard_t(4, size=(2600, 1100)) * 0.02).astype(np.float32),  # 2.7 blocks
        "h": rng.normal(size=(1500, 1500)).astype(np.float16),
    }
    out = []
    for t in (1, 2, 3):
        monkeypatch.setenv("DCZ_THREADS", str(t))
        buf = io.BytesIO()
        api.save(tensors, buf, plan=plan)
        out.append(buf.getvalue())
    assert out[0] == out[1] == out[2]


def _encode_in_child(q):
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 7, 3 * huffman._RANGE_ALIGN).astype(np.uint8)
    q.put(huffman.encode_stream(symbols, 7))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_fresh_pool(monkeypatch):
    # the parent's pool threads do not exist in a forked child: using its pool would hang
    monkeypatch.setenv("DCZ_THREADS", "2")
    parallel.map_ranges(lambda a, b: None, 100, 10)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_encode_in_child, args=(q,))
    p.start()
    data = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 7, 3 * huffman._RANGE_ALIGN).astype(np.uint8)
    assert data == huffman.encode_stream(symbols, 7)


def test_histogram_sums_are_bitwise_the_same_for_any_thread_count(monkeypatch):
    # the per-block partial sums are added in block order, never in finishing order
    from dcfmt.dtypes import DType
    from dcfmt.plan import _Histogram, _scan

    rng = np.random.default_rng(3)
    flat = (rng.normal(size=3_300_000) * 0.02).astype(np.float32)
    got = []
    for t in (1, 2, 4):
        monkeypatch.setenv("DCZ_THREADS", str(t))
        ok, vmin, vmax, norm2 = _scan(flat, DType.FLOAT32)
        h = _Histogram(flat, DType.FLOAT32, 4096, max(-vmin, vmax), norm2)
        got.append((norm2, h.cnt.tobytes(), h.s1.tobytes(), h.idx.tobytes()))
    assert got[0] == got[1] == got[2]


def test_run_on_a_pool_thread_runs_its_ranges_itself(monkeypatch):
    monkeypatch.setenv("DCZ_THREADS", "2")
    seen = []

    def inner(a, b):
        seen.append(threading.get_ident())
        return a

    def outer(a, b):
        return (threading.get_ident(), parallel.run(inner, [(0, 1), (1, 2), (2, 3)])) if a else None

    out = parallel.map_ranges(outer, 100, 10)
    worker, results = out[1]
    assert results == [0, 1, 2]
    assert seen == [worker] * 3 and worker != threading.get_ident()
