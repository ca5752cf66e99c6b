"""Sparse position coding (spec 6): the relative index with fillers, and bitmaps.

Relative index (spec 6.1).  Kept elements are listed by flat C-order position.
Each entry is a symbol ``s`` of ``b`` bits, ``M = 2**b - 1``:

* ``s < M``: a kept element ``s + 1`` positions after the previous entry;
* ``s == M``: a *filler*: advance ``M`` positions, no element.

The first entry counts from position -1.  A gap ``g`` therefore costs
``(g - 1) // M`` fillers and one real entry ``(g - 1) % M``; the encoding of a
position set is unique once trailing fillers are forbidden.  Unlike the paper's
reference decoder, fillers carry no value index, so codebooks need no zero.

The entry symbols are Huffman-coded (spec 5).  For random access, the section
also stores, for every chunk after the first, how many positions and how many
kept elements precede it, so a reader can start at any chunk.

Bitmap (spec 6.2): one bit per element, LSB-first, 1 = kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .binary import Cursor, packed_size, read_packed, uvar, write_packed
from .constants import MAX_CHUNK_LOG, MAX_INDEX_BITS, MIN_INDEX_BITS
from .errors import FormatError
from . import huffman

__all__ = [
    "relative_symbols",
    "relative_positions",
    "relative_cost",
    "best_index_bits",
    "encode_relative",
    "parse_relative",
    "decode_relative",
    "Relative",
    "encode_bitmap",
    "parse_bitmap",
    "decode_bitmap",
    "Bitmap",
]


# ---------------------------------------------------------------------------
# Relative index
# ---------------------------------------------------------------------------


def _gaps(positions: np.ndarray) -> np.ndarray:
    gaps = np.empty(len(positions), dtype=np.int64)
    if len(positions):
        gaps[0] = positions[0] + 1
        np.subtract(positions[1:], positions[:-1], out=gaps[1:])
    return gaps


def relative_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    """Entry symbols (fillers included) for strictly increasing ``positions``.

    Example:
        >>> relative_symbols(np.array([0, 2, 12]), 2).tolist()   # M = 3: gap 10 = 3 fillers + 1
        [0, 1, 3, 3, 3, 0]
    """
    filler = (1 << bits) - 1
    gaps = _gaps(np.asarray(positions, dtype=np.int64)) - 1
    fillers = gaps // filler
    real = gaps - fillers * filler
    ends = np.cumsum(fillers + 1) - 1  # index of each real entry
    symbols = np.full(int(ends[-1]) + 1 if len(ends) else 0, filler,
                      dtype=np.uint8 if bits <= 8 else np.uint16)
    symbols[ends] = real
    return symbols


def _advances(symbols: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    filler = (1 << bits) - 1
    s = symbols.astype(np.int64)
    is_real = s != filler
    adv = s + 1
    adv[~is_real] = filler
    return adv, is_real


def relative_positions(symbols: np.ndarray, bits: int, base: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the real entries of ``symbols`` and the mask of real entries.

    ``base`` is the number of positions covered before the first symbol.
    """
    adv, is_real = _advances(symbols, bits)
    cum = np.cumsum(adv)
    cum += base - 1
    return cum[is_real], is_real


def relative_cost(gap_hist, bits: int, numel: int, *, chunk_log: int,
                  max_length: int) -> tuple[int, np.ndarray]:
    """Estimated byte size of a RELATIVE section body with index width ``bits``.

    Exact when the entries fit in one chunk; otherwise the widths of the
    bit-packed chunk tables are estimated from averages (see
    :func:`relative_size` for the exact size).

    Args:
        gap_hist: ``(gap_values, gap_counts)`` from :func:`gap_histogram`.
        numel: elements in the tensor.

    Returns:
        (size in bytes, counts of each entry symbol).
    """
    estimate, _, freqs = _relative_bounds(gap_hist, bits, numel, chunk_log, max_length)
    return estimate, freqs


def _relative_bounds(gap_hist, bits: int, numel: int, chunk_log: int,
                     max_length: int) -> tuple[int, int, np.ndarray]:
    """(estimate, lower bound, entry-symbol counts) of a RELATIVE section's size.

    Everything but the three bit-packed chunk tables is exact.  Their widths
    are bounded below by the largest value each must hold: a full chunk's bit
    size is at least its symbol count and at least the mean over full chunks
    (the payload less the most the last chunk can take); a full chunk spans
    at least one position per entry; fillers may be none.
    """
    values, counts = gap_hist
    filler = (1 << bits) - 1
    g = values.astype(np.int64) - 1
    fillers = g // filler
    real = g - fillers * filler
    freqs = np.bincount(real, weights=counts, minlength=filler + 1).astype(np.int64)
    freqs[filler] += int(np.dot(fillers, counts))
    n_entries = int(freqs.sum())
    chunk = 1 << chunk_log
    n_chunks = -(-n_entries // chunk)
    base = 1 + len(uvar(int(counts.sum())))
    if n_entries == 0:
        size = base + len(uvar(0))
        return size, size, freqs
    lengths = huffman.code_lengths(freqs, max_length)
    payload = huffman.stream_bits(freqs, lengths)
    max_len = int(lengths.max())
    n_lengths = int(np.flatnonzero(lengths)[-1]) + 1
    base += (len(uvar(n_entries)) + 1 + len(uvar(n_lengths)) + (n_lengths * max_len.bit_length() + 7) // 8
             + 1 + len(uvar(payload)) + (payload + 7) // 8)
    if n_chunks == 1:
        return base, base, freqs
    m = n_chunks - 1
    last = n_entries - m * chunk
    size_floor = max(chunk, (payload - last * max_len) // m)
    low = base + 3 + packed_size(m, size_floor.bit_length()) + packed_size(m, chunk.bit_length())
    est = base + 3 + packed_size(m, (2 * payload // n_chunks + 1).bit_length())
    est += packed_size(m, ((numel // n_chunks) * 2 + 1).bit_length())
    est += packed_size(m, (2 * int(freqs[filler]) // n_chunks + 1).bit_length())
    return max(est, low), low, freqs


def stream_size(freqs: np.ndarray, chunk_log: int, max_length: int) -> int:
    """Exact byte size of a Huffman stream of symbols with counts ``freqs``."""
    n = int(freqs.sum())
    if n == 0:
        return 1
    lengths = huffman.code_lengths(freqs, max_length)
    bits = huffman.stream_bits(freqs, lengths)
    max_len = int(lengths.max())
    n_lengths = int(np.flatnonzero(lengths)[-1]) + 1
    n_chunks = -(-n // (1 << chunk_log))
    # chunk sizes: about bits per chunk, in that many bits each
    table = 1 + packed_size(n_chunks - 1, int(bits * 2 // max(n_chunks, 1) + 1).bit_length()) \
        if n_chunks > 1 else 0
    return (len(uvar(n)) + 1 + len(uvar(n_lengths)) + (n_lengths * max_len.bit_length() + 7) // 8
            + 1 + len(uvar(bits)) + table + (bits + 7) // 8)


def gap_histogram(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histogram ``(values, counts)`` of the gaps between ``positions``."""
    gaps = _gaps(np.asarray(positions, dtype=np.int64))
    if len(gaps) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cap = 1 << 17
    small = gaps[gaps <= cap]
    counts = np.bincount(small, minlength=0)
    values = np.flatnonzero(counts)
    big = np.unique(gaps[gaps > cap], return_counts=True)
    return (np.concatenate([values, big[0]]).astype(np.int64),
            np.concatenate([counts[values], big[1]]).astype(np.int64))


def relative_size(positions: np.ndarray, bits: int, numel: int, *, chunk_log: int,
                  max_length: int) -> int:
    """Exact byte size of the RELATIVE section body :func:`encode_relative` would write."""
    symbols = relative_symbols(np.asarray(positions, dtype=np.int64), bits)
    size = 1 + len(uvar(len(positions)))
    size += huffman.encoded_size(symbols, 1 << bits, max_length=max_length, chunk_log=chunk_log)
    chunk = 1 << chunk_log
    n_chunks = -(-len(symbols) // chunk)
    if n_chunks > 1:
        spans, fillers = _chunk_tables(symbols, bits, chunk, n_chunks)
        for table in (spans, fillers):
            width = int(table.max()).bit_length()
            size += 1 + packed_size(len(table), width)
    return size


def best_index_bits(positions: np.ndarray, numel: int, *, chunk_log: int,
                    max_length: int) -> tuple[int, int]:
    """The index width b (1..16) that makes the RELATIVE section smallest, and its size.

    All sixteen widths are bounded from the gap histogram (exact but for the
    widths of the bit-packed chunk tables); then widths are sized exactly in
    order of their lower bounds until no remaining bound can beat the best
    exact size.  Ties go to the smaller width, so the choice is deterministic.
    """
    hist = gap_histogram(positions)
    bounds = []
    for bits in range(MIN_INDEX_BITS, MAX_INDEX_BITS + 1):
        est, low, _ = _relative_bounds(hist, bits, numel, chunk_log, max_length)
        bounds.append((low, est, bits))
    if all(low == est for low, est, _ in bounds):  # one chunk: every size is exact
        size, _, bits = min(bounds)
        return bits, size
    best = None
    for low, _, bits in sorted(bounds):
        if best is not None and low > best[0]:
            break
        size = relative_size(positions, bits, numel, chunk_log=chunk_log, max_length=max_length)
        if best is None or (size, bits) < best:
            best = (size, bits)
    return best[1], best[0]


def encode_relative(positions: np.ndarray, bits: int, numel: int, *,
                    chunk_log: int, max_length: int) -> bytes:
    """Body of a RELATIVE section (spec 6.1) for strictly increasing ``positions``."""
    positions = np.asarray(positions, dtype=np.int64)
    symbols = relative_symbols(positions, bits)
    stream = huffman.encode_stream(symbols, 1 << bits, max_length=max_length, chunk_log=chunk_log)
    parts = [bytes([bits]), uvar(len(positions)), stream]
    chunk = 1 << chunk_log
    n_chunks = -(-len(symbols) // chunk)
    if n_chunks > 1:
        spans, fillers = _chunk_tables(symbols, bits, chunk, n_chunks)
        parts += [write_packed(spans), write_packed(fillers)]
    return b"".join(parts)


def _chunk_tables(symbols: np.ndarray, bits: int, chunk: int, n_chunks: int):
    """Positions covered by, and filler entries in, each chunk but the last."""
    adv, is_real = _advances(symbols, bits)
    cut = (n_chunks - 1) * chunk
    spans = adv[:cut].reshape(n_chunks - 1, chunk).sum(axis=1)
    fillers = chunk - is_real[:cut].reshape(n_chunks - 1, chunk).sum(axis=1)
    return spans, fillers


@dataclasses.dataclass(frozen=True)
class Relative:
    """A parsed RELATIVE section: index width, kept count, entry stream, chunk tables."""

    bits: int
    nnz: int
    stream: huffman.Stream
    covered: np.ndarray  # positions covered before each chunk (first is 0)
    reals: np.ndarray    # kept elements before each chunk (first is 0)


def parse_relative(cur: Cursor, numel: int) -> Relative:
    """Parse a RELATIVE section body and apply the checks that need no decoding (SPA-1..3)."""
    at = cur.pos
    bits = cur.u8("index width")
    if not MIN_INDEX_BITS <= bits <= MAX_INDEX_BITS:
        raise cur.fail(FormatError, f"index width {bits} is outside {MIN_INDEX_BITS}..{MAX_INDEX_BITS}",
                       "SPA-1", at)
    at = cur.pos
    nnz = cur.uvar("kept element count")
    if nnz > numel:
        raise cur.fail(FormatError, f"{nnz} kept elements in a tensor of {numel}", "SPA-2", at)
    at = cur.pos
    stream = huffman.parse_stream(cur, 1 << bits, "relative index stream")
    if not nnz <= stream.n_symbols <= numel:
        raise cur.fail(FormatError, f"{stream.n_symbols} index entries for {nnz} kept elements "
                       f"of {numel}", "SPA-2", at)
    if (stream.n_symbols == 0) != (nnz == 0):
        raise cur.fail(FormatError, "index entries without kept elements", "SPA-2", at)
    n_chunks = stream.n_chunks
    covered = np.zeros(max(n_chunks, 1), dtype=np.int64)
    reals = np.zeros(max(n_chunks, 1), dtype=np.int64)
    if n_chunks > 1:
        at = cur.pos
        chunk = stream.chunk
        filler = (1 << bits) - 1
        spans = read_packed(cur, n_chunks - 1, "chunk span table", "SPA-5", max_width=40)
        fillers = read_packed(cur, n_chunks - 1, "chunk filler table", "SPA-5",
                              max_width=MAX_CHUNK_LOG + 1)
        # a full chunk covers at least one position per entry and at most 2**b - 1;
        # fillers cannot outnumber its entries
        if np.any(spans < chunk) or np.any(spans > chunk * filler) or np.any(fillers > chunk):
            raise cur.fail(FormatError, "chunk tables of the relative index are out of range",
                           "SPA-5", at)
        covered[1:] = np.cumsum(spans)
        reals[1:] = np.arange(1, n_chunks) * chunk - np.cumsum(fillers)
        if covered[-1] >= numel or reals[-1] > nnz:
            raise cur.fail(FormatError, "chunk tables of the relative index exceed the tensor",
                           "SPA-5", at)
    return Relative(bits, nnz, stream, covered, reals)


def decode_relative(rel: Relative, numel: int, tensor: str | None = None, *,
                    first: int = 0, last: int | None = None,
                    symbols: np.ndarray | None = None, check: bool = True) -> tuple[np.ndarray, int]:
    """Positions of the kept elements in chunks ``first..last-1``, and the count before them.

    With ``check`` (default), applies the rules of spec 6.1 that these chunks
    can break: positions stay below ``numel`` (SPA-4), the chunk tables agree
    with the decoded entries (SPA-5), and if the range ends at the last chunk,
    the last entry is not a filler (SPA-3).  If it spans the whole stream, the
    number of real entries is ``nnz`` (SPA-2); a caller decoding block by
    block checks that sum itself.

    Args:
        symbols: the chunks' entry symbols, if already decoded.
    """
    stream = rel.stream
    if stream.n_symbols == 0:
        return np.zeros(0, dtype=np.int64), 0
    last = stream.n_chunks if last is None else min(last, stream.n_chunks)
    if symbols is None:
        symbols = huffman.decode_chunks(stream, first, last, "relative index stream", tensor)
    positions, is_real = relative_positions(symbols, rel.bits, int(rel.covered[first]))
    if int(rel.reals[first]) + len(positions) > rel.nnz:
        # checked even without ``check``: callers index nnz values with these ranks
        raise FormatError(f"relative index: more than the {rel.nnz} kept elements its header "
                          "declares", offset=stream.offset, tensor=tensor, rule="SPA-2")
    if check:
        def err(message: str, rule: str) -> FormatError:
            return FormatError(f"relative index: {message}", offset=stream.offset, tensor=tensor,
                               rule=rule)

        if last == stream.n_chunks and int(symbols[-1]) == (1 << rel.bits) - 1:
            raise err("the last entry is a filler", "SPA-3")
        if first == 0 and last == stream.n_chunks and len(positions) != rel.nnz:
            raise err(f"{len(positions)} real entries, header says {rel.nnz}", "SPA-2")
        if stream.n_chunks > 1:
            # running totals at each chunk start of this range (and at its end)
            chunk = stream.chunk
            adv, _ = _advances(symbols, rel.bits)
            covered = int(rel.covered[first]) + np.concatenate([[0], np.cumsum(adv)])[::chunk]
            reals = int(rel.reals[first]) + np.concatenate([[0], np.cumsum(is_real)])[::chunk]
            n = min(len(covered), stream.n_chunks - first)
            if not (np.array_equal(covered[:n], rel.covered[first : first + n])
                    and np.array_equal(reals[:n], rel.reals[first : first + n])):
                raise err("chunk tables disagree with the decoded entries", "SPA-5")
        if len(positions) and int(positions[-1]) >= numel:
            raise err(f"position {int(positions[-1])} is outside a tensor of {numel} elements",
                      "SPA-4")
    return positions, int(rel.reals[first])


# ---------------------------------------------------------------------------
# Bitmap
# ---------------------------------------------------------------------------


def encode_bitmap(mask: np.ndarray) -> bytes:
    """Body of a BITMAP section (spec 6.2) for a flat boolean ``mask``."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    return uvar(int(np.count_nonzero(mask))) + np.packbits(mask, bitorder="little").tobytes()


@dataclasses.dataclass(frozen=True)
class Bitmap:
    """A parsed BITMAP section: kept count and the packed bits."""

    nnz: int
    bits: memoryview
    offset: int


def parse_bitmap(cur: Cursor, numel: int) -> Bitmap:
    """Parse a BITMAP section body; checks SPA-2 (count) and SPA-6 (padding) without decoding."""
    at = cur.pos
    nnz = cur.uvar("kept element count")
    if nnz > numel:
        raise cur.fail(FormatError, f"{nnz} kept elements in a tensor of {numel}", "SPA-2", at)
    nbytes = (numel + 7) // 8
    at = cur.pos
    bits = cur.take(nbytes, "bitmap")
    if numel % 8 and bits[-1] >> (numel % 8):
        raise cur.fail(FormatError, "bitmap padding bits are not zero", "SPA-6", at + nbytes - 1)
    return Bitmap(nnz, bits, cur.base + at)


def decode_bitmap(bm: Bitmap, numel: int, tensor: str | None = None) -> np.ndarray:
    """Positions of the set bits; checks that there are exactly ``nnz`` (SPA-2)."""
    mask = np.unpackbits(np.frombuffer(bm.bits, dtype=np.uint8), count=numel, bitorder="little")
    positions = np.flatnonzero(mask)
    if len(positions) != bm.nnz:
        raise FormatError(f"bitmap has {len(positions)} set bits, header says {bm.nnz}",
                          offset=bm.offset, tensor=tensor, rule="SPA-2")
    return positions


def bitmap_count_before(bm: Bitmap, position: int) -> int:
    """Number of kept elements before flat ``position`` (for random access)."""
    whole = position // 8
    raw = np.frombuffer(bm.bits, dtype=np.uint8)
    count = int(np.bitwise_count(raw[:whole]).sum()) if whole else 0
    rest = position % 8
    if rest:
        count += bin(int(raw[whole]) & ((1 << rest) - 1)).count("1")
    return count
