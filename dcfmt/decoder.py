"""Decoding a tensor record, whole or a range of its elements, in bounded memory.

Whole-tensor decoding and random access (``get_slice``) share one engine:
:func:`decode_range` fills an output array block by block.  A block is a run of
Huffman chunks; only its payload bytes are copied and only its symbols are
held, so decoding one tensor costs its output plus one block (16 MB; 10 % of
the output for tensors over 160 MB, at most 64 MB), and a slice touches only
the chunks that cover it.

A whole decode checks every rule that needs decoding (spec 5.3, 6.1, 6.2):
every chunk ends where the next begins, the relative index has exactly
``nnz`` real entries and no trailing filler, positions stay in the tensor,
and the chunk tables agree with the entries.  A partial decode checks what
it decodes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from . import groups, huffman, sparse
from .constants import Layout, Values
from .dtypes import DType, widen
from .errors import DczError, FormatError

__all__ = ["decode_range", "block_items", "predecode", "batched_streams", "decode_in_batches"]

#: Working memory of one block: large enough that lock-step decoding runs
#: thousands of lanes per numpy call, small enough to bound the extra memory
#: (the larger of 16 MB and 10% of the decoded tensor, at most 64 MB).  16 MB
#: of 1-byte indices is ~5,000 chunks: a 64 MB tensor decodes ~20% faster than
#: with 6 MB blocks (~2,000 lanes) for 6 MB more peak memory (79 MB, not 73).
MIN_BLOCK_BYTES = 16 << 20
MAX_BLOCK_BYTES = 64 << 20
#: Working bytes per item: a dense index costs its symbol, the staging copy and
#: the payload; a relative entry costs several int64 temporaries; a bitmap
#: element costs an unpacked bit.
_BYTES_PER_SYMBOL = 3
_BYTES_PER_ENTRY = 48
_BYTES_PER_BIT = 2


def block_items(decoded_bytes: int, per_item: int) -> int:
    """Items per block for a tensor of ``decoded_bytes`` whose items cost ``per_item`` bytes."""
    budget = min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, decoded_bytes // 10))
    return max(1, budget // per_item)


def _chunks_for(stream: huffman.Stream, lo: int, hi: int) -> tuple[int, int]:
    """Chunk range covering symbols [lo, hi)."""
    c = stream.chunk
    return lo // c, -(-hi // c)


def _chunk_symbols(stream: huffman.Stream, c0: int, c1: int, what: str, tensor: str,
                   method: str, pre: dict | None) -> np.ndarray:
    """Symbols of chunks [c0, c1): from ``pre`` when :func:`predecode` decoded the stream."""
    done = pre.get(stream.offset) if pre else None
    if done is not None:
        return done[c0 * stream.chunk : c1 * stream.chunk]
    return huffman.decode_chunks(stream, c0, c1, what, tensor, method=method)


def _symbols(stream: huffman.Stream, lo: int, hi: int, what: str, tensor: str,
             method: str, pre: dict | None = None) -> np.ndarray:
    """Symbols [lo, hi) of ``stream``, decoding only the chunks that hold them."""
    if hi <= lo:
        return np.zeros(0, dtype=np.uint8)
    c0, c1 = _chunks_for(stream, lo, hi)
    syms = _chunk_symbols(stream, c0, c1, what, tensor, method, pre)
    base = c0 * stream.chunk
    return syms[lo - base : hi - base]


#: Streams decoded together by :func:`predecode`: those too short to fill the
#: lock-step lanes on their own (under BATCH_MAX_CHUNKS chunks of 1024
#: symbols; a stream needs ~10,000 to run at full speed) yet long enough to
#: repay building a decode table of ``2**max_len`` entries.
BATCH_MAX_CHUNKS = 2048
_TABLE_REPAY = 4


def batched_streams(rec) -> list[huffman.Stream]:
    """The Huffman streams of ``rec`` that :func:`predecode` would decode in a batch."""
    out = []
    if rec.relative is not None:
        out.append(rec.relative.stream)
    if rec.indices is not None and rec.codebook is not None and len(rec.codebook) > 1:
        out.append(rec.indices)
    return [s for s in out
            if s.n_chunks < BATCH_MAX_CHUNKS and s.n_symbols >= _TABLE_REPAY << s.max_len]


def predecode(recs) -> dict[int, np.ndarray]:
    """Huffman-decode the short streams of several records in one lock-step pass.

    Lock-step decoding pays a fixed cost per step whatever the number of
    lanes, so a tensor of a few hundred thousand weights decodes several
    times faster when its chunks run beside other tensors' chunks.

    Returns:
        stream offset -> its symbols, for :func:`decode_range`'s ``pre``.
        Empty if any stream fails to decode: decoding record by record then
        reports the first error in file order, as it would without batching.
    """
    streams = [s for rec in recs for s in batched_streams(rec)]
    if len(streams) < 2:
        return {}
    try:
        symbols = huffman.decode_many(streams)
    except DczError:
        return {}
    return {s.offset: a for s, a in zip(streams, symbols)}


#: A batch of :func:`decode_in_batches` closes at this many symbols or record
#: bytes: the constant that batching adds to a reader's memory.
BATCH_SYMBOLS = 8 << 20
BATCH_BYTES = 16 << 20


def decode_in_batches(records, decode) -> Iterator[tuple]:
    """Yield ``(rec, decode(rec, pre))`` for each record, in order, batching short streams.

    Runs of consecutive records with short Huffman streams (see
    :func:`batched_streams`) are read ahead, up to BATCH_SYMBOLS symbols or
    BATCH_BYTES record bytes, and their streams decoded in one pass by
    :func:`predecode`; other records are decoded alone.  An exception raised
    by ``records`` (an invalid record, an I/O error) surfaces only after the
    records read before it have been decoded and yielded, so tensors and
    errors come in the same order as when each record is decoded as soon as
    it is read.
    """
    pending: list = []
    symbols = size = 0

    def flush():
        pre = predecode(pending)
        while pending:
            rec = pending.pop(0)
            yield rec, decode(rec, pre)

    it = iter(records)
    while True:
        try:
            rec = next(it, None)
        except Exception:  # a format, I/O or lookup error, met while reading ahead
            yield from flush()
            raise
        if rec is None:
            break
        n = sum(s.n_symbols for s in batched_streams(rec))
        if not n:
            yield from flush()
            symbols = size = 0
            yield rec, decode(rec, None)
            continue
        pending.append(rec)
        symbols += n
        size += rec.size
        if symbols >= BATCH_SYMBOLS or size >= BATCH_BYTES:
            yield from flush()
            symbols = size = 0
    yield from flush()


_LOOKUP = 1 << 16  # indices converted to intp at a time by take()


def _lookup(book: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``book[idx]`` in pieces: take() converts indices to 8-byte intp, so a
    whole block at once would cost 8 bytes per element of extra memory."""
    if out is None:
        out = np.empty(len(idx), dtype=book.dtype)
    for a in range(0, len(idx), _LOOKUP):
        # indices come from a Huffman stream whose alphabet is len(book): always in
        # range; "wrap" is the cheapest bounds-safe mode
        book.take(idx[a : a + _LOOKUP], out=out[a : a + _LOOKUP], mode="wrap")
    return out


class _Values:
    """Values of stored elements by their rank among stored elements.

    With grouped indices (spec 7.4) one symbol stands for ``group``
    consecutive indices, and ``rows`` maps it straight to their values: one
    lookup per group instead of an index expansion and a lookup per index.
    """

    def __init__(self, rec, method: str, pre: dict | None = None) -> None:
        self.rec = rec
        self.method = method
        self.pre = pre
        self.group = 1
        self.rows = None
        if rec.values is Values.RAW:
            self.raw = np.frombuffer(rec.raw, dtype=rec.dtype.storage)
            self.book = None
        else:
            self.raw = None
            self.book = widen(rec.codebook, rec.codebook_dtype, rec.dtype)
            if len(self.book) > 1 and rec.group > 1:
                self.group = rec.group
                self.rows = groups.value_rows(self.book, rec.group)

    @property
    def per_chunk(self) -> int:
        """Stored elements per chunk of the index stream."""
        return self.rec.indices.chunk * self.group

    def _groups(self, s0: int, s1: int) -> np.ndarray:
        """Group symbols [s0, s1), with the VAL-7 check when the last group is among them."""
        rec = self.rec
        syms = _symbols(rec.indices, s0, s1, "grouped codebook index stream", rec.name,
                        self.method, self.pre)
        if s1 == rec.indices.n_symbols and s1 > s0:
            groups.check_last_group(syms[-1], len(self.book), self.group, rec.nnz,
                                    offset=rec.indices.offset, tensor=rec.name)
        return syms

    def get(self, lo: int, hi: int) -> np.ndarray:
        if self.raw is not None:
            return self.raw[lo:hi]
        if len(self.book) == 1:
            return np.repeat(self.book, hi - lo)
        if self.rows is not None:
            g = self.group
            s0, s1 = lo // g, -(-hi // g)
            vals = _lookup_rows(self.rows, self._groups(s0, s1), self.book.dtype)
            return vals[lo - s0 * g : hi - s0 * g]
        idx = _symbols(self.rec.indices, lo, hi, "codebook index stream", self.rec.name, self.method,
                       self.pre)
        return _lookup(self.book, idx)

    def fill(self, lo: int, hi: int, out: np.ndarray) -> None:
        """``out[:] = get(lo, hi)``, without the intermediate copy where possible."""
        g = self.group
        if self.rows is not None and lo % g == 0 and (hi % g == 0 or hi == self.rec.nnz):
            whole = (hi - lo) // g
            s0, s1 = lo // g, -(-hi // g)
            syms = self._groups(s0, s1)
            if whole:
                _lookup_rows(self.rows, syms[:whole], self.book.dtype, out[: whole * g])
            if s1 - s0 > whole:  # the last group, of which only the first indices are elements
                tail = _lookup_rows(self.rows, syms[whole:], self.book.dtype)
                out[whole * g :] = tail[: hi - lo - whole * g]
        elif self.rows is None and self.book is not None and len(self.book) > 1:
            _lookup(self.book, _symbols(self.rec.indices, lo, hi, "codebook index stream",
                                        self.rec.name, self.method, self.pre), out)
        else:
            out[:] = self.get(lo, hi)


def _lookup_rows(rows: np.ndarray, syms: np.ndarray, dtype: np.dtype,
                 out: np.ndarray | None = None) -> np.ndarray:
    """The values of groups ``syms`` through a :func:`dcfmt.groups.value_rows` table, flat."""
    width = len(rows[0]) if rows.ndim == 2 else rows.dtype.itemsize // dtype.itemsize
    if out is None:
        out = np.empty(len(syms) * width, dtype=dtype)
    target = out.view(rows.dtype).reshape(len(syms), -1) if rows.ndim == 2 else out.view(rows.dtype)
    for a in range(0, len(syms), _LOOKUP):
        # symbols come from a stream whose alphabet is len(rows): always in range
        rows.take(syms[a : a + _LOOKUP], axis=0, out=target[a : a + _LOOKUP], mode="wrap")
    return out


def decode_range(rec, start: int, stop: int, *, method: str = "auto",
                 full: bool | None = None, pre: dict | None = None) -> np.ndarray:
    """Decode flat elements ``[start, stop)`` of a parsed tensor record.

    Args:
        rec: a TensorRecord from :func:`dcfmt.record.parse_tensor`.
        start, stop: flat C-order element range, ``0 <= start <= stop <= numel``.
        method: Huffman decoder ("auto", "lockstep", "bitarray").
        full: apply the whole-tensor checks (default: when the range is the
            whole tensor).
        pre: symbols of streams already decoded by :func:`predecode`.

    Returns:
        A 1-D array in the tensor's storage dtype.  For dense raw records
        this is a view of the record's bytes (read-only if they are).
    """
    numel = rec.numel
    if not 0 <= start <= stop <= numel:
        raise ValueError(f"element range [{start}, {stop}) outside 0..{numel}")
    if full is None:
        full = start == 0 and stop == numel
    n = stop - start
    dt = rec.dtype.storage
    if rec.layout is Layout.DENSE and rec.values is Values.RAW:
        return np.frombuffer(rec.raw, dtype=dt, count=n, offset=start * rec.dtype.itemsize)
    # sparse layouts start from zeros: the elements not stored
    out = np.zeros(n, dtype=dt) if rec.layout is not Layout.DENSE else np.empty(n, dtype=dt)
    values = _Values(rec, method, pre)
    size = rec.decoded_bytes
    if rec.layout is Layout.DENSE:
        _dense(rec, values, start, stop, out, block_items(size, _BYTES_PER_SYMBOL))
    elif rec.layout is Layout.RELATIVE:
        _relative(rec, values, start, stop, out, block_items(size, _BYTES_PER_ENTRY), full, method,
                  pre)
    else:
        _bitmap(rec, values, start, stop, out, block_items(size, _BYTES_PER_BIT), full)
    return out


def _dense(rec, values: _Values, start: int, stop: int, out: np.ndarray, block: int) -> None:
    if values.raw is not None or len(values.book) == 1 or rec.indices is None:
        out[:] = values.get(start, stop)
        return
    chunk = values.per_chunk
    block = max(chunk, block // chunk * chunk)
    pos = start
    while pos < stop:
        # blocks end on chunk boundaries so no chunk is decoded twice
        end = min(stop, (pos // chunk) * chunk + block)
        values.fill(pos, end, out[pos - start : end - start])
        pos = end


def _relative(rec, values: _Values, start: int, stop: int, out: np.ndarray, block: int,
              full: bool, method: str, pre: dict | None) -> None:
    rel = rec.relative
    stream = rel.stream
    if stream.n_symbols == 0:
        return
    covered = rel.covered
    n_chunks = stream.n_chunks
    if full:
        g0, g1 = 0, n_chunks
    else:
        # gap chunks whose positions can fall in [start, stop)
        g0 = max(0, int(np.searchsorted(covered, start, side="right")) - 1)
        g1 = min(n_chunks, max(g0 + 1, int(np.searchsorted(covered, stop, side="left"))))
    per = max(1, block // stream.chunk)
    reals = 0
    for b0 in range(g0, g1, per):
        b1 = min(g1, b0 + per)
        syms = _chunk_symbols(stream, b0, b1, "relative index stream", rec.name, method, pre)
        # a whole decode checks every chunk; a slice checks what it decoded
        positions, r0 = sparse.decode_relative(rel, rec.numel, rec.name, first=b0, last=b1,
                                               symbols=syms)
        reals += len(positions)
        lo = int(np.searchsorted(positions, start, side="left"))
        hi = int(np.searchsorted(positions, stop, side="left"))
        if hi > lo:
            out[positions[lo:hi] - start] = values.get(r0 + lo, r0 + hi)
    if full and reals != rel.nnz:
        raise FormatError(f"relative index: {reals} real entries, header says {rel.nnz}",
                          offset=stream.offset, tensor=rec.name, rule="SPA-2")


def _bitmap(rec, values: _Values, start: int, stop: int, out: np.ndarray, block: int,
            full: bool) -> None:
    bm = rec.bitmap
    raw = np.frombuffer(bm.bits, dtype=np.uint8)
    rank = sparse.bitmap_count_before(bm, start)
    block = max(8, block // 8 * 8)
    pos = start
    while pos < stop:
        end = min(stop, (pos // 8) * 8 + block)
        b0, b1 = pos // 8, -(-end // 8)
        bits = np.unpackbits(raw[b0:b1], bitorder="little")
        local = np.flatnonzero(bits[pos - 8 * b0 : end - 8 * b0])
        if rank + len(local) > bm.nnz:
            raise FormatError(f"bitmap has more than the {bm.nnz} set bits its header declares",
                              offset=bm.offset, tensor=rec.name, rule="SPA-2")
        if len(local):
            out[local + (pos - start)] = values.get(rank, rank + len(local))
        rank += len(local)
        pos = end
    if full and rank != bm.nnz:
        raise FormatError(f"bitmap has {rank} set bits, header says {bm.nnz}", offset=bm.offset,
                          tensor=rec.name, rule="SPA-2")


def present(flat: np.ndarray, shape: tuple, dtype: DType) -> np.ndarray:
    """Storage-dtype flat array -> the array users get (shape, native order, bfloat16 view)."""
    arr = flat.reshape(shape)
    target = dtype.numpy
    if arr.dtype == target:
        return arr
    if dtype is DType.BFLOAT16:
        return arr.view(target)
    return arr.astype(target)
