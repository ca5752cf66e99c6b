"""dcfmt.sparse: the relative index with fillers, chunk tables, bitmaps (spec 6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import packed
from dcfmt import huffman, sparse
from dcfmt.binary import Cursor, uvar
from dcfmt.errors import FormatError
from strategies import position_sets


def reference_symbols(positions, bits):
    """Entry symbols by the rule of spec 6.1, one element at a time."""
    m = (1 << bits) - 1
    out = []
    prev = -1
    for p in positions:
        gap = int(p) - prev - 1
        while gap >= m:
            out.append(m)
            gap -= m
        out.append(gap)
        prev = int(p)
    return out


def parse_rel(data: bytes, numel: int) -> sparse.Relative:
    cur = Cursor(data)
    rel = sparse.parse_relative(cur, numel)
    assert cur.pos == len(data)
    return rel


# ---------------------------------------------------------------------------
# relative_symbols / relative_positions
# ---------------------------------------------------------------------------


def test_relative_symbols_worked_example():
    # M = 3: position 0 (gap 1 -> 0), 2 (gap 2 -> 1), 12 (gap 10 -> 3 fillers + 0)
    assert sparse.relative_symbols(np.array([0, 2, 12]), 2).tolist() == [0, 1, 3, 3, 3, 0]
    assert sparse.relative_symbols(np.array([], np.int64), 5).tolist() == []
    # b = 1: M = 1, every entry but the real ones is a filler
    assert sparse.relative_symbols(np.array([3]), 1).tolist() == [1, 1, 1, 0]


@given(position_sets(), st.integers(1, 16))
def test_relative_symbols_roundtrip_every_width(case, bits):
    positions, numel = case
    symbols = sparse.relative_symbols(positions, bits)
    assert symbols.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert symbols.tolist() == reference_symbols(positions, bits)
    m = (1 << bits) - 1
    if len(symbols):
        assert int(symbols[-1]) != m  # never a trailing filler
        assert len(symbols) <= numel
    back, is_real = sparse.relative_positions(symbols, bits)
    assert back.dtype == np.int64
    assert np.array_equal(back, positions)
    assert int(is_real.sum()) == len(positions)


@pytest.mark.parametrize("bits", range(1, 17))
def test_edges_position_zero_and_last(bits):
    numel = 100_000
    positions = np.array([0, 1, 2 ** bits - 1, 2 ** bits, numel - 1], dtype=np.int64)
    positions = np.unique(positions)
    symbols = sparse.relative_symbols(positions, bits)
    assert np.array_equal(sparse.relative_positions(symbols, bits)[0], positions)
    assert int(symbols[0]) == 0


# ---------------------------------------------------------------------------
# encode_relative / parse_relative / decode_relative
# ---------------------------------------------------------------------------


def _tables_from_symbols(symbols, bits, chunk):
    m = (1 << bits) - 1
    covered, reals = [0], [0]
    c = r = 0
    for i, s in enumerate(symbols.tolist()):
        if i and i % chunk == 0:
            covered.append(c)
            reals.append(r)
        c += m if s == m else s + 1
        r += s != m
    return covered, reals


@given(position_sets(), st.integers(1, 16), st.integers(4, 8), st.integers(1, 16), st.data())
def test_relative_section_roundtrip_with_chunk_tables(case, bits, chunk_log, max_length, data):
    positions, numel = case
    body = sparse.encode_relative(positions, bits, numel, chunk_log=chunk_log, max_length=max_length)
    rel = parse_rel(body, numel)
    assert rel.bits == bits and rel.nnz == len(positions)
    symbols = sparse.relative_symbols(positions, bits)
    assert rel.stream.n_symbols == len(symbols)
    got, before = sparse.decode_relative(rel, numel)
    assert before == 0 and np.array_equal(got, positions)
    if len(symbols) == 0:
        return
    covered, reals = _tables_from_symbols(symbols, bits, 1 << chunk_log)
    assert rel.covered.tolist() == covered
    assert rel.reals.tolist() == reals
    # partial decodes: chunks first..last-1 give the matching slice
    k = rel.stream.n_chunks
    first = data.draw(st.integers(0, k - 1), label="first")
    last = data.draw(st.integers(first + 1, k), label="last")
    part, before = sparse.decode_relative(rel, numel, first=first, last=last)
    assert before == reals[first]
    assert np.array_equal(part, positions[before : before + len(part)])
    end = reals[last] if last < k else len(positions)
    assert before + len(part) == end


def test_multichunk_relative_index_with_fillers_and_partial_decode():
    rng = np.random.default_rng(3)
    numel = 200_000
    positions = np.flatnonzero(rng.random(numel) < 0.02)
    positions = np.concatenate([[0], positions[positions > 0], [numel - 1]])
    positions = np.unique(positions)
    for bits in (2, 4, 5, 8):
        body = sparse.encode_relative(positions, bits, numel, chunk_log=6, max_length=12)
        rel = parse_rel(body, numel)
        assert rel.stream.n_chunks > 10
        got, _ = sparse.decode_relative(rel, numel)
        assert np.array_equal(got, positions)
        symbols = huffman.decode(rel.stream)
        # decode_relative may be handed the symbols already decoded
        again, _ = sparse.decode_relative(rel, numel, symbols=symbols)
        assert np.array_equal(again, positions)
        for first, last in [(0, 1), (3, 7), (rel.stream.n_chunks - 1, rel.stream.n_chunks)]:
            part, before = sparse.decode_relative(rel, numel, first=first, last=last)
            assert np.array_equal(part, positions[before : before + len(part)])


def test_empty_relative_section():
    body = sparse.encode_relative(np.zeros(0, np.int64), 3, 50, chunk_log=10, max_length=12)
    assert body == bytes([3, 0, 0])
    rel = parse_rel(body, 50)
    assert rel.nnz == 0
    got, before = sparse.decode_relative(rel, 50)
    assert got.tolist() == [] and before == 0


# ---------------------------------------------------------------------------
# best_index_bits
# ---------------------------------------------------------------------------


def _actual_sizes(positions, numel, chunk_log):
    return {
        b: len(sparse.encode_relative(positions, b, numel, chunk_log=chunk_log, max_length=12))
        for b in range(1, 17)
    }


def _assert_truly_smallest(positions, numel, chunk_log):
    actual = _actual_sizes(positions, numel, chunk_log)
    bits, size = sparse.best_index_bits(positions, numel, chunk_log=chunk_log, max_length=12)
    smallest = min(actual.values())
    assert size == actual[bits], (bits, size, actual)
    assert actual[bits] == smallest, (bits, actual)
    assert bits == min(b for b, s in actual.items() if s == smallest)  # ties: smaller b


@settings(max_examples=30)
@given(position_sets(max_numel=1024), st.sampled_from([10, 11, 12]))
def test_best_index_bits_is_truly_smallest_single_chunk(case, chunk_log):
    # numel <= 2**chunk_log: every width's stream is one chunk, no chunk tables
    positions, numel = case
    _assert_truly_smallest(positions, numel, chunk_log)


@settings(max_examples=40)
@given(position_sets(max_numel=20000), st.sampled_from([4, 6, 10]))
def test_best_index_bits_reports_the_exact_size_of_its_choice(case, chunk_log):
    positions, numel = case
    bits, size = sparse.best_index_bits(positions, numel, chunk_log=chunk_log, max_length=12)
    assert 1 <= bits <= 16
    assert size == len(sparse.encode_relative(positions, bits, numel, chunk_log=chunk_log,
                                              max_length=12))


def _clustered(seed):
    rng = np.random.default_rng(seed)
    numel = int(rng.integers(10, 20000))
    d = rng.choice([0.001, 0.01, 0.1, 0.5, 0.9])
    mask = rng.random(numel) < d
    if rng.random() < 0.5:
        mask &= np.repeat(rng.random((numel + 63) // 64) < 0.5, 64)[:numel]
    return np.flatnonzero(mask), numel


@pytest.mark.parametrize("seed", [123, 133, 146, 7, 8, 9])
def test_best_index_bits_is_truly_smallest_multichunk(seed):
    positions, numel = _clustered(seed)
    _assert_truly_smallest(positions, numel, 4)


@pytest.mark.parametrize("positions,numel,chunk_log", [
    (np.arange(17), 17, 4),                                  # 2 chunks of entries
    (np.array([0, 5000, 9999]), 10_000, 4),                  # few kept, b=1 needs 10,000 entries
    (np.arange(0, 60_000, 37), 60_000, 4),
])
def test_best_index_bits_truly_smallest_examples(positions, numel, chunk_log):
    _assert_truly_smallest(positions, numel, chunk_log)


@settings(max_examples=30)
@given(position_sets(max_numel=8000), st.integers(1, 16), st.sampled_from([4, 5, 10]))
def test_relative_size_is_exact(case, bits, chunk_log):
    positions, numel = case
    want = len(sparse.encode_relative(positions, bits, numel, chunk_log=chunk_log, max_length=12))
    assert sparse.relative_size(positions, bits, numel, chunk_log=chunk_log, max_length=12) == want


@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_relative_cost_is_exact_for_one_chunk(bits):
    rng = np.random.default_rng(bits)
    numel = 30_000
    positions = np.flatnonzero(rng.random(numel) < 0.1)
    hist = sparse.gap_histogram(positions)
    size, freqs = sparse.relative_cost(hist, bits, numel, chunk_log=15, max_length=12)
    symbols = sparse.relative_symbols(positions, bits)
    assert np.array_equal(freqs, np.bincount(symbols, minlength=1 << bits))
    assert size == len(sparse.encode_relative(positions, bits, numel, chunk_log=15, max_length=12))


@pytest.mark.parametrize("seed", range(6))
def test_relative_size_is_exact_and_the_bound_is_below_it(seed):
    positions, numel = _clustered(seed)
    hist = sparse.gap_histogram(positions)
    for bits in range(1, 17):
        for chunk_log in (4, 10):
            actual = len(sparse.encode_relative(positions, bits, numel, chunk_log=chunk_log,
                                                max_length=12))
            exact = sparse.relative_size(positions, bits, numel, chunk_log=chunk_log, max_length=12)
            est, low, _ = sparse._relative_bounds(hist, bits, numel, chunk_log, 12)
            assert exact == actual
            assert low <= actual


def test_gap_histogram_with_huge_gaps():
    positions = np.array([5, 6, 300_000, 300_001, 900_000])
    values, counts = sparse.gap_histogram(positions)
    assert dict(zip(values.tolist(), counts.tolist())) == {6: 1, 1: 2, 299_994: 1, 599_999: 1}


# ---------------------------------------------------------------------------
# Bitmap
# ---------------------------------------------------------------------------


@given(st.integers(0, 3000), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_bitmap_roundtrip(numel, density, seed):
    mask = np.random.default_rng(seed).random(numel) < density
    body = sparse.encode_bitmap(mask)
    assert body == uvar(int(mask.sum())) + np.packbits(mask, bitorder="little").tobytes()
    cur = Cursor(body, 100)
    bm = sparse.parse_bitmap(cur, numel)
    assert cur.pos == len(body) and bm.nnz == int(mask.sum())
    assert bm.offset == 100 + len(uvar(bm.nnz))
    pos = sparse.decode_bitmap(bm, numel)
    assert np.array_equal(pos, np.flatnonzero(mask))
    for p in {0, numel // 3, numel - 1, numel}:
        if 0 <= p <= numel:
            assert sparse.bitmap_count_before(bm, p) == int(mask[:p].sum())


# ---------------------------------------------------------------------------
# Hostile sections (SPA-1..SPA-6)
# ---------------------------------------------------------------------------


def rel_body(bits, nnz, symbols, *, chunk_log=10, tables: bytes = b"") -> bytes:
    stream = huffman.encode_stream(np.asarray(symbols, np.int64), 1 << bits, chunk_log=chunk_log)
    return bytes([bits]) + uvar(nnz) + stream + tables


def _parse_fails(data, numel, rule, words=""):
    with pytest.raises(FormatError) as ei:
        sparse.parse_relative(Cursor(data), numel)
    assert type(ei.value) is FormatError and ei.value.rule == rule, ei.value
    assert words in ei.value.message
    return ei.value


def _decode_fails(data, numel, rule, words=""):
    rel = parse_rel(data, numel)
    with pytest.raises(FormatError) as ei:
        sparse.decode_relative(rel, numel, "t")
    assert type(ei.value) is FormatError and ei.value.rule == rule, ei.value
    assert ei.value.tensor == "t" and words in ei.value.message
    return ei.value


@pytest.mark.parametrize("bits", [0, 17, 255])
def test_index_width_out_of_range(bits):
    _parse_fails(bytes([bits]) + uvar(0) + uvar(0), 10, "SPA-1", "index width")


def test_more_kept_elements_than_the_tensor_has():
    _parse_fails(rel_body(2, 11, [0] * 10), 10, "SPA-2")


def test_entry_count_against_kept_count():
    # fewer entries than kept elements
    _parse_fails(rel_body(2, 5, [0, 0, 0]), 10, "SPA-2", "index entries")
    # more entries than elements in the tensor
    _parse_fails(rel_body(1, 2, [1] * 10 + [0, 0]), 10, "SPA-2", "index entries")
    # entries but nothing kept
    _parse_fails(rel_body(2, 0, [0]), 10, "SPA-2", "without kept elements")


def test_trailing_filler():
    _decode_fails(rel_body(2, 1, [0, 3]), 10, "SPA-3", "filler")


def test_real_entry_count_differs_from_header():
    _decode_fails(rel_body(2, 2, [0, 0, 0]), 10, "SPA-2", "more than the 2 kept elements")
    _decode_fails(rel_body(2, 3, [0, 3, 0]), 10, "SPA-2", "2 real entries")


def test_position_past_the_end():
    _decode_fails(rel_body(2, 2, [2, 2]), 5, "SPA-4", "position 5")
    _decode_fails(rel_body(3, 1, [7, 7, 6]), 20, "SPA-4", "position 20")


def _multichunk(spans, fillers, *, bits=2, symbols=None, nnz=20, numel=100, widths=(None, None)):
    symbols = [0] * 20 if symbols is None else symbols
    tables = packed(spans, widths[0]) + packed(fillers, widths[1])
    return rel_body(bits, nnz, symbols, chunk_log=4, tables=tables)


def test_chunk_tables_correct_by_hand():
    rel = parse_rel(_multichunk([16], [0]), 100)
    assert rel.covered.tolist() == [0, 16] and rel.reals.tolist() == [0, 16]
    assert sparse.decode_relative(rel, 100)[0].tolist() == list(range(20))
    # 16 fillers then 4 reals: the first chunk covers 48 positions and holds no element
    rel = parse_rel(_multichunk([48], [16], symbols=[3] * 16 + [0] * 4, nnz=4), 100)
    assert rel.reals.tolist() == [0, 0]
    assert sparse.decode_relative(rel, 100)[0].tolist() == [48, 49, 50, 51]


@pytest.mark.parametrize("spans,fillers,numel,nnz,symbols,words", [
    ([15], [0], 100, 20, None, "out of range"),          # fewer positions than entries
    ([49], [0], 100, 20, None, "out of range"),          # more than 16 x M
    ([16], [17], 100, 20, None, "out of range"),         # more fillers than entries
    ([40], [0], 30, 20, None, "exceed the tensor"),      # covers past numel
    ([48], [0], 100, 4, [3] * 16 + [0] * 4, "exceed the tensor"),  # more reals than nnz
])
def test_chunk_tables_inconsistent_at_parse(spans, fillers, numel, nnz, symbols, words):
    _parse_fails(_multichunk(spans, fillers, symbols=symbols, nnz=nnz), numel, "SPA-5", words)


def test_chunk_tables_bad_packing():
    _parse_fails(_multichunk([16], [0], widths=(41, None)) + bytes(8), 100, "SPA-5", "width")
    _parse_fails(_multichunk([16], [0], widths=(None, 17)) + bytes(8), 100, "SPA-5", "width")
    _parse_fails(_multichunk([16], [0], widths=(6, None)), 100, "SPA-5", "not the bit length")


def test_chunk_tables_disagree_with_decoded_entries():
    _decode_fails(_multichunk([17], [0]), 100, "SPA-5", "disagree")
    _decode_fails(_multichunk([16], [1]), 100, "SPA-5", "disagree")


def test_bitmap_hostile():
    with pytest.raises(FormatError) as ei:
        sparse.parse_bitmap(Cursor(uvar(11) + bytes(2)), 10)
    assert ei.value.rule == "SPA-2"
    with pytest.raises(FormatError) as ei:
        sparse.parse_bitmap(Cursor(uvar(1) + bytes([0, 0b100])), 10)  # bit 10 of 10
    assert ei.value.rule == "SPA-6"
    bm = sparse.parse_bitmap(Cursor(uvar(3) + bytes([0b11, 0])), 10)
    with pytest.raises(FormatError) as ei:
        sparse.decode_bitmap(bm, 10, "m")
    assert ei.value.rule == "SPA-2" and ei.value.tensor == "m" and "2 set bits" in ei.value.message
    with pytest.raises(FormatError) as ei:
        sparse.parse_bitmap(Cursor(uvar(1) + bytes(1)), 10)  # 2 bytes needed
    assert ei.value.rule == "RCD-5"
