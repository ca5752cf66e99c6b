"""Byte-level builders for hand-made .dcz files, and odd streams for I/O tests.

Hostile files are built here field by field with ``struct.pack`` and
:func:`dcfmt.binary.uvar`, in the style of llama.cpp's GGUF validation tests,
and every checksum is recomputed with ``zlib.crc32`` so that a test reaches
the deep check it is aimed at instead of stopping at a CRC mismatch.

The builders deliberately do not reuse the encoder (only ``uvar`` and the
index/trailer helpers of :mod:`dcfmt.container`, which have exact-bytes tests of
their own), so a test of a malformed structure cannot be fooled by the same
bug on both sides.
"""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import zlib

import numpy as np

from dcfmt.binary import uvar
from dcfmt.constants import MAGIC, RECORD_ALIGNED, RecordKind, SectionKind
from dcfmt.container import IndexEntry, encode_index

# -- primitives -----------------------------------------------------------------


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def header(major: int = 1, minor: int = 0, flags: int = 0, *, magic: bytes = MAGIC,
           reserved: int = 0, good_crc: bool = True) -> bytes:
    """The 16-byte file header: magic, major, minor, flags (u16), CRC-32 of the first 12."""
    head = magic + struct.pack("<BBH", major, minor, flags)
    value = crc(head) if good_crc else crc(head) ^ 1
    return head + struct.pack("<I", value)


def trailer(index_offset: int, *, end: bytes = b"DCZE", good_crc: bool = True) -> bytes:
    head = struct.pack("<Q", index_offset)
    value = crc(head) if good_crc else crc(head) ^ 1
    return head + struct.pack("<I", value) + end


def record(kind: int, flags: int, body: bytes, *, good_crc: bool = True,
           length: int | None = None) -> bytes:
    """Record framing: kind u8, flags u8, body length uvar, body, CRC-32 of all before."""
    prefix = bytes([kind, flags]) + uvar(len(body) if length is None else length)
    value = crc(prefix + body)
    if not good_crc:
        value ^= 0x80000000
    return prefix + body + struct.pack("<I", value)


def section(kind: int, body: bytes, flags: int = 0, *, length: int | None = None) -> bytes:
    return bytes([kind, flags]) + uvar(len(body) if length is None else length) + body


def tensor_head(name: bytes | str, dtype: int, shape, layout: int = 0, values: int = 0) -> bytes:
    raw = name.encode("utf-8") if isinstance(name, str) else name
    out = uvar(len(raw)) + raw + bytes([dtype, len(shape)])
    for d in shape:
        out += uvar(d)
    return out + bytes([layout, values])


def metadata_body(pairs) -> bytes:
    """METADATA body from (key bytes, value bytes) pairs, in the order given."""
    out = uvar(len(pairs))
    for k, v in pairs:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        out += uvar(len(k)) + k + uvar(len(v)) + v
    return out


def packed(values, width: int | None = None) -> bytes:
    """A bit-packed array (spec 2.4): width u8, then each value in ``width`` bits, LSB first."""
    values = [int(v) for v in values]
    if width is None:
        width = max(values).bit_length() if values else 0
    bits = []
    for v in values:
        bits += [(v >> i) & 1 for i in range(width)]
    body = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes() if bits else b""
    return bytes([width]) + body


def stream_bytes(n: int, lengths, chunk_log: int, bit_len: int, payload: bytes, *,
                 sizes=None, table: bytes | None = None, max_len: int | None = None) -> bytes:
    """A Huffman stream (spec 5.2) from explicit fields.

    ``lengths`` are packed LSB first in ``max_len.bit_length()`` bits each;
    ``sizes`` are the bit sizes of every chunk but the last (a packed array),
    or ``table`` gives that array's bytes verbatim.
    """
    lengths = list(lengths)
    L = max(lengths) if max_len is None else max_len
    width = L.bit_length()  # the parser derives the field width from the declared max
    bits = []
    for value in lengths:
        bits += [(value >> i) & 1 for i in range(width)]
    lens = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes() if bits else b""
    if table is None:
        table = packed(sizes) if sizes is not None else b""
    return (uvar(n) + bytes([L]) + uvar(len(lengths)) + lens + bytes([chunk_log])
            + uvar(bit_len) + table + payload)


# -- whole files -------------------------------------------------------------------


@dataclasses.dataclass
class Rec:
    """A record to place in a file; ``name/dtype/shape`` feed the index entry."""

    kind: int
    body: bytes
    flags: int = 0
    name: str | None = None
    dtype: int | None = None
    shape: tuple | None = None
    good_crc: bool = True
    pad: bytes | None = None  # explicit padding bytes before the record


def tensor_rec(name: str, dtype: int, shape, layout: int = 0, values: int = 0,
               sections: bytes = b"", *, flags: int = 0, head: bytes | None = None) -> Rec:
    body = (tensor_head(name, dtype, shape, layout, values) if head is None else head) + sections
    return Rec(RecordKind.TENSOR, body, flags, name, dtype, tuple(shape))


def build(recs, *, hdr: bytes | None = None, index_entries=None, index_body: bytes | None = None,
          index_flags: int = 0, trailer_offset: int | None = None, tail: bytes = b"",
          trailer_bytes: bytes | None = None) -> bytes:
    """Assemble header, records (padding ALIGNED ones to 64), index and trailer.

    ``index_entries`` may be a function that edits the list of IndexEntry built
    from the records; ``index_body`` replaces the index body outright (bytes, or
    a function of the entries).
    """
    out = bytearray(header() if hdr is None else hdr)
    entries = []
    for r in recs:
        if r.pad is not None:
            out += r.pad
        elif r.flags & RECORD_ALIGNED and len(out) % 64:
            out += bytes(-len(out) % 64)
        start = len(out)
        out += record(r.kind, r.flags, r.body, good_crc=r.good_crc)
        shape = tuple(r.shape) if r.shape is not None else None
        entries.append(IndexEntry(r.kind, start, len(out) - start, r.name,
                                  None if r.dtype is None else _dtype(r.dtype), shape))
    if callable(index_entries):
        entries = index_entries(entries)
    if index_body is None:
        body = encode_index(entries)
    elif callable(index_body):
        body = index_body(entries)
    else:
        body = index_body
    if index_flags & RECORD_ALIGNED and len(out) % 64:
        out += bytes(-len(out) % 64)
    index_at = len(out)
    out += record(RecordKind.INDEX, index_flags, body)
    out += trailer(index_at if trailer_offset is None else trailer_offset) if trailer_bytes is None \
        else trailer_bytes
    return bytes(out + tail)


def _dtype(code: int):
    from dcfmt.dtypes import DType

    try:
        return DType(code)
    except ValueError:
        return code


def raw_padding(before: int, payload: int, after: int = 0) -> int:
    """Smallest padding putting a RAW payload 64-aligned in its record (spec 4.4), by search."""
    for pad in range(128):
        sec_len = pad + payload
        body_len = before + 2 + len(uvar(sec_len)) + sec_len + after
        off = 2 + len(uvar(body_len)) + before + 2 + len(uvar(sec_len)) + pad
        if off % 64 == 0:
            return pad
    raise AssertionError("no padding fits")


def raw_tensor(name: str, values: np.ndarray, dtype: int, *, aligned: bool | None = None,
               pad: int | None = None, pad_byte: int = 0) -> Rec:
    """A dense raw tensor record; ALIGNED (with padding) when its payload has 64+ bytes.

    ``aligned`` forces the flag either way (the padding follows the flag);
    ``pad`` / ``pad_byte`` override the padding for hostile variants.
    """
    payload = np.ascontiguousarray(values).tobytes()
    shape = values.shape
    head = tensor_head(name, dtype, shape)
    if aligned is None:
        aligned = len(payload) >= 64
    if pad is None:
        pad = raw_padding(len(head), len(payload)) if aligned else 0
    body = head + section(SectionKind.RAW, bytes([pad_byte]) * pad + payload)
    return Rec(RecordKind.TENSOR, body, RECORD_ALIGNED if aligned else 0, name, dtype,
               tuple(shape))


def fix_record_crcs(data: bytes) -> bytes:
    """Recompute every record CRC, the header CRC and the trailer CRC of ``data``.

    Walks the record framing only (kind, flags, uvar length), so a body can be
    corrupted freely; framing corruption makes it give up and return ``data``.
    """
    buf = bytearray(data)
    if len(buf) < 16 + 16:
        return data
    buf[12:16] = struct.pack("<I", crc(bytes(buf[:12])))
    pos = 16
    end = len(buf) - 16
    while pos < end:
        if buf[pos] == 0 and pos % 64:
            pos += -pos % 64
            continue
        kind = buf[pos]
        p = pos + 2
        length = 0
        shift = 0
        while p < end:
            b = buf[p]
            p += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80 or shift > 63:
                break
        body_end = p + length
        if body_end + 4 > end:
            return bytes(buf)
        buf[body_end : body_end + 4] = struct.pack("<I", crc(bytes(buf[pos:body_end])))
        pos = body_end + 4
        if kind == RecordKind.INDEX:
            break
    t = len(buf) - 16
    buf[t + 8 : t + 12] = struct.pack("<I", crc(bytes(buf[t : t + 8])))
    return bytes(buf)


# -- streams ----------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """numpy's BytesIOSRandomSize: every read returns a random 1..n bytes (n >= 1).

    Seeded, so a failing case replays; ``readinto`` and ``read`` both short.
    """

    def __init__(self, data: bytes, seed: int = 0, max_read: int | None = None) -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0
        self._rng = random.Random(seed)
        self._max = max_read
        self.calls = 0

    def readable(self) -> bool:
        return True

    def _take(self, n: int) -> int:
        left = len(self._data) - self._pos
        if n <= 0 or left <= 0:
            return 0
        cap = min(n, left) if self._max is None else min(n, left, self._max)
        return self._rng.randint(1, cap)

    def readinto(self, b) -> int:
        self.calls += 1
        k = self._take(len(b))
        b[:k] = self._data[self._pos : self._pos + k]
        self._pos += k
        return k

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if n is None or n < 0:
            n = len(self._data) - self._pos
        k = self._take(n)
        out = bytes(self._data[self._pos : self._pos + k])
        self._pos += k
        return out

    def seekable(self) -> bool:
        return False

    def seek(self, *a):  # pragma: no cover - must never be called
        raise io.UnsupportedOperation("seek")

    def tell(self):  # pragma: no cover - must never be called
        raise io.UnsupportedOperation("tell")


class ReadOnlyShort:
    """A file-like object with only ``read`` (no ``readinto``), short reads."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self._inner = ShortReads(data, seed)

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)


class NoSeekSink:
    """A write-only sink whose seek/tell raise and whose writes may be partial.

    ``mode``: "full" (returns len), "short" (random partial writes), "none"
    (returns None, like a non-blocking raw stream that took everything).
    """

    def __init__(self, mode: str = "full", seed: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.mode = mode
        self._rng = random.Random(seed)
        self.flushed = False

    def write(self, data) -> int | None:
        view = memoryview(data).cast("B")
        if self.mode == "short" and len(view) > 1:
            k = self._rng.randint(1, len(view))
        else:
            k = len(view)
        self.chunks.append(bytes(view[:k]))
        return None if self.mode == "none" else k

    def flush(self) -> None:
        self.flushed = True

    def seek(self, *a):
        raise io.UnsupportedOperation("seek")

    def tell(self):
        raise io.UnsupportedOperation("tell")

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)
