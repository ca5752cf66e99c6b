"""Length-limited canonical Huffman coding with chunked random access (spec 5).

Encoder side:
    * :func:`code_lengths` -- optimal code lengths under a length cap (package-merge).
    * :func:`encode_stream` -- symbols -> the serialized stream structure of spec 5.2.

Decoder side:
    * :func:`parse_stream` -- reads and checks a stream's header (O(table) work,
      nothing decoded), returning a :class:`Stream`.
    * :func:`decode` / :func:`decode_many` / :func:`decode_chunks` -- table-driven
      decoding of many chunks in lock-step with numpy.  ``decode_many`` runs
      the chunks of several streams side by side; the reader uses it for the
      short streams of consecutive tensors (:func:`dcfmt.decoder.predecode`).

Why lock-step: a Huffman stream is sequential, so a scalar decoder runs one
symbol at a time.  Because the stream stores the bit offset of every chunk of
``2**chunk_log`` symbols, all chunks can be decoded at once: every numpy call
below advances one symbol in each of thousands of chunks ("lanes").  A 64-bit
window read once every ``64 // max_len`` steps feeds several steps of pure
shift/mask/lookup work, which is why the encoder caps code lengths at 12 bits
by default (spec 5.1 allows 16).

Bit order (spec 2.3): bits fill each byte from the least significant bit; a
code is written most significant bit first, so a decoder indexes its table
with bit-reversed codes, like DEFLATE.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode

from . import parallel
from .binary import Cursor, read_packed, uvar, write_packed
from .constants import (
    DEFAULT_CHUNK_LOG,
    DEFAULT_MAX_CODE_LENGTH,
    MAX_CHUNK_LOG,
    MAX_CODE_LENGTH,
    MIN_CHUNK_LOG,
)
from .errors import FormatError

__all__ = [
    "Stream",
    "code_lengths",
    "canonical_codes",
    "check_lengths",
    "encode_stream",
    "encoded_size",
    "stream_bits",
    "parse_stream",
    "decode",
    "decode_many",
    "decode_chunks",
]

# ---------------------------------------------------------------------------
# Code construction
# ---------------------------------------------------------------------------


def code_lengths(freqs: np.ndarray, max_length: int = DEFAULT_MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths for ``freqs`` with no code longer than ``max_length``.

    Uses the package-merge algorithm (Larmore & Hirschberg), which is optimal
    among length-limited codes and equals Huffman's lengths when the cap does
    not bind.  Ties are broken by symbol number, so the result is deterministic.
    The cap is raised to the smallest feasible value when more symbols are used
    than ``2**max_length`` allows.

    Args:
        freqs: non-negative counts, one per symbol of the alphabet.
        max_length: longest code allowed (1..16).

    Returns:
        uint8 array of lengths, 0 for unused symbols.  A single used symbol gets
        length 1 (spec 5.1, the one-symbol rule).

    Example:
        >>> code_lengths(np.array([5, 1, 1, 2])).tolist()
        [1, 3, 3, 2]
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(len(freqs), dtype=np.uint8)
    used = np.flatnonzero(freqs > 0)
    n = len(used)
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    cap = max(int(max_length), (n - 1).bit_length())
    if cap > MAX_CODE_LENGTH:
        raise ValueError(f"{n} symbols cannot be coded within {MAX_CODE_LENGTH} bits")
    # Leaves sorted by (weight, symbol): lighter symbols get the longer codes.
    order = used[np.lexsort((used, freqs[used]))]
    leaves = freqs[order]
    cap = min(cap, n - 1)
    # Build the package-merge lists from the deepest level up.  Each level's
    # merged list is leaves + packages (pairs of the level below), sorted
    # stably with leaves first on ties; only the leaf flags are kept.
    is_leaf_levels = []
    current = leaves
    is_leaf_levels.append(np.ones(n, dtype=bool))
    for _ in range(cap - 1):
        m = len(current) // 2
        packages = current[0 : 2 * m : 2] + current[1 : 2 * m : 2]
        merged = np.concatenate([leaves, packages])
        perm = np.argsort(merged, kind="stable")
        current = merged[perm]
        is_leaf_levels.append(perm < n)
    # Select the 2n-2 cheapest items of the top list and walk down.
    counts = np.zeros(n + 1, dtype=np.int64)
    take = 2 * n - 2
    for is_leaf in reversed(is_leaf_levels):
        flags = is_leaf[:take]
        leaves_taken = int(np.count_nonzero(flags))
        counts[leaves_taken] += 1  # leaves 0..leaves_taken-1 gain one level
        take = 2 * (take - leaves_taken)
        if take == 0:
            break
    depth = np.cumsum(counts[::-1])[::-1][1:]  # depth[i] = levels whose prefix covers leaf i
    lengths[order] = depth.astype(np.uint8)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (spec 5.1): codes are assigned in order of (length, symbol).

    Returns an int64 array; the code of symbol ``s`` is the ``lengths[s]`` low
    bits of ``codes[s]``, most significant bit first.  Symbols of length 0 get 0.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    used = np.flatnonzero(lengths)
    if len(used) == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    ls = lengths[order]
    # code_i = (code_{i-1} + 1) << (l_i - l_{i-1}); as a closed form over the
    # left-justified codes: lj_i = sum_{j<i} 2**(16 - l_j).
    step = np.left_shift(np.int64(1), MAX_CODE_LENGTH - ls)
    lj = np.concatenate([[0], np.cumsum(step)[:-1]])
    codes[order] = lj >> (MAX_CODE_LENGTH - ls)
    return codes


def _reverse_bits(values: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    """Reverse the low ``widths`` bits of each value (values < 2**16)."""
    v = np.asarray(values, dtype=np.int64)
    rev8 = _REV8
    r16 = (rev8[v & 0xFF] << 8) | rev8[(v >> 8) & 0xFF]
    return r16 >> (16 - np.asarray(widths, dtype=np.int64))


_REV8 = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.int64)


def check_lengths(lengths: np.ndarray, err) -> None:
    """Apply the code-length rules of spec 5.1 (HUF-4..HUF-6); ``err(msg, rule)`` builds the error."""
    # a histogram of the lengths, then Python over its few entries: parsing a
    # record of a small tensor is dominated by per-call costs, not by work
    counts = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 1).tolist()
    used = sum(counts[1:])
    if used == 0:
        raise err("code-length table assigns no symbol", "HUF-4")
    if used == 1:
        length = next(ln for ln, c in enumerate(counts) if ln and c)
        if length != 1:
            raise err(f"a one-symbol table must use length 1, found {length}", "HUF-6")
        return
    kraft = sum(c << (MAX_CODE_LENGTH - ln) for ln, c in enumerate(counts) if ln)
    full = 1 << MAX_CODE_LENGTH
    if kraft > full:
        raise err(f"code lengths are over-subscribed (Kraft sum {kraft}/{full})", "HUF-5")
    if kraft < full:
        raise err(f"code lengths are incomplete (Kraft sum {kraft}/{full})", "HUF-5")


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------

_ENCODE_BLOCK = 1 << 16  # symbols per vectorised block: keeps temporaries in cache
#: symbols per unit of work handed to a thread (a multiple of most chunks); streams
#: of twice this many symbols or more are split, so that 10^6 indices use 2 threads
_RANGE_ALIGN = 1 << 18


def _pack_lengths(lengths: np.ndarray, width: int) -> bytes:
    bits = ((lengths.astype(np.uint16)[:, None] >> np.arange(width, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def _range_freqs(symbols: np.ndarray, alphabet: int, parts: list[tuple[int, int]]) -> list[np.ndarray]:
    """Symbol counts of each range (``len > alphabet``: a symbol is out of the alphabet).

    Counting block by block never makes a full-size intp copy of the symbols
    (``np.bincount`` converts its input to intp).
    """
    def part(lo: int, hi: int) -> np.ndarray:
        freqs = np.zeros(alphabet, dtype=np.int64)
        for a in range(lo, hi, _ENCODE_BLOCK):
            f = np.bincount(symbols[a : min(hi, a + _ENCODE_BLOCK)], minlength=alphabet)
            if len(f) > alphabet:
                return f
            freqs += f
        return freqs

    return parallel.run(part, parts)


def _pack_range(symbols: np.ndarray, lens: np.ndarray, rcodes: np.ndarray, pair_base: int | None,
                chunk: int, lo: int, hi: int, pos: int, end_bit: int, starts: np.ndarray) -> np.ndarray:
    """Pack ``symbols[lo:hi]``, whose first code starts at bit ``pos``, into fresh words.

    With ``pair_base`` None, ``lens``/``rcodes`` are per symbol and the words
    are 32-bit: a code (<= 16 bits) shifted by its offset in its word stays
    below 2**47.  With ``pair_base`` B, the tables are indexed by ``s0 * B + s1``
    for two consecutive symbols (B - 1 is an empty code that pads an odd
    block); with ``pair_base`` _BYTE_PAIRS (uint8 symbols) by ``s0 + 256 s1``,
    the uint16 the two bytes make (256 is the empty code).  Pair codes are up
    to 32 bits and the words are 16-bit, so that again
    a shifted code stays below 2**48: half as many elements go through every
    step.  Either way a float64 bincount adds the disjoint bit fields of the
    codes that start in one word exactly, and the high parts of each sum
    spill into the next words.

    Returns the words from the one holding bit ``pos`` through the one
    holding ``end_bit``, plus spill room; writes the start bit of each chunk
    of the range into ``starts``.
    """
    wbits = 32 if pair_base is None else 16
    shift = wbits.bit_length() - 1
    low = wbits - 1
    wdt = np.dtype("<u4" if pair_base is None else "<u2")
    spill = 2 if pair_base is None else 3  # words one sum can touch
    base = pos >> shift
    words = np.zeros((end_bit >> shift) + spill - base, dtype=wdt)
    step = 1 if pair_base is None else 2
    block = max(chunk, (_ENCODE_BLOCK // chunk) * chunk)
    byte_pairs = pair_base == _BYTE_PAIRS
    for a in range(lo, hi, block):
        n_sym = min(hi, a + block) - a
        # take() with intp indices: with narrow ones numpy is several times slower
        if byte_pairs:
            # two uint8 symbols read as one little-endian uint16 are the pair index
            # s0 + 256 s1; a last odd symbol pairs with the empty code, 256
            even = n_sym & ~1
            s = symbols[a : a + even].view("<u2").astype(np.intp)
            if n_sym & 1:
                s = np.append(s, int(symbols[a + even]) + 256 * 256)
        else:
            s = symbols[a : a + n_sym].astype(np.intp)
            if pair_base is not None:
                if n_sym & 1:
                    s = np.append(s, pair_base - 1)
                pair = s[0::2] * pair_base
                pair += s[1::2]
                s = pair
        ln = lens.take(s)
        # block-relative positions; the bit offset within the first word is folded
        # in so that word = rel >> shift.  intp, because bincount would copy
        # narrower indices into intp anyway.
        rel = np.cumsum(ln, dtype=np.intp)
        rel -= ln
        rel += pos & low
        starts[a // chunk : (a + n_sym + chunk - 1) // chunk] = rel[:: chunk // step] + (pos & ~low)
        rc = rcodes.take(s)
        rc <<= rel & low
        rel >>= shift
        sums = np.bincount(rel, weights=rc.astype(np.float64)).astype("<u8")
        w0 = (pos >> shift) - base
        m = len(sums)
        # the k-th word of each sum, little-endian, is column k of its words
        fields = sums.view(wdt).reshape(m, 64 // wbits)
        for k in range(spill):
            words[w0 + k : w0 + k + m] |= fields[:, k]
        pos += int(ln.sum(dtype=np.int64))
    return words


#: Symbols from which a stream over at most 256 symbols is packed two symbols at a
#: time: the pair tables have (A + 1)**2 entries, too many to build for short streams.
_PAIR_MIN_SYMBOLS = 1 << 16
#: pair_base of uint8 symbols packed as byte pairs (tables of 256 x 257 entries)
_BYTE_PAIRS = -1


def _pack_symbols(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray, chunk: int,
                  ranges: list[tuple[int, int]], range_bits: list[int],
                  total_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the codes of ``symbols``; return (payload bytes, chunk start bits).

    ``ranges`` (chunk-aligned) are packed on separate threads into their own
    words, then OR-ed together in order: ranges share at most their boundary
    words, and two threads must never update one word.
    """
    rcodes = _reverse_bits(codes, lengths).astype(np.int64)
    lens = lengths.astype(np.int32)
    n = len(symbols)
    pair_base = None
    if (len(lengths) <= 256 and n >= _PAIR_MIN_SYMBOLS and chunk >= 2 and symbols.dtype == np.uint8
            and symbols.flags.c_contiguous):
        # byte pairs: the tables are indexed by s0 + 256 s1, which is the uint16
        # that the two bytes make (no arithmetic per pair); 256 is the empty code
        pair_base = _BYTE_PAIRS
        lens = np.append(np.pad(lens, (0, 256 - len(lens))), 0)
        rcodes = np.append(np.pad(rcodes, (0, 256 - len(rcodes))), 0)
        rcodes = (rcodes[:256][None, :] | (rcodes[:, None] << lens[:256][None, :].astype(np.int64))).reshape(-1)
        lens = (lens[:256][None, :] + lens[:, None]).reshape(-1)
    elif len(lengths) <= 256 and n >= _PAIR_MIN_SYMBOLS and chunk >= 2:
        # pair tables: symbol A is the empty code; the first code takes the low bits
        pair_base = len(lengths) + 1
        lens = np.append(lens, 0)
        rcodes = np.append(rcodes, 0)
        rcodes = (rcodes[:, None] | (rcodes[None, :] << lens[:, None].astype(np.int64))).reshape(-1)
        lens = (lens[:, None] + lens[None, :]).reshape(-1)
    wbits = 32 if pair_base is None else 16
    shift = wbits.bit_length() - 1
    starts = np.empty((n + chunk - 1) // chunk, dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(range_bits, dtype=np.int64)]).tolist()
    jobs = {a: (pos, end) for (a, _), pos, end in zip(ranges, firsts, firsts[1:])}

    def part(lo: int, hi: int) -> tuple[int, np.ndarray]:
        pos, end = jobs[lo]
        return pos >> shift, _pack_range(symbols, lens, rcodes, pair_base, chunk, lo, hi, pos, end,
                                         starts)

    parts = parallel.run(part, ranges)
    if len(parts) == 1:
        words = parts[0][1]
    else:
        words = np.zeros((total_bits >> shift) + 3, dtype=parts[0][1].dtype)
        for base, w in parts:
            words[base : base + len(w)] |= w
    payload = words.astype(words.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    return payload[: (total_bits + 7) // 8], starts


def stream_bits(freqs: np.ndarray, lengths: np.ndarray) -> int:
    """Payload bits a stream with these symbol counts and code lengths needs."""
    return int(np.dot(np.asarray(freqs, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


def encoded_size(symbols: np.ndarray, alphabet: int, *, max_length: int = DEFAULT_MAX_CODE_LENGTH,
                 chunk_log: int = DEFAULT_CHUNK_LOG) -> int:
    """Exact byte size :func:`encode_stream` would produce, without packing any bits."""
    symbols = np.asarray(symbols)
    n = len(symbols)
    if n == 0:
        return len(uvar(0))
    freqs = np.bincount(symbols.astype(np.int64, copy=False), minlength=alphabet)
    lengths = code_lengths(freqs, max_length)
    total = stream_bits(freqs, lengths)
    max_len = int(lengths.max())
    n_lengths = int(np.flatnonzero(lengths)[-1]) + 1
    chunk = 1 << chunk_log
    n_chunks = -(-n // chunk)
    table = 0
    if n_chunks > 1:
        per_symbol = lengths.astype(np.int64).take(symbols[: (n_chunks - 1) * chunk])
        sizes = per_symbol.reshape(n_chunks - 1, chunk).sum(axis=1)
        table = 1 + (int(sizes.max()).bit_length() * (n_chunks - 1) + 7) // 8
    return (len(uvar(n)) + 1 + len(uvar(n_lengths)) + (n_lengths * max_len.bit_length() + 7) // 8
            + 1 + len(uvar(total)) + table + (total + 7) // 8)


def encode_stream(
    symbols: np.ndarray,
    alphabet: int,
    *,
    max_length: int = DEFAULT_MAX_CODE_LENGTH,
    chunk_log: int = DEFAULT_CHUNK_LOG,
    lengths: np.ndarray | None = None,
) -> bytes:
    """Serialize ``symbols`` (integers below ``alphabet``) as a Huffman stream (spec 5.2).

    Args:
        symbols: 1-D integer array.
        alphabet: alphabet size A; every symbol must be below it.
        max_length: code-length cap used to build the code (ignored if ``lengths``).
        chunk_log: chunks hold ``2**chunk_log`` symbols (4..24).
        lengths: a code to use instead of building one from the symbol counts.

    Returns:
        The stream bytes, starting with the symbol count.
    """
    symbols = np.asarray(symbols)
    n = len(symbols)
    if n == 0:
        return uvar(0)
    if not MIN_CHUNK_LOG <= chunk_log <= MAX_CHUNK_LOG:
        raise ValueError(f"chunk_log must be in [{MIN_CHUNK_LOG}, {MAX_CHUNK_LOG}]")
    if symbols.dtype.kind not in "ui":
        symbols = symbols.astype(np.int64)
    chunk = 1 << chunk_log
    ranges = parallel.ranges(n, max(chunk, _RANGE_ALIGN))  # chunk-aligned
    range_freqs = _range_freqs(symbols, alphabet, ranges)
    for f in range_freqs:
        if len(f) > alphabet:
            raise ValueError(f"symbol {len(f) - 1} is outside the alphabet of {alphabet}")
    freqs = np.sum(range_freqs, axis=0)
    if lengths is None:
        lengths = code_lengths(freqs, max_length)
    lengths = np.asarray(lengths, dtype=np.uint8)
    if np.any((freqs > 0) & (lengths[: len(freqs)] == 0)):
        raise ValueError("the code has no codeword for a symbol that occurs")
    codes = canonical_codes(lengths)
    max_len = int(lengths.max())
    n_lengths = int(np.flatnonzero(lengths)[-1]) + 1
    width = max_len.bit_length()
    total = stream_bits(freqs, lengths[: len(freqs)])
    range_bits = [stream_bits(f, lengths[:alphabet]) for f in range_freqs]
    payload, starts = _pack_symbols(symbols, lengths, codes, chunk, ranges, range_bits, total)
    sizes = np.diff(np.append(starts, total))[:-1]
    parts = [
        uvar(n),
        bytes([max_len]),
        uvar(n_lengths),
        _pack_lengths(lengths[:n_lengths], width),
        bytes([chunk_log]),
        uvar(total),
        write_packed(sizes) if len(starts) > 1 else b"",
        payload.tobytes(),
    ]
    return b"".join(parts)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stream:
    """A parsed, header-checked Huffman stream (spec 5.2); nothing decoded yet.

    Attributes:
        n_symbols: symbols in the stream (N).
        alphabet: alphabet size the context gives (A).
        lengths: code length per symbol (uint8, length ``alphabet``).
        max_len: longest code (L).
        chunk_log: log2 of symbols per chunk.
        bit_len: payload bits.
        starts: bit offset of each chunk (int64, first is 0).
        payload: the payload bytes (zero-copy view).
        offset: absolute file offset of the stream's first byte.
        size: bytes the stream occupies.
    """

    n_symbols: int
    alphabet: int
    lengths: np.ndarray
    max_len: int
    chunk_log: int
    bit_len: int
    starts: np.ndarray
    payload: memoryview
    offset: int
    size: int

    @property
    def chunk(self) -> int:
        return 1 << self.chunk_log

    @property
    def n_chunks(self) -> int:
        return len(self.starts)

    def chunk_counts(self) -> np.ndarray:
        """Symbols in each chunk (all full except possibly the last)."""
        counts = np.full(self.n_chunks, self.chunk, dtype=np.int64)
        if self.n_chunks:
            counts[-1] = self.n_symbols - (self.n_chunks - 1) * self.chunk
        return counts

    def chunk_ends(self) -> np.ndarray:
        """Bit offset where each chunk must end."""
        return np.append(self.starts[1:], self.bit_len).astype(np.int64)


def parse_stream(cur: Cursor, alphabet: int, what: str) -> Stream:
    """Read a stream header from ``cur`` and check every rule that needs no decoding.

    Checks HUF-1..HUF-10 of spec 5: field ranges, the code-length table (Kraft
    equality or the one-symbol rule), the chunk offsets (each chunk needs at
    least one and at most ``max_len`` bits per symbol), that the declared
    symbol count is possible for the payload size (O(1)), and zero padding.
    """
    start = cur.pos
    n = cur.uvar(f"{what} symbol count")

    def err(message: str, rule: str, at: int | None = None) -> FormatError:
        return cur.fail(FormatError, f"{what}: {message}", rule, at)

    if n == 0:
        return Stream(0, alphabet, np.zeros(alphabet, np.uint8), 0, 0, 0,
                      np.zeros(0, np.int64), memoryview(b""), cur.base + start, cur.pos - start)
    at = cur.pos
    max_len = cur.u8(f"{what} max code length")
    if not 1 <= max_len <= MAX_CODE_LENGTH:
        raise err(f"max code length {max_len} is outside 1..{MAX_CODE_LENGTH}", "HUF-1", at)
    at = cur.pos
    n_lengths = cur.uvar(f"{what} length count")
    if not 1 <= n_lengths <= alphabet:
        raise err(f"{n_lengths} code lengths for an alphabet of {alphabet}", "HUF-2", at)
    width = max_len.bit_length()
    nbytes = (n_lengths * width + 7) // 8
    at = cur.pos
    raw = cur.take(nbytes, f"{what} code lengths")
    if raw[-1] >> (8 - (-n_lengths * width) % 8):  # the unused high bits of the last byte
        raise err("padding bits after the code lengths are not zero", "HUF-3", at + nbytes - 1)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n_lengths * width,
                         bitorder="little")
    # each row of `width` bits packs into the low bits of one byte: its length
    stored = np.packbits(bits.reshape(n_lengths, width), axis=1, bitorder="little")[:, 0]
    if stored[-1] == 0:
        raise err("the last stored code length is 0 (trailing zero lengths must be omitted)", "HUF-2", at)
    if int(stored.max()) != max_len:
        raise err(f"declared max code length {max_len} but the table's longest is {int(stored.max())}",
                  "HUF-1", at)
    check_lengths(stored, lambda m, r: err(m, r, at))
    lengths = np.zeros(alphabet, dtype=np.uint8)
    lengths[:n_lengths] = stored
    at = cur.pos
    chunk_log = cur.u8(f"{what} chunk size")
    if not MIN_CHUNK_LOG <= chunk_log <= MAX_CHUNK_LOG:
        raise err(f"chunk_log {chunk_log} is outside {MIN_CHUNK_LOG}..{MAX_CHUNK_LOG}", "HUF-7", at)
    at = cur.pos
    bit_len = cur.uvar(f"{what} bit length")
    if not n <= bit_len <= n * max_len:
        raise err(f"{n} symbols of 1..{max_len} bits cannot take {bit_len} bits", "HUF-8", at)
    chunk = 1 << chunk_log
    n_chunks = (n + chunk - 1) // chunk
    payload_bytes = (bit_len + 7) // 8
    # O(1) plausibility before reading the chunk table or the payload
    cur.need(payload_bytes, f"{what} payload")
    starts = np.zeros(n_chunks, dtype=np.int64)
    if n_chunks > 1:
        at = cur.pos
        sizes = read_packed(cur, n_chunks - 1, f"{what} chunk sizes", "HUF-9", max_width=32)
        np.cumsum(sizes, out=starts[1:])
        last = bit_len - int(starts[-1])
        last_count = n - (n_chunks - 1) * chunk
        # every chunk but the last holds `chunk` symbols: two reductions check them
        if int(sizes.min()) < chunk or int(sizes.max()) > chunk * max_len:
            k = int(np.flatnonzero((sizes < chunk) | (sizes > chunk * max_len))[0])
            raise err(f"chunk {k} spans {int(sizes[k])} bits for {chunk} symbols of "
                      f"1..{max_len} bits", "HUF-9", at)
        if not last_count <= last <= last_count * max_len:
            raise err(f"chunk {n_chunks - 1} spans {last} bits for {last_count} symbols of "
                      f"1..{max_len} bits", "HUF-9", at)
    at = cur.pos
    payload = cur.take(payload_bytes, f"{what} payload")
    if bit_len % 8 and payload[-1] >> (bit_len % 8):
        raise err("padding bits after the last code are not zero", "HUF-10", at + payload_bytes - 1)
    return Stream(n, alphabet, lengths, max_len, chunk_log, bit_len, starts, payload,
                  cur.base + start, cur.pos - start)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

_LANE_BATCH = 8192  # lanes decoded together; ~1 MB of working state
_MIN_LANE_BATCH = 2048  # fewer lanes pay too much fixed cost per numpy call
#: decode_many keeps the decode tables that one batch of lanes reads within
#: about this many bytes: lanes of many streams look up many tables, and once
#: those outgrow the L2 cache each lookup misses.
_BATCH_TABLE_BYTES = 1 << 20
_STAGE_STEPS = 64   # steps staged before transposing into the output
#: Streams with fewer chunks than this are decoded by bitarray's C decoder, one
#: chunk after another: lock-step pays ~7 us of numpy calls per step whatever
#: the number of lanes (7-9 us measured with 8 lanes), so it only wins when
#: there are many lanes.
LOCKSTEP_MIN_CHUNKS = 256
_I6, _I63 = (np.asarray(c, dtype=np.int64) for c in (6, 63))
_U64 = np.asarray(64, dtype=np.uint64)


def _tables(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Decode tables of ``2**max_len`` entries: symbol and code length (0 = invalid code).

    Entry ``w`` is for the window ``w`` of the next ``max_len`` bits, first bit
    least significant.  In the most-significant-first order, the codes of a
    canonical code are consecutive runs of ``2**(max_len - length)`` entries in
    (length, symbol) order, so the table is built there with one repeat and
    then bit-reversed; an incomplete code leaves invalid entries at the end.
    """
    L = stream.max_len
    lengths = stream.lengths.astype(np.int64)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    ls = lengths[order]
    reps = np.left_shift(1, L - ls)
    total = int(reps.sum())  # <= 2**L (Kraft, HUF-5)
    sym = np.zeros(1 << L, dtype=_symbol_dtype(stream.alphabet))
    sym[:total] = np.repeat(order, reps)
    ln = np.zeros(1 << L, dtype=np.int64)
    ln[:total] = np.repeat(ls, reps)
    perm = _reversal(L)
    return sym[perm], ln[perm]


@functools.lru_cache(maxsize=None)
def _reversal(width: int) -> np.ndarray:
    """The permutation ``i -> reverse of the width low bits of i`` (read-only: it is shared)."""
    perm = _reverse_bits(np.arange(1 << width, dtype=np.int64), width)
    perm.flags.writeable = False
    return perm


def _symbol_dtype(alphabet: int) -> np.dtype:
    return np.dtype(np.uint8) if alphabet <= 256 else np.dtype(np.uint16)


def _padded(payload: memoryview, extra: int) -> np.ndarray:
    """The payload followed by zero bytes that over-reads of lanes may touch."""
    size = len(payload) + extra + 16
    buf = np.zeros(size + (-size % 8), dtype=np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return buf


# 0-d arrays, not numpy scalars: a scalar operand costs a conversion on every call.
# Swap levels from the widest fields down: the 32-bit halves, then 16, then 8
# bits (2-byte symbols need only the first two).
_SWAP_MASKS = [np.asarray(m, dtype=np.uint64) for m in
               (0x00000000FFFFFFFF, 0x0000FFFF0000FFFF, 0x00FF00FF00FF00FF)]
_SWAP_SHIFTS = [np.asarray(s, dtype=np.uint64) for s in (32, 16, 8)]


def _transpose_into(stage: np.ndarray, out: np.ndarray) -> None:
    """``out[:, t] = ``step t of ``stage`` for a (S, n) uint8/uint16 ``stage``, S and n multiples of 8.

    With ``r = 8 // itemsize`` symbols per 8-byte word, step ``t = r*s + i``
    is stored in row ``i*(S/r) + s`` (see :func:`_stage_rows`).  numpy copies
    transposed 1- and 2-byte elements at ~5 ns each; treating each 8-byte
    word as a row of an 8x8 (or 4x4) block and transposing the blocks with
    delta swaps (Hacker's Delight 7-3) costs a fifth of that, and the row
    order above makes both halves of every swap a few contiguous runs, which
    numpy processes ~3x faster than the interleaved rows of step order.  The
    words then move as whole uint64 values.  ``stage`` is used as scratch.
    """
    steps, n = stage.shape
    e = stage.itemsize
    r = 8 // e
    m = (steps // r) * (n // r)
    x = stage.view(np.uint64).reshape(r, m)
    level = 0
    d = r // 2
    xor = np.bitwise_xor
    t = np.empty((r // 2, m), dtype=np.uint64)
    while d >= 1:
        # in each r x r block, row i (bit d of i clear) swaps its high
        # (8*e*d)-bit fields with the low fields of row i + d (Hacker's Delight 7-3)
        shift = _SWAP_SHIFTS[level]
        mask = _SWAP_MASKS[level]
        pairs = x.reshape(r // (2 * d), 2, d * m)
        a = pairs[:, 0]
        b = pairs[:, 1]
        tt = t.reshape(r // (2 * d), d * m)
        np.right_shift(a, shift, tt)
        xor(tt, b, tt)
        np.bitwise_and(tt, mask, tt)
        xor(b, tt, b)
        np.left_shift(tt, shift, tt)
        xor(a, tt, a)
        d //= 2
        level += 1
    words = x.reshape(r, steps // r, n // r)
    np.copyto(out.view(np.uint64).reshape(n // r, r, steps // r), words.transpose(2, 0, 1))


def _stage_rows(stage: np.ndarray, steps: int) -> list[np.ndarray]:
    """Views of the rows of ``stage`` that hold steps ``0..steps-1`` (see :func:`_transpose_into`)."""
    r = 8 // stage.itemsize
    m = steps // r
    return [stage[(t % r) * m + t // r] for t in range(steps)]


def _run_lanes(buf: np.ndarray, starts: np.ndarray, counts: np.ndarray, symtab: np.ndarray,
               lentab: np.ndarray, masks: np.ndarray, bases: np.ndarray | None, max_len: int,
               out: np.ndarray, batch_lanes: int = _LANE_BATCH) -> np.ndarray:
    """Decode ``counts[i]`` symbols for each lane i starting at bit ``starts[i]`` of ``buf``.

    Writes lane i's symbols to ``out[i, :counts[i]]`` (``out`` has a row per
    lane, rounded up to a multiple of 8 rows, and a multiple of 8 columns) and
    returns the bit position where each lane stopped.  Invalid codes have length
    0, so a lane that meets one stops advancing and its end position exposes it.
    Lanes run in batches of at most ``batch_lanes``.  ``lentab`` is int64, or
    uint8 to keep many streams' tables small (each step then copies the
    lengths into an int64 row for the shifts).
    """
    # aligned little-endian 64-bit words; a window at any bit is built from two
    words = buf[: len(buf) // 8 * 8].view("<u8")
    n_lanes = len(starts)
    ends = np.empty(n_lanes, dtype=np.int64)
    refill = max(1, 64 // max_len)
    n_batches = -(-n_lanes // batch_lanes)
    batch = -(-n_lanes // n_batches)
    batch += -batch % 8
    for k0 in range(0, n_lanes, batch):
        k1 = min(n_lanes, k0 + batch)
        n = k1 - k0
        width = n + (-n % 8)  # dummy lanes make the block transpose whole
        p = np.zeros(width, dtype=np.int64)
        p[:n] = starts[k0:k1]
        cnt = counts[k0:k1]
        lane_steps = int(cnt.max())
        short: dict[int, list[int]] = {}  # step -> lanes that end there (a stream's last chunk)
        for i in np.flatnonzero(cnt < lane_steps):
            short.setdefault(int(cnt[i]), []).append(int(i))
        if masks.ndim:
            mask = np.zeros(width, dtype=np.uint64)
            mask[:n] = masks[k0:k1]
        else:
            mask = masks.astype(np.uint64)
        if bases is not None:
            base = np.zeros(width, dtype=np.int64)
            base[:n] = bases[k0:k1]
        else:
            base = None
        # The window and the shifts are unsigned: numpy shifts uint64 by a
        # variable count ~1.6x faster than int64.  Views share the bits, so
        # the same buffers serve as signed indices for take and for p.
        code = np.empty(width, dtype=np.int64)
        ucode = code.view(np.uint64)
        ln = np.empty(width, dtype=np.int64)
        uln = ln.view(np.uint64)
        stage = np.empty((_STAGE_STEPS, width), dtype=symtab.dtype)
        full_rows = _stage_rows(stage, _STAGE_STEPS)
        q = np.empty(width, dtype=np.int64)
        r = np.empty(width, dtype=np.uint64)
        ri = r.view(np.int64)
        hi = np.empty(width, dtype=np.uint64)
        v = np.empty(width, dtype=np.uint64)
        # On 1,000 lanes a call's fixed cost is as large as its work, so the
        # loop calls ufuncs and take through local names with positional
        # arguments (keywords cost ~0.4 us a call), and its constants are 0-d
        # arrays (numpy converts a Python scalar on every call).  q and q + 1
        # are in range by construction (the buffer is padded for over-reads),
        # as are the table indices; "wrap" is the cheapest bounds-safe mode.
        band, bor, add, sub = np.bitwise_and, np.bitwise_or, np.add, np.subtract
        rshift, lshift = np.right_shift, np.left_shift
        stake, ltake, wtake, wtake1 = symtab.take, lentab.take, words.take, words[1:].take
        compact = lentab.dtype == np.uint8
        if compact:
            ln8 = np.empty(width, dtype=np.uint8)
            copyto = np.copyto
        left = 0
        for s0 in range(0, lane_steps, _STAGE_STEPS):
            s1 = min(lane_steps, s0 + _STAGE_STEPS)
            rows = s1 - s0 + (-(s1 - s0) % 8)
            stage_rows = full_rows if rows == _STAGE_STEPS else _stage_rows(stage[:rows], rows)
            for t in range(s0, s1):
                if t in short:
                    idx = short[t]
                    ends[k0 + np.array(idx)] = p[idx]
                if left == 0:
                    # v = the 64 bits from bit p: (w[q] >> r) | (w[q+1] << (64 - r));
                    # numpy shifts by 64 give 0, which is right for r = 0
                    rshift(p, _I6, q)
                    band(p, _I63, ri)
                    wtake(q, None, v, "wrap")
                    wtake1(q, None, hi, "wrap")
                    rshift(v, r, v)
                    sub(_U64, r, r)
                    lshift(hi, r, hi)
                    bor(v, hi, v)
                    left = refill
                band(v, mask, ucode)
                if base is not None:
                    add(code, base, code)
                stake(code, None, stage_rows[t - s0], "wrap")
                if compact:
                    ltake(code, None, ln8, "wrap")
                    copyto(ln, ln8)
                else:
                    ltake(code, None, ln, "wrap")
                rshift(v, uln, v)
                add(p, ln, p)
                left -= 1
            _transpose_into(stage[:rows], out[k0 : k0 + width, s0 : s0 + rows])
        full = cnt == lane_steps
        ends[k0:k1][full] = p[:n][full]
    return ends


def _check_ends(stream: Stream, lanes: np.ndarray, ends: np.ndarray, what: str, tensor) -> None:
    expected = stream.chunk_ends()[lanes]
    bad = np.flatnonzero(ends != expected)
    if len(bad):
        k = int(lanes[bad[0]])
        raise FormatError(
            f"{what}: chunk {k} decodes to bit {int(ends[bad[0]])}, expected {int(expected[bad[0]])} "
            "(invalid code or wrong chunk offset)",
            offset=stream.offset, tensor=tensor, rule="HUF-11",
        )


def _out_array(n_lanes: int, chunk: int, dtype: np.dtype) -> np.ndarray:
    return np.empty((n_lanes + (-n_lanes % 8), chunk), dtype=dtype)


def _chunk_bytes(stream: Stream, first: int, last: int) -> tuple[int, int]:
    """The payload bytes ``[byte0, byte1)`` that hold chunks ``first..last-1``."""
    return int(stream.starts[first]) >> 3, (int(stream.chunk_ends()[last - 1]) + 7) >> 3


def _decode_bitarray(stream: Stream, first: int, last: int, what: str, tensor) -> np.ndarray:
    """Decode chunks one after another with bitarray's canonical decoder (small streams)."""
    lengths = stream.lengths
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    count = np.bincount(lengths[used], minlength=stream.max_len + 1).tolist()
    count[0] = 0
    symbol = order.tolist()
    # only the bytes of these chunks: a few chunks of a long stream (the end of a
    # block, a small slice) must not copy the whole payload
    byte0, byte1 = _chunk_bytes(stream, first, last)
    bits = bitarray(endian="little")
    bits.frombytes(bytes(stream.payload[byte0:byte1]))
    starts = stream.starts - 8 * byte0
    file_ends = stream.chunk_ends()
    ends = file_ends - 8 * byte0
    counts = stream.chunk_counts()
    out = np.empty(int(counts[first:last].sum()), dtype=_symbol_dtype(stream.alphabet))
    small = out.dtype == np.uint8
    pos = 0
    for k in range(first, last):
        want = int(counts[k])
        try:
            syms = list(canonical_decode(bits[int(starts[k]) : int(ends[k])], count, symbol))
        except ValueError:
            syms = None
        if syms is None or len(syms) != want:
            raise FormatError(
                f"{what}: chunk {k} does not decode to exactly {want} symbols ending at bit "
                f"{int(file_ends[k])} (invalid code or wrong chunk offset)",
                offset=stream.offset, tensor=tensor, rule="HUF-11",
            )
        # bytes(list) converts 3x faster than np.array(list)
        out[pos : pos + want] = np.frombuffer(bytes(syms), np.uint8) if small else syms
        pos += want
    return out


def decode_chunks(stream: Stream, first: int, last: int, what: str = "stream",
                  tensor: str | None = None, *, method: str = "auto") -> np.ndarray:
    """Decode chunks ``first..last-1`` of ``stream``; returns their symbols.

    Args:
        method: ``"lockstep"`` (numpy, all chunks at once), ``"bitarray"``
            (bitarray's C decoder, chunk by chunk) or ``"auto"`` (lock-step
            when there are at least LOCKSTEP_MIN_CHUNKS chunks).  All give the
            same symbols and the same errors.

    Raises FormatError (HUF-11) if any chunk does not end exactly where the
    next begins, which is also how an invalid code is detected.
    """
    if stream.n_symbols == 0 or first >= last:
        return np.zeros(0, dtype=_symbol_dtype(stream.alphabet))
    if method == "bitarray" or (method == "auto" and last - first < LOCKSTEP_MIN_CHUNKS):
        return _decode_bitarray(stream, first, last, what, tensor)
    lanes = np.arange(first, last)
    counts = stream.chunk_counts()[first:last]
    # copy only the payload bytes of these chunks (plus zero padding for over-reads)
    byte0, byte1 = _chunk_bytes(stream, first, last)
    starts = stream.starts[first:last] - 8 * byte0
    buf = _padded(stream.payload[byte0:byte1], (int(counts.max()) * stream.max_len + 7) // 8)
    symtab, lentab = _tables(stream)
    out = _out_array(len(lanes), stream.chunk, symtab.dtype)
    mask = np.int64((1 << stream.max_len) - 1)
    ends = _run_lanes(buf, starts, counts, symtab, lentab, np.asarray(mask), None,
                      stream.max_len, out)
    _check_ends(stream, lanes, ends + 8 * byte0, what, tensor)
    n = int(counts.sum())
    flat = out.reshape(-1)
    return flat if len(flat) == n else flat[:n]


def decode(stream: Stream, what: str = "stream", tensor: str | None = None, *,
           method: str = "auto") -> np.ndarray:
    """Decode every symbol of ``stream`` (uint8 for alphabets up to 256, else uint16)."""
    return decode_chunks(stream, 0, stream.n_chunks, what, tensor, method=method)


def decode_many(streams: list[Stream], what: str = "stream",
                tensors: list[str | None] | None = None) -> list[np.ndarray]:
    """Decode several streams in one lock-step pass (fast for many small streams).

    Every chunk of every stream becomes a lane; lanes index a concatenation of
    the streams' payloads and decode tables.
    """
    tensors = tensors or [None] * len(streams)
    live = [i for i, s in enumerate(streams) if s.n_symbols]
    results: list[np.ndarray] = [np.zeros(0, _symbol_dtype(s.alphabet)) for s in streams]
    if not live:
        return results
    max_len = max(streams[i].max_len for i in live)
    alphabet = max(streams[i].alphabet for i in live)
    chunk = max(streams[i].chunk for i in live)
    sym_tables, len_tables, lane_starts, lane_counts, lane_masks, lane_bases = [], [], [], [], [], []
    tbase = 0
    pbase = 0
    placed = []
    for i in live:
        s = streams[i]
        symtab, lentab = _tables(s)
        sym_tables.append(symtab)
        len_tables.append(lentab)
        counts = s.chunk_counts()
        lane_starts.append(s.starts + 8 * pbase)
        lane_counts.append(counts)
        lane_masks.append(np.full(len(counts), (1 << s.max_len) - 1, dtype=np.int64))
        lane_bases.append(np.full(len(counts), tbase, dtype=np.int64))
        tbase += len(symtab)
        placed.append(pbase)
        # each stream's over-read stays inside zero padding of its own; every
        # lane runs for as many steps as the longest chunk of *any* stream, at
        # up to the largest max_len bits per step
        pbase += len(s.payload) + (chunk * max_len + 7) // 8 + 8
    buf = np.zeros(pbase + 16 + (-pbase % 8), dtype=np.uint8)
    for i, at in zip(live, placed):
        buf[at : at + len(streams[i].payload)] = np.frombuffer(streams[i].payload, dtype=np.uint8)
    sym_dtype = _symbol_dtype(alphabet)
    symtab = np.concatenate(sym_tables).astype(sym_dtype)
    lentab = np.concatenate(len_tables)
    starts = np.concatenate(lane_starts)
    counts = np.concatenate(lane_counts)
    out = _out_array(len(starts), chunk, sym_dtype)
    if (symtab.nbytes + lentab.nbytes) / len(starts) * _LANE_BATCH > 2 * _BATCH_TABLE_BYTES:
        # Batches would have to shrink below half of _LANE_BATCH to keep their
        # tables in the cache.  Lengths as uint8 make the tables ~4.5x smaller
        # (for uint8 symbols), so ~4.5x more lanes share a batch, at the price
        # of one copy per step (~10 % slower where int64 tables fit anyway):
        # 256 streams of 64K indices decoded 14-24 % faster (A/B).
        lentab = lentab.astype(np.uint8)
    table_bytes = (symtab.nbytes + lentab.nbytes) / len(starts)  # per lane, on average
    batch = int(min(_LANE_BATCH, max(_MIN_LANE_BATCH, _BATCH_TABLE_BYTES / table_bytes)))
    ends = _run_lanes(buf, starts, counts, symtab, lentab, np.concatenate(lane_masks),
                      np.concatenate(lane_bases), max_len, out, batch)
    lane = 0
    for i, at in zip(live, placed):
        s = streams[i]
        k = s.n_chunks
        _check_ends(s, np.arange(k), ends[lane : lane + k] - 8 * at, what, tensors[i])
        sym = out[lane : lane + k, : s.chunk].reshape(-1)[: s.n_symbols]
        results[i] = sym.astype(_symbol_dtype(s.alphabet), copy=False)
        lane += k
    return results
