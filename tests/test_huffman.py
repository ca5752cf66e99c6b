"""dcfmt.huffman: length-limited canonical Huffman, chunked streams, decoders (spec 5)."""

from __future__ import annotations

import heapq
import tracemalloc

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from builders import packed, stream_bytes
from dcfmt import huffman
from dcfmt.binary import Cursor, uvar
from dcfmt.errors import FormatError, TruncatedError
from strategies import huffman_cases, skewed_symbols

# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------


def huffman_depths(freqs) -> dict[int, int]:
    """Plain (unlimited) Huffman code lengths with heapq; symbol -> depth."""
    items = [(f, i, (i,)) for i, f in enumerate(freqs) if f > 0]
    if len(items) == 1:
        return {items[0][1]: 1}
    depth = {i: 0 for _, i, _ in items}
    heapq.heapify(items)
    tie = len(freqs)
    while len(items) > 1:
        fa, _, a = heapq.heappop(items)
        fb, _, b = heapq.heappop(items)
        for s in a + b:
            depth[s] += 1
        tie += 1
        heapq.heappush(items, (fa + fb, tie, a + b))
    return depth


def limited_cost(freqs, cap: int) -> int:
    """Optimal total cost of a prefix code with lengths <= cap (coin-collector package-merge)."""
    w = sorted(int(f) for f in freqs if f > 0)
    if len(w) == 1:
        return w[0]
    lst = list(w)
    for _ in range(cap - 1):
        packages = [lst[2 * j] + lst[2 * j + 1] for j in range(len(lst) // 2)]
        lst = sorted(w + packages)
    return sum(lst[: 2 * len(w) - 2])


def cost(freqs, lengths) -> int:
    return int(np.dot(np.asarray(freqs, np.int64), np.asarray(lengths, np.int64)))


def parse(data: bytes, alphabet: int, **kw) -> huffman.Stream:
    cur = Cursor(data, **kw)
    stream = huffman.parse_stream(cur, alphabet, "test stream")
    assert cur.pos == len(data), "the parser must consume exactly the stream"
    assert stream.size == len(data)
    return stream


def rule_of(excinfo) -> str | None:
    return excinfo.value.rule


# ---------------------------------------------------------------------------
# code_lengths
# ---------------------------------------------------------------------------


def test_code_lengths_docstring_example():
    assert huffman.code_lengths(np.array([5, 1, 1, 2])).tolist() == [1, 3, 3, 2]


def test_code_lengths_empty_and_one_symbol():
    assert huffman.code_lengths(np.array([0, 0, 0])).tolist() == [0, 0, 0]
    assert huffman.code_lengths(np.array([0, 7, 0]), max_length=1).tolist() == [0, 1, 0]
    assert huffman.code_lengths(np.array([3]), max_length=16).tolist() == [1]


def test_reference_limited_cost_agrees_with_heapq_when_unconstrained():
    rng = np.random.default_rng(1)
    for _ in range(50):
        f = rng.integers(0, 1000, size=rng.integers(2, 40))
        f[rng.integers(0, len(f), 2)] = [1, 2]
        d = huffman_depths(f)
        want = sum(f[s] * l for s, l in d.items())
        assert limited_cost(f, 64) == want


@given(
    freqs=st.lists(st.integers(0, 10**6), min_size=1, max_size=300),
    max_length=st.integers(1, 16),
)
def test_code_lengths_optimal_capped_and_kraft_complete(freqs, max_length):
    freqs = np.array(freqs, dtype=np.int64)
    used = np.flatnonzero(freqs)
    n = len(used)
    lengths = huffman.code_lengths(freqs, max_length)
    assert lengths.dtype == np.uint8 and len(lengths) == len(freqs)
    assert np.array_equal(lengths > 0, freqs > 0)
    if n == 0:
        return
    if n == 1:
        assert int(lengths[used[0]]) == 1  # the one-symbol rule: never a 0-bit code
        return
    cap = max(max_length, (n - 1).bit_length())
    assert int(lengths.max()) <= cap
    # Kraft equality, in exact integer arithmetic
    assert sum(1 << (32 - int(l)) for l in lengths[used]) == 1 << 32
    depths = huffman_depths(freqs)
    if max(depths.values()) <= cap:
        assert cost(freqs, lengths) == sum(int(freqs[s]) * l for s, l in depths.items())
    assert cost(freqs, lengths) == limited_cost(freqs, cap)


def test_code_lengths_cap_binds_on_fibonacci_weights():
    # Fibonacci weights make plain Huffman maximally deep (n-1 bits)
    fib = [1, 1]
    while len(fib) < 20:
        fib.append(fib[-1] + fib[-2])
    f = np.array(fib, dtype=np.int64)
    assert max(huffman_depths(f).values()) == 19
    for cap in (5, 8, 12, 16):
        lengths = huffman.code_lengths(f, cap)
        assert int(lengths.max()) == cap
        assert cost(f, lengths) == limited_cost(f, cap)
        assert sum(1 << (32 - int(l)) for l in lengths) == 1 << 32


def test_code_lengths_raises_cap_when_alphabet_needs_it():
    f = np.ones(300, dtype=np.int64)  # 300 symbols need 9 bits
    lengths = huffman.code_lengths(f, max_length=2)
    assert int(lengths.max()) == 9 and int(lengths.min()) == 8
    with pytest.raises(ValueError):
        huffman.code_lengths(np.ones((1 << 16) + 1, dtype=np.int64), 16)


def test_code_lengths_deterministic_tie_break():
    f = np.array([1, 1, 1, 1, 1, 1])
    a = huffman.code_lengths(f, 12)
    assert a.tolist() == huffman.code_lengths(f.copy(), 12).tolist()
    # leaves sort by (weight, symbol): on equal weights the lower symbols count as
    # lighter and get the longer codes
    assert a.tolist() == [3, 3, 3, 3, 2, 2]


# ---------------------------------------------------------------------------
# canonical_codes
# ---------------------------------------------------------------------------


def _bitstrings(lengths, codes):
    return {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}


def test_canonical_codes_worked_example():
    lengths = np.array([1, 3, 3, 2])
    assert huffman.canonical_codes(lengths).tolist() == [0b0, 0b110, 0b111, 0b10]
    assert huffman.canonical_codes(np.zeros(3)).tolist() == [0, 0, 0]
    assert huffman.canonical_codes(np.array([0, 1])).tolist() == [0, 0]


@given(freqs=st.lists(st.integers(0, 50), min_size=1, max_size=600), max_length=st.integers(1, 16))
def test_canonical_codes_prefix_free_and_canonical(freqs, max_length):
    lengths = huffman.code_lengths(np.array(freqs), max_length)
    codes = huffman.canonical_codes(lengths)
    strings = _bitstrings(lengths, codes)
    assert all(0 <= int(codes[s]) < (1 << int(lengths[s])) for s in strings)
    ordered = sorted(strings.values())
    # prefix-free iff no string is a prefix of its lexicographic successor
    for a, b in zip(ordered, ordered[1:]):
        assert not b.startswith(a)
    # canonical: in (length, symbol) order the codes count up, left-justified
    order = sorted(strings, key=lambda s: (int(lengths[s]), s))
    lj = [int(codes[s]) << (16 - int(lengths[s])) for s in order]
    assert lj == sorted(lj) and len(set(lj)) == len(lj)
    if order:
        assert lj[0] == 0


# ---------------------------------------------------------------------------
# encode_stream -> parse_stream -> decode
# ---------------------------------------------------------------------------


def _check_roundtrip(symbols, alphabet, chunk_log, max_length):
    data = huffman.encode_stream(symbols, alphabet, max_length=max_length, chunk_log=chunk_log)
    assert huffman.encoded_size(symbols, alphabet, max_length=max_length,
                                chunk_log=chunk_log) == len(data)
    stream = parse(data, alphabet)
    n = len(symbols)
    assert stream.n_symbols == n and stream.alphabet == alphabet
    if n == 0:
        assert data == b"\x00"
        assert huffman.decode(stream).tolist() == []
        assert stream.n_chunks == 0 and stream.chunk_counts().tolist() == []
        return stream
    used = len(np.unique(symbols))
    cap = max(max_length, (used - 1).bit_length()) if used > 1 else 1
    assert 1 <= stream.max_len <= cap
    assert stream.chunk_log == chunk_log
    assert stream.n_chunks == -(-n // (1 << chunk_log))
    assert stream.bit_len == int(stream.lengths.astype(np.int64)[symbols].sum())
    assert stream.bit_len == huffman.stream_bits(np.bincount(symbols, minlength=alphabet),
                                                 stream.lengths)
    want_dtype = np.uint8 if alphabet <= 256 else np.uint16
    for method in ("lockstep", "bitarray", "auto"):
        got = huffman.decode(stream, method=method)
        assert got.dtype == want_dtype, method
        assert np.array_equal(got, symbols), method
    return stream


@given(huffman_cases())
def test_stream_roundtrip_all_decoders_agree(case):
    symbols, alphabet, chunk_log, max_length = case
    _check_roundtrip(symbols, alphabet, chunk_log, max_length)


@given(huffman_cases(max_n=2500), st.data())
def test_decode_chunks_is_a_slice_of_the_full_decode(case, data):
    symbols, alphabet, chunk_log, max_length = case
    stream = parse(huffman.encode_stream(symbols, alphabet, max_length=max_length,
                                         chunk_log=chunk_log), alphabet)
    k = stream.n_chunks
    first = data.draw(st.integers(0, k), label="first")
    last = data.draw(st.integers(first, k + 2), label="last")
    chunk = stream.chunk
    want = symbols[first * chunk : min(last, k) * chunk]
    for method in ("lockstep", "bitarray"):
        got = huffman.decode_chunks(stream, first, min(last, k), method=method)
        assert np.array_equal(got, want), method


@given(st.lists(huffman_cases(max_n=1500), min_size=1, max_size=5))
def test_decode_many_equals_decoding_each(cases):
    streams = []
    for symbols, alphabet, chunk_log, max_length in cases:
        streams.append(parse(huffman.encode_stream(symbols, alphabet, max_length=max_length,
                                                   chunk_log=chunk_log), alphabet))
    got = huffman.decode_many(streams)
    # a table budget of 1 byte forces uint8 length tables (and batches of _MIN_LANE_BATCH)
    with mock.patch.object(huffman, "_BATCH_TABLE_BYTES", 1):
        compact = huffman.decode_many(streams)
    assert len(got) == len(compact) == len(cases)
    for (symbols, alphabet, _, _), arr, arr8 in zip(cases, got, compact):
        assert arr.dtype == arr8.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
        assert np.array_equal(arr, symbols) and np.array_equal(arr8, symbols)


def test_decode_many_of_empty_streams():
    empty = parse(huffman.encode_stream(np.zeros(0, np.int64), 7), 7)
    out = huffman.decode_many([empty, empty])
    assert [a.tolist() for a in out] == [[], []]
    assert huffman.decode_many([]) == []


@pytest.mark.parametrize("alphabet", [200, 3000])
def test_lockstep_many_lanes_several_batches(alphabet):
    # > 8192 chunks: the lock-step decoder splits lanes into batches
    rng = np.random.default_rng(7)
    n = 16 * 8500 + 5  # short last chunk
    symbols = skewed_symbols(rng, n, alphabet, alphabet // 2, 1.1)
    stream = _check_roundtrip(symbols, alphabet, 4, 16)
    assert stream.n_chunks > 8192
    other = parse(huffman.encode_stream(symbols[:999], alphabet, chunk_log=5), alphabet)
    a, b = huffman.decode_many([stream, other])
    assert np.array_equal(a, symbols) and np.array_equal(b, symbols[:999])


@given(st.sampled_from([np.uint8, np.uint16]), st.integers(1, 8), st.integers(1, 40),
       st.integers(0, 3))
def test_transpose_into_puts_each_step_in_its_lane_column(dtype, steps8, lanes8, col8):
    # the stage's rows hold steps in _stage_rows' order; the output is lane-major
    steps, lanes = 8 * steps8, 8 * lanes8
    rng = np.random.default_rng(steps * 1000 + lanes)
    want = rng.integers(0, np.iinfo(dtype).max, (lanes, steps), endpoint=True).astype(dtype)
    stage = np.empty((steps, lanes), dtype=dtype)
    for t, row in enumerate(huffman._stage_rows(stage, steps)):
        row[:] = want[:, t]
    out = np.zeros((lanes, steps + 16 * col8), dtype=dtype)
    huffman._transpose_into(stage, out[:, 8 * col8 : 8 * col8 + steps])
    assert np.array_equal(out[:, 8 * col8 : 8 * col8 + steps], want)
    assert not out[:, : 8 * col8].any() and not out[:, 8 * col8 + steps :].any()


@pytest.mark.parametrize("lane_batch, budget_streams, compact, lanes", [
    (200, 3, False, 3 * 41),         # int64 lengths: a batch holds ~3 streams' tables
    (8192, 2, True, 2 * 41 * 9 // 2),  # uint8 lengths: 4.5x smaller tables, 4.5x more lanes
])
def test_decode_many_bounds_the_tables_of_a_batch(monkeypatch, lane_batch, budget_streams,
                                                   compact, lanes):
    # many streams, each with its own 2**12-entry tables: decode_many runs them
    # in batches whose tables stay within _BATCH_TABLE_BYTES, with identical
    # results; where that would cut batches below half of _LANE_BATCH, the
    # length table shrinks to uint8 instead
    rng = np.random.default_rng(11)
    cases = [skewed_symbols(rng, 40 * 64 + 1 + i, 256, 200, 1.05) for i in range(12)]
    streams = [parse(huffman.encode_stream(s, 256, chunk_log=6), 256) for s in cases]
    calls = []
    real = huffman._run_lanes

    def spy(*args):
        calls.append((args[4].dtype, args[-1]))
        return real(*args)

    monkeypatch.setattr(huffman, "_run_lanes", spy)
    monkeypatch.setattr(huffman, "_MIN_LANE_BATCH", 8)
    monkeypatch.setattr(huffman, "_LANE_BATCH", lane_batch)
    per_stream = sum(9 << s.max_len for s in streams) / len(streams)  # uint8 + int64 entries
    monkeypatch.setattr(huffman, "_BATCH_TABLE_BYTES", budget_streams * per_stream)
    got = huffman.decode_many(streams)
    assert all(np.array_equal(a, b) for a, b in zip(got, cases))
    assert [s.n_chunks for s in streams] == [41] * 12
    dtype, batch = calls[0]
    assert dtype == (np.uint8 if compact else np.int64)
    assert lanes - 8 <= batch <= lanes + 8


def test_max_length_one_two_symbols_is_one_bit_each():
    symbols = np.array([0, 1, 1, 0, 1] * 20)
    data = huffman.encode_stream(symbols, 2, max_length=1, chunk_log=4)
    stream = _check_roundtrip(symbols, 2, 4, 1)
    assert stream.max_len == 1 and stream.bit_len == 100
    # 6 chunk sizes of 16 bits each: width byte 5, then 30 bits
    assert len(data) == 1 + 1 + 1 + 1 + 1 + 1 + (1 + 4) + 13
    assert data[6:11] == packed([16] * 6)


def test_one_symbol_stream_costs_one_bit_per_symbol():
    symbols = np.full(37, 3)
    stream = _check_roundtrip(symbols, 5, 4, 12)
    assert stream.lengths.tolist() == [0, 0, 0, 1, 0] and stream.bit_len == 37


def test_exact_bytes_of_a_small_stream():
    # symbols 0,0,1,2 with lengths [1,2,2]: codes 0, 10, 11 written MSB-first,
    # packed LSB-first: bits 0 0 1 0 1 1 -> 0b110100 = 0x34
    data = huffman.encode_stream(np.array([0, 0, 1, 2]), 3, chunk_log=4)
    assert data == bytes([4, 2, 3, 0x29, 4, 6, 0x34])
    assert huffman.decode(parse(data, 3)).tolist() == [0, 0, 1, 2]


def test_encode_stream_with_a_given_code_and_bad_requests():
    symbols = np.array([0, 3, 3, 1])
    lengths = np.array([2, 2, 2, 2], dtype=np.uint8)  # a flat code for the whole alphabet
    stream = parse(huffman.encode_stream(symbols, 4, lengths=lengths), 4)
    assert stream.lengths.tolist() == [2, 2, 2, 2]
    assert huffman.decode(stream).tolist() == [0, 3, 3, 1]
    with pytest.raises(ValueError):
        huffman.encode_stream(symbols, 4, lengths=np.array([1, 1, 0, 0]))
    with pytest.raises(ValueError):
        huffman.encode_stream(np.array([0, 4]), 4)
    with pytest.raises(ValueError):
        huffman.encode_stream(symbols, 4, chunk_log=3)
    with pytest.raises(ValueError):
        huffman.encode_stream(symbols, 4, chunk_log=25)


def test_chunk_counts_and_ends():
    symbols = np.arange(40) % 3
    stream = parse(huffman.encode_stream(symbols, 3, chunk_log=4), 3)
    assert stream.chunk_counts().tolist() == [16, 16, 8]
    ends = stream.chunk_ends()
    assert ends[-1] == stream.bit_len and ends[:-1].tolist() == stream.starts[1:].tolist()


# ---------------------------------------------------------------------------
# Hostile streams (spec 5, rules HUF-1..HUF-11)
# ---------------------------------------------------------------------------


def _fails(data: bytes, alphabet: int, rule: str, cls=FormatError):
    with pytest.raises(cls) as ei:
        huffman.parse_stream(Cursor(data), alphabet, "hostile")
    assert type(ei.value) is cls
    assert ei.value.rule == rule, ei.value
    return ei.value


# a valid 2-symbol stream: 3 symbols 0,1,0 -> bits 0,1,0
GOOD = stream_bytes(3, [1, 1], 4, 3, bytes([0b010]))


def test_hand_built_stream_is_valid():
    assert huffman.decode(parse(GOOD, 2)).tolist() == [0, 1, 0]


@pytest.mark.parametrize("max_len", [0, 17, 255])
def test_max_len_out_of_range(max_len):
    data = uvar(3) + bytes([max_len]) + uvar(2) + b"\x03\x04" + uvar(3) + b"\x02"
    err = _fails(data, 2, "HUF-1")
    assert "max code length" in err.message


def test_declared_max_len_differs_from_table():
    _fails(stream_bytes(3, [1, 1], 4, 3, b"\x02", max_len=2), 2, "HUF-1")
    # lengths 5-bit field holds 17 while max_len says 16
    _fails(stream_bytes(3, [1, 17], 4, 3, b"\x02", max_len=16), 2, "HUF-1")


def test_length_count_out_of_range():
    _fails(stream_bytes(3, [], 4, 3, b"\x02", max_len=1), 2, "HUF-2")
    _fails(stream_bytes(3, [1, 1, 0], 4, 3, b"\x02"), 2, "HUF-2")  # 3 lengths, alphabet 2


def test_trailing_zero_length_must_be_omitted():
    _fails(stream_bytes(3, [1, 1, 0], 4, 3, b"\x02"), 3, "HUF-2")


def test_nonzero_padding_after_lengths():
    data = uvar(3) + bytes([1]) + uvar(2) + bytes([0b111]) + bytes([4]) + uvar(3) + b"\x02"
    _fails(data, 2, "HUF-3")


def test_over_subscribed_and_incomplete_tables():
    err = _fails(stream_bytes(3, [1, 1, 1], 4, 3, b"\x02"), 3, "HUF-5")
    assert "over-subscribed" in err.message
    err = _fails(stream_bytes(3, [1, 2], 4, 3, b"\x02"), 2, "HUF-5")
    assert "incomplete" in err.message
    err = _fails(stream_bytes(3, [2, 2, 2], 4, 6, b"\x00"), 3, "HUF-5")
    assert "incomplete" in err.message


@pytest.mark.parametrize("length", [2, 3, 16])
def test_one_symbol_with_a_length_other_than_one(length):
    _fails(stream_bytes(3, [0, length], 4, 3 * length, bytes((3 * length + 7) // 8)), 2, "HUF-6")


def test_check_lengths_rules_directly():
    def err(message, rule):
        return FormatError(message, rule=rule)

    with pytest.raises(FormatError) as ei:
        huffman.check_lengths(np.zeros(4, np.uint8), err)
    assert ei.value.rule == "HUF-4"
    huffman.check_lengths(np.array([0, 1, 0], np.uint8), err)  # one symbol, length 1: fine
    huffman.check_lengths(np.array([1, 2, 2], np.uint8), err)


@pytest.mark.parametrize("chunk_log", [0, 3, 25, 255])
def test_chunk_log_out_of_range(chunk_log):
    _fails(stream_bytes(3, [1, 1], chunk_log, 3, b"\x02"), 2, "HUF-7")


@pytest.mark.parametrize("n,bit_len", [(10, 9), (10, 21), (10, 0), (1, 1 << 40)])
def test_symbol_count_impossible_for_bit_length(n, bit_len):
    # lengths [1, 2, 2]: 1..2 bits per symbol
    _fails(stream_bytes(n, [1, 2, 2], 4, bit_len, b""), 3, "HUF-8")


def test_impossible_symbol_count_rejected_in_constant_time_and_memory():
    tracemalloc.start()
    try:
        for n in (1 << 62, (1 << 64) - 1):
            data = stream_bytes(n, [1, 1], 4, n, b"\x00" * 8)
            with pytest.raises(FormatError) as ei:
                huffman.parse_stream(Cursor(data), 2, "bomb")
            assert ei.value.rule == "RCD-5"  # the payload overruns the buffer
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("method", ["bitarray", "lockstep"])
def test_decoding_a_few_chunks_copies_only_their_bytes(method):
    # the tail of a 4 MB stream (the last block of a tensor, a small slice)
    rng = np.random.default_rng(5)
    symbols = rng.integers(0, 256, 1 << 22)
    stream = parse(huffman.encode_stream(symbols, 256), 256)
    assert len(stream.payload) == 4 << 20  # 8-bit codes
    k = stream.n_chunks
    tracemalloc.start()
    try:
        got = huffman.decode_chunks(stream, k - 3, k, method=method)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, symbols[(k - 3) * stream.chunk :])
    assert peak < 1 << 20


def test_chunk_size_table_impossible_spans():
    # 40 one-bit symbols in 3 chunks of 16: the table holds the sizes of chunks 0 and 1
    ok = stream_bytes(40, [1, 1], 4, 40, bytes(5), sizes=[16, 16])
    stream = parse(ok, 2)
    assert stream.starts.tolist() == [0, 16, 32]
    assert huffman.decode(stream).tolist() == [0] * 40
    for sizes in ([10, 16], [16, 50], [16, 8], [17, 16], [16, 30]):
        err = _fails(stream_bytes(40, [1, 1], 4, 40, bytes(5), sizes=sizes), 2, "HUF-9")
        assert "chunk" in err.message


def test_chunk_size_table_encoding_rules():
    def table(raw):
        return stream_bytes(40, [1, 1], 4, 40, bytes(5), table=raw)

    assert huffman.decode(parse(table(packed([16, 16])), 2)).tolist() == [0] * 40
    # width above 32
    err = _fails(table(bytes([33]) + bytes(9)), 2, "HUF-9")
    assert "width" in err.message
    # width not minimal: 16 needs 5 bits, not 6
    _fails(table(packed([16, 16], width=6)), 2, "HUF-9")
    # non-zero padding bits after 2 x 5 bits
    raw = bytearray(packed([16, 16]))
    raw[-1] |= 0x80
    err = _fails(table(bytes(raw)), 2, "HUF-9")
    assert "padding" in err.message
    # width 0: every size is 0, impossible for a chunk of 16 symbols
    _fails(table(bytes([0])), 2, "HUF-9")


def test_nonzero_padding_after_payload():
    _fails(stream_bytes(3, [1, 1], 4, 3, bytes([0b1010])), 2, "HUF-10")


def test_truncated_payload_is_an_overrun_of_the_enclosing_structure():
    data = stream_bytes(20, [1, 1], 4, 20, bytes(3), sizes=[16])[:-1]
    _fails(data, 2, "RCD-5")
    with pytest.raises(TruncatedError) as ei:
        huffman.parse_stream(Cursor(data, overrun=TruncatedError, overrun_rule="FIL-1"), 2, "t")
    assert ei.value.rule == "FIL-1"


def test_non_minimal_varint_in_stream_header():
    data = b"\x83\x00" + GOOD[1:]
    _fails(data, 2, "PRI-1")


@pytest.mark.parametrize("method", ["lockstep", "bitarray"])
def test_bit_one_in_a_one_symbol_stream(method):
    # the only code is "0"; a 1 bit is no code at all
    stream = parse(stream_bytes(5, [1], 4, 5, bytes([0b00100])), 1)
    with pytest.raises(FormatError) as ei:
        huffman.decode(stream, "idx", "w", method=method)
    assert ei.value.rule == "HUF-11" and ei.value.tensor == "w"


@pytest.mark.parametrize("method", ["lockstep", "bitarray"])
def test_wrong_chunk_offset_that_passes_the_header_checks(method):
    # lengths [1, 2, 2]: 16 x symbol 0 (16 bits) then 16 x symbol 2 ("11", 32 bits)
    payload = bytes(2) + b"\xff" * 4
    good = stream_bytes(32, [1, 2, 2], 4, 48, payload, sizes=[16])
    assert huffman.decode(parse(good, 3), method=method).tolist() == [0] * 16 + [2] * 16
    stream = parse(stream_bytes(32, [1, 2, 2], 4, 48, payload, sizes=[20]), 3)
    with pytest.raises(FormatError) as ei:
        huffman.decode(stream, method=method)
    assert ei.value.rule == "HUF-11" and "chunk 0" in ei.value.message


@pytest.mark.parametrize("table_budget", [1 << 20, 1])  # int64, then uint8 length tables
def test_decode_many_reports_the_bad_stream(monkeypatch, table_budget):
    monkeypatch.setattr(huffman, "_BATCH_TABLE_BYTES", table_budget)
    good = parse(huffman.encode_stream(np.arange(50) % 4, 4), 4)
    bad = parse(stream_bytes(5, [1], 4, 5, bytes([0b00100])), 1)
    with pytest.raises(FormatError) as ei:
        huffman.decode_many([good, bad], "idx", ["a", "b"])
    assert ei.value.rule == "HUF-11" and ei.value.tensor == "b"


@pytest.mark.parametrize("method", ["lockstep", "bitarray"])
def test_stream_whose_symbols_end_early(method):
    # 4 symbols declared, bit_len 6, but the payload codes 0,0,0,0 (4 bits) + "11"
    # -> a 5th symbol's worth of bits: the decode must not end at bit 6
    stream = parse(stream_bytes(4, [1, 2, 2], 4, 6, bytes([0b110000])), 3)
    with pytest.raises(FormatError) as ei:
        huffman.decode(stream, method=method)
    assert ei.value.rule == "HUF-11"


def test_decode_many_short_stream_after_a_long_chunk():
    # regression: lanes of a stream with small chunks run as many steps as the
    # longest chunk of any stream; the over-read must stay inside the buffer
    long = parse(huffman.encode_stream(np.zeros(117, np.int64), 1, chunk_log=7), 1)
    short = parse(huffman.encode_stream(np.zeros(1, np.int64), 1, chunk_log=4), 1)
    a, b = huffman.decode_many([long, short])
    assert a.tolist() == [0] * 117 and b.tolist() == [0]
    wide = parse(huffman.encode_stream(np.arange(4000) % 300, 300, chunk_log=12, max_length=16), 300)
    c, d = huffman.decode_many([wide, short])
    assert np.array_equal(c, np.arange(4000) % 300) and d.tolist() == [0]


@pytest.mark.parametrize("alphabet, max_length, chunk_log, n", [
    (2, 16, 4, 70_001),      # two symbols; odd count: the last pair is padded
    (41, 12, 10, 200_003),
    (256, 16, 5, 131_072),   # the largest pair table; 16-bit codes make 32-bit pairs
    (256, 16, 4, 65_537),
    (17, 9, 16, 300_000),
])
# uint8: byte pairs (the two bytes are the pair index); uint16 and a strided view: s0 * B + s1
@pytest.mark.parametrize("layout", ["uint8", "uint16", "strided uint8"])
def test_pair_packing_writes_the_same_bytes_as_symbol_packing(monkeypatch, alphabet, max_length,
                                                               chunk_log, n, layout):
    rng = np.random.default_rng(alphabet + n)
    # a steep distribution, so that the rarest symbols get the longest codes
    p = 0.5 ** np.minimum(np.arange(alphabet), 40)
    symbols = rng.choice(alphabet, size=n, p=p / p.sum()).astype(np.uint16 if layout == "uint16"
                                                                  else np.uint8)
    symbols[:alphabet] = np.arange(alphabet)  # every symbol occurs
    if layout == "strided uint8":
        symbols = np.repeat(symbols, 2)[::2]
        assert not symbols.flags.c_contiguous
    monkeypatch.setattr(huffman, "_PAIR_MIN_SYMBOLS", 1 << 62)
    single = huffman.encode_stream(symbols, alphabet, max_length=max_length, chunk_log=chunk_log)
    monkeypatch.setattr(huffman, "_PAIR_MIN_SYMBOLS", 1)
    bases = []
    real = huffman._pack_range
    monkeypatch.setattr(huffman, "_pack_range", lambda *a: bases.append(a[3]) or real(*a))
    paired = huffman.encode_stream(symbols, alphabet, max_length=max_length, chunk_log=chunk_log)
    assert paired == single
    assert set(bases) == {huffman._BYTE_PAIRS if layout == "uint8" else alphabet + 1}
    stream = huffman.parse_stream(Cursor(paired), alphabet, "test")
    assert stream.max_len == min(max_length, alphabet - 1)
    assert np.array_equal(huffman.decode(stream), symbols)
