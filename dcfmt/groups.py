"""Grouped codebook indices (spec 7.4, format 1.1): g indices per Huffman symbol.

A Huffman code spends a whole number of bits on every symbol, so for a small
skewed alphabet -- a 4-bit codebook over bell-shaped weights -- it stays
1-2 % above the entropy however long the stream.  Coding ``g`` consecutive
indices as one symbol of the alphabet ``k**g`` spreads that rounding over
``g`` indices (Huffman 1952 and Shannon's block coding): 4-bit codebooks
come within ~0.7 % of the entropy with 14-bit codes.  It also halves the
work of a lock-step decoder, which emits one symbol, now ``g`` indices,
per table lookup.

Group symbol ``j`` is ``sum(index[g*j + i] * k**(g-1-i) for i < g)``: the
first index is the most significant base-``k`` digit.  When ``nnz`` is not a
multiple of ``g`` the last group is completed with index 0 (VAL-7).

* :func:`group_sizes` -- the group sizes the reference encoder considers.
* :func:`group_symbols` -- indices -> group symbols.
* :func:`encode_indices` -- indices -> ``(g, stream bytes)``: grouped when that
  is smaller, else ``g = 1`` (a plain INDICES stream).
* :func:`digit_table` / :func:`value_rows` -- group symbol -> its ``g``
  indices, or straight to their ``g`` codebook values (one lookup per group).
* :func:`decode_indices` -- a grouped stream back to its indices.
"""

from __future__ import annotations

import numpy as np

from . import huffman
from .constants import MAX_ALPHABET, MAX_CODE_LENGTH
from .errors import FormatError

__all__ = [
    "group_sizes",
    "group_symbols",
    "encode_indices",
    "estimated_size",
    "digit_table",
    "value_rows",
    "decode_indices",
    "check_last_group",
]

#: The reference encoder considers group alphabets of up to 4096 symbols: past
#: that, the stored code-length table (5 bits per symbol) costs more than
#: grouping saves on tensors of a million weights.
_ENCODER_MAX_ALPHABET = 4096


#: Groups of this many indices or more may use codes up to 16 bits long.
_LONG_CODE_GROUP = 4


def group_sizes(k: int) -> list[int]:
    """The group sizes the reference encoder considers for a ``k``-entry codebook.

    Every ``g >= 2`` whose alphabet ``k**g`` has at most 4096 symbols; none
    for ``k > 64``.

    Example:
        >>> group_sizes(16), group_sizes(64), group_sizes(65)
        ([2, 3], [2], [])
    """
    out = []
    g = 2
    while k >= 2 and k ** g <= _ENCODER_MAX_ALPHABET:
        out.append(g)
        g += 1
    return out


def group_symbols(indices: np.ndarray, k: int, g: int) -> np.ndarray:
    """Group symbols of ``indices`` (each below ``k``), ``ceil(n / g)`` of them.

    The last group is completed with index 0 when ``n`` is not a multiple of
    ``g``.  Returns uint8 symbols when ``k**g <= 256``, else uint16.
    """
    if g < 2 or k < 2 or k ** g > MAX_ALPHABET:
        raise ValueError(f"cannot group {g} indices of a {k}-entry codebook")
    idx = np.asarray(indices)
    n = len(idx)
    m = -(-n // g)
    dt = np.uint8 if k ** g <= 256 else np.uint16
    if n % g:
        full = np.zeros(m * g, dtype=dt)
        full[:n] = idx
    else:
        full = idx.astype(dt, copy=False)
    rows = full.reshape(m, g)
    # Horner's rule in the symbol dtype: every partial value is below k**g
    sym = rows[:, 0] * dt(k)  # g >= 2
    for i in range(1, g):
        sym += rows[:, i]
        if i < g - 1:
            sym *= dt(k)
    return sym


def _estimate(freqs: np.ndarray, lengths: np.ndarray, n: int, chunk_log: int) -> float:
    """Bytes of a stream of ``n`` symbols with these counts and lengths, chunk table estimated."""
    bits = float(np.dot(freqs, lengths))
    used = np.flatnonzero(freqs)
    table = (int(used[-1]) + 1) * int(lengths[used].max()).bit_length() / 8 if len(used) else 0
    chunk = 1 << chunk_log
    n_chunks = -(-n // chunk)
    if n_chunks > 1:
        per_chunk = bits / n * chunk
        table += (n_chunks - 1) * (int(per_chunk * 1.05) + 1).bit_length() / 8
    return bits / 8 + table


def _modelled(freqs: np.ndarray, n: int, g: int, cap: int, chunk_log: int) -> float:
    """Estimated bytes of grouping by ``g``, from index counts alone.

    Models the indices as independent: a group's expected count is
    ``m * prod(p[digit])``.  Groups expected less than half a time are left
    out of the code, as most of them never occur, and charged the longest
    length for the times they do.  Weights quantised by k-means are close to
    independent, and the model only ranks the candidates: the chosen one is
    then measured.
    """
    p = freqs / n
    joint = p
    for _ in range(g - 1):
        joint = np.multiply.outer(joint, p).reshape(-1)
    m = -(-n // g)
    expected = joint * m
    lengths = huffman.code_lengths(np.rint(expected).astype(np.int64), cap)
    charged = np.where(lengths > 0, lengths, cap)
    return _estimate(expected, charged, m, chunk_log) + 1  # + the group size byte


def _counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Counts of each symbol, block by block (bincount would make an intp copy of all)."""
    freqs = np.zeros(alphabet, dtype=np.int64)
    for a in range(0, len(symbols), 1 << 16):
        freqs += np.bincount(symbols[a : a + (1 << 16)], minlength=alphabet)[:alphabet]
    return freqs


def estimated_size(freqs: np.ndarray, *, group_max_length: int, chunk_log: int) -> float | None:
    """Estimated bytes of the best grouped stream for indices with these counts.

    For plans that compare encodings before coding them; None when the
    codebook is too large to group (see :func:`group_sizes`) or too few
    indices are coded.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    n = int(freqs.sum())
    sizes = group_sizes(len(freqs))
    if n < 64 or not sizes:
        return None
    return min(_modelled(freqs, n, g, group_max_length, chunk_log) for g in sizes)


def encode_indices(indices: np.ndarray, k: int, *, max_length: int, group_max_length: int,
                   chunk_log: int, group: int | None = None) -> tuple[int, bytes]:
    """Huffman-code codebook indices, grouped when that makes the stream smaller.

    Args:
        indices: one index (below ``k``) per stored element.
        k: codebook size, at least 2.
        max_length: code-length cap of a plain INDICES stream.
        group_max_length: code-length cap of a grouped stream, whose larger
            alphabet needs longer codes than plain indices.  Groups of 4 or
            more indices also try 16 bits and keep them if smaller.
        chunk_log: chunks hold ``2**chunk_log`` symbols (groups, when grouped).
        group: None (default) considers every size of :func:`group_sizes`
            and keeps the best only if it is smaller than plain coding; 1
            never groups, which keeps files readable by 1.0 decoders; g >= 2
            always groups by g (for tests and conformance vectors).

    Returns:
        ``(g, stream)``: g = 1 for a plain INDICES stream (spec 7.2), else the
        group size of a GROUPED_INDICES stream (spec 7.4).
    """
    idx = np.asarray(indices)
    n = len(idx)
    if group is not None and group >= 2:
        sym = group_symbols(idx, k, group)
        return group, huffman.encode_stream(sym, k ** group, max_length=group_max_length,
                                            chunk_log=chunk_log)
    sizes = group_sizes(k) if group is None else []
    if n < 64 or not sizes:
        return 1, huffman.encode_stream(idx, k, max_length=max_length, chunk_log=chunk_log)
    # pairs are always a candidate; the index counts are their digit sums
    pairs = group_symbols(idx, k, 2)
    pair_freqs = _counts(pairs, k * k).reshape(k, k)
    freqs = pair_freqs.sum(axis=0) + pair_freqs.sum(axis=1)
    freqs[0] -= len(pairs) * 2 - n  # the index completing an odd count is not an index
    lengths = huffman.code_lengths(freqs, max_length)
    plain = _estimate(freqs, lengths, n, chunk_log)
    estimate, g = min((_modelled(freqs, n, g, group_max_length, chunk_log), g) for g in sizes)
    if estimate < plain:
        if g == 2:
            sym, gfreqs = pairs, pair_freqs.reshape(-1)
        else:
            sym = group_symbols(idx, k, g)
            gfreqs = _counts(sym, k ** g)
        glengths = huffman.code_lengths(gfreqs, group_max_length)
        if g >= _LONG_CODE_GROUP and group_max_length < MAX_CODE_LENGTH:
            # one lookup yields 4+ indices, so a 2**16-entry table costs little per
            # index, and rare groups of very skewed indices want long codes
            longer = huffman.code_lengths(gfreqs, MAX_CODE_LENGTH)
            if huffman.stream_bits(gfreqs, longer) < huffman.stream_bits(gfreqs, glengths):
                glengths = longer
        if _estimate(gfreqs, glengths, len(sym), chunk_log) + 1 < plain:
            return g, huffman.encode_stream(sym, k ** g, lengths=glengths, chunk_log=chunk_log)
    return 1, huffman.encode_stream(idx, k, lengths=lengths, chunk_log=chunk_log)


def digit_table(k: int, g: int) -> np.ndarray:
    """``(k**g, g)`` uint8 table: row s holds the g indices of group symbol s."""
    s = np.arange(k ** g, dtype=np.int64)
    cols = [(s // k ** (g - 1 - i)) % k for i in range(g)]
    return np.stack(cols, axis=1).astype(np.uint8)


def value_rows(book: np.ndarray, g: int) -> np.ndarray:
    """Group symbol -> its g codebook values, as one lookup table.

    Returns a ``(k**g,)`` array of unsigned words when a row of ``g`` values
    is 1, 2, 4 or 8 bytes (so a lookup moves whole words; view the result as
    ``book.dtype``), else a ``(k**g, g)`` array of ``book.dtype``.
    """
    rows = book[digit_table(len(book), g)]
    size = g * book.dtype.itemsize
    if size in (1, 2, 4, 8):
        return np.ascontiguousarray(rows).view(np.dtype(f"u{size}")).reshape(-1)
    return rows


def check_last_group(last_symbol: int, k: int, g: int, n: int, *, offset: int,
                     tensor: str | None) -> None:
    """VAL-7: the indices that complete the last of ``n`` indices' groups must be 0."""
    pad = -n % g
    if pad and int(last_symbol) % k ** pad:
        raise FormatError(f"the last index group completes {n} indices with non-zero indices "
                          f"(group symbol {int(last_symbol)})", offset=offset, tensor=tensor,
                          rule="VAL-7")


def decode_indices(stream: huffman.Stream, k: int, g: int, n: int, *, method: str = "auto",
                   tensor: str | None = None) -> np.ndarray:
    """All ``n`` indices of a grouped stream (uint8), with the VAL-7 check."""
    sym = huffman.decode(stream, "grouped codebook index stream", tensor, method=method)
    if len(sym):
        check_last_group(sym[-1], k, g, n, offset=stream.offset, tensor=tensor)
    rows = value_rows(np.arange(k, dtype=np.uint8), g)
    return rows.take(sym, axis=0).view(np.uint8).reshape(-1)[:n]
