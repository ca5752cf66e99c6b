"""Reading .dcz files front to back: from a pipe, a file, or bytes in memory.

:func:`walk` is the one parser of a whole file's structure (spec 3): file
header, records (with alignment padding), the index and the trailer.  It reads
through a *source* -- a stream that may return short reads and cannot seek, or
a buffer -- so the streaming :class:`Reader`, :func:`dcfmt.load` and the
validator check exactly the same rules.

A tensor is handed out only after its record's CRC-32 has been verified and
its body parsed; a record is decoded only when the caller asks for it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from typing import Iterator

import numpy as np

from .binary import Cursor, UVAR_MAX_BYTES
from .constants import (
    ALIGNMENT,
    CRC_SIZE,
    FILE_HEADER_SIZE,
    RECORD_ALIGNED,
    TRAILER_SIZE,
    RecordKind,
)
from .container import (
    IndexEntry,
    check_record_flags,
    crc32,
    parse_header,
    parse_index,
    parse_metadata,
    parse_trailer,
    FileHeader,
)
from .errors import ChecksumError, FormatError, TruncatedError
from .limits import DEFAULT_LIMITS, DecodeLimits
from .decoder import decode_in_batches
from .record import TensorRecord, decode_tensor, parse_tensor

__all__ = ["Reader", "walk", "Event", "StreamSource", "BufferSource"]

_BIG_READ = 16 << 20  # reads above this grow with the data actually received


class StreamSource:
    """Sequential reads from a binary file object (any number of short reads, no seeking)."""

    def __init__(self, f) -> None:
        self.f = f
        self.pos = 0

    def read(self, n: int, what: str) -> memoryview:
        """Exactly ``n`` bytes, or TruncatedError naming ``what``.

        Large reads are gathered in pieces, so a stream that declares a huge
        record and then ends costs memory for what arrived, not what was declared.
        """
        if n <= _BIG_READ:
            buf = bytearray(n)
            view = memoryview(buf)
            got = 0
            while got < n:
                k = self.f.readinto(view[got:]) if hasattr(self.f, "readinto") else None
                if k is None:
                    chunk = self.f.read(n - got)
                    k = len(chunk)
                    view[got : got + k] = chunk
                if not k:
                    raise TruncatedError(f"stream ended after {got} of {n} bytes of {what}",
                                         offset=self.pos + got, rule="FIL-1")
                got += k
            self.pos += n
            return view
        pieces = []
        got = 0
        while got < n:
            piece = self.read(min(_BIG_READ, n - got), what)
            pieces.append(piece)
            got += len(piece)
        out = bytearray(n)
        at = 0
        for p in pieces:
            out[at : at + len(p)] = p
            at += len(p)
        return memoryview(out)

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at the end of the stream."""
        out = bytearray()
        while len(out) < n:
            chunk = self.f.read(n - len(out))
            if not chunk:
                break
            out += chunk
        self.pos += len(out)
        return bytes(out)

    def at_end(self) -> bool:
        return not self.f.read(1)


class BufferSource:
    """Zero-copy sequential reads from bytes, a bytearray or a memory map."""

    def __init__(self, buf) -> None:
        self.buf = memoryview(buf).cast("B")
        self.pos = 0

    def read(self, n: int, what: str) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise TruncatedError(f"{what} needs {n} bytes, only {len(self.buf) - self.pos} remain",
                                 offset=self.pos, rule="FIL-1")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at the end of the buffer."""
        view = self.buf[self.pos : self.pos + n]
        self.pos += len(view)
        return bytes(view)

    def at_end(self) -> bool:
        return self.pos == len(self.buf)

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos


@dataclasses.dataclass
class Event:
    """One step of :func:`walk`.

    ``kind`` is "header", "metadata", "tensor", "skipped" (an unknown optional
    record) or "end"; the matching payload field is set.
    """

    kind: str
    offset: int
    header: FileHeader | None = None
    metadata: dict | None = None
    record: TensorRecord | None = None
    entries: list | None = None


def _read_uvar(src, what: str) -> tuple[int, bytes]:
    raw = bytearray()
    for _ in range(UVAR_MAX_BYTES):
        b = src.read(1, what)[0]
        raw.append(b)
        if not b & 0x80:
            break
    cur = Cursor(bytes(raw), src.pos - len(raw), overrun=FormatError, overrun_rule="PRI-1")
    return cur.uvar(what), bytes(raw)


def walk(src, limits: DecodeLimits = DEFAULT_LIMITS, *, checksums: bool = True) -> Iterator[Event]:
    """Parse a whole .dcz file from ``src`` and yield its parts in file order.

    Checks every structural rule of spec 3 (header, record framing and CRCs,
    padding, metadata placement, index agreement with the records, trailer,
    no trailing bytes) and parses tensor records (spec 4) without decoding
    them.  Raises a DczError at the first violation.  ``checksums=False``
    skips every CRC-32 (header, records, trailer); every other rule is still checked.
    """
    # read what there is: a short file that is not .dcz at all says so (HDR-1)
    header = parse_header(src.read_upto(FILE_HEADER_SIZE), checksum=checksums)
    yield Event("header", 0, header=header)
    pos = FILE_HEADER_SIZE
    seen: list[IndexEntry] = []
    names: set[str] = set()
    while True:
        start = pos
        first = src.read(1, "record kind")
        kind = first[0]
        padded = False
        if kind == 0 and pos % ALIGNMENT:
            pad = (-pos) % ALIGNMENT
            rest = src.read(pad - 1, "alignment padding")
            if any(rest):
                raise FormatError("alignment padding bytes are not zero", offset=pos, rule="RCD-4")
            pos += pad
            start = pos
            kind = src.read(1, "record kind")[0]
            padded = True
        flags = src.read(1, "record flags")[0]
        body_len, raw_len = _read_uvar(src, "record body length")
        prefix = bytes([kind, flags]) + raw_len
        limit_name = {RecordKind.INDEX: "max_index_bytes",
                      RecordKind.METADATA: "max_metadata_bytes"}.get(kind, "max_record_bytes")
        limits.check("record body", body_len, limit_name, offset=start)
        if isinstance(src, BufferSource) and body_len + CRC_SIZE > src.remaining:
            raise TruncatedError(f"record at {start} declares {body_len} body bytes, only "
                                 f"{src.remaining} remain", offset=start, rule="FIL-1")
        check_record_flags(kind, flags, start)
        aligned = bool(flags & RECORD_ALIGNED)
        if padded and not aligned:
            raise FormatError("padding before a record that is not ALIGNED", offset=start, rule="RCD-4")
        if aligned and start % ALIGNMENT:
            raise FormatError(f"ALIGNED record at offset {start}, not a multiple of {ALIGNMENT}",
                              offset=start, rule="RCD-4")
        body = src.read(body_len, "record body")
        (stored,) = np.frombuffer(src.read(CRC_SIZE, "record CRC-32"), "<u4")
        computed = crc32(prefix, body) if checksums else int(stored)
        if int(stored) != computed:
            raise ChecksumError(f"record CRC-32 is 0x{int(stored):08x}, computed 0x{computed:08x}",
                                offset=start + len(prefix) + body_len, rule="RCD-3")
        size = len(prefix) + body_len + CRC_SIZE
        body_base = start + len(prefix)
        pos = start + size
        if kind == RecordKind.INDEX:
            if aligned:
                raise FormatError("the index record must not be ALIGNED", offset=start, rule="RCD-4")
            entries = parse_index(Cursor(body, body_base, overrun_rule="NDX-1"), start, limits)
            if entries != seen:
                raise FormatError(_index_mismatch(entries, seen), offset=start, rule="NDX-4")
            trailer = src.read(TRAILER_SIZE, "trailer")
            index_offset = parse_trailer(trailer, pos + TRAILER_SIZE, checksum=checksums)
            if index_offset != start:
                raise FormatError(f"trailer points at {index_offset}, the index is at {start}",
                                  offset=pos, rule="TRL-3")
            if not src.at_end():
                raise FormatError("bytes after the trailer", offset=pos + TRAILER_SIZE, rule="FIL-2")
            yield Event("end", start, entries=entries)
            return
        limits.check("records", len(seen) + 1, "max_tensors", offset=start)
        if kind == RecordKind.METADATA:
            if aligned:
                raise FormatError("a metadata record must not be ALIGNED", offset=start, rule="RCD-4")
            if seen:
                raise FormatError("the metadata record must be the first record", offset=start,
                                  rule="FIL-3")
            meta = parse_metadata(Cursor(body, body_base, overrun_rule="MET-1"), limits)
            seen.append(IndexEntry(kind, start, size))
            yield Event("metadata", start, metadata=meta)
        elif kind == RecordKind.TENSOR:
            cur = Cursor(body, body_base, overrun_rule="RCD-5")
            rec = parse_tensor(cur, offset=start, size=size, aligned=aligned, limits=limits)
            if rec.name in names:
                raise FormatError(f"duplicate tensor name {rec.name!r}", offset=start,
                                  tensor=rec.name, rule="FIL-4")
            names.add(rec.name)
            seen.append(IndexEntry(kind, start, size, rec.name, rec.dtype, rec.shape))
            yield Event("tensor", start, record=rec)
        else:
            seen.append(IndexEntry(kind, start, size))
            yield Event("skipped", start)


def _index_mismatch(entries: list, seen: list) -> str:
    if len(entries) != len(seen):
        return f"index lists {len(entries)} records, the file holds {len(seen)}"
    i, a, b = next((i, a, b) for i, (a, b) in enumerate(zip(entries, seen)) if a != b)
    return f"index entry {i} is {a}, the record there is {b}"


def _open_source(target):
    if isinstance(target, (str, os.PathLike)):
        f = open(target, "rb")
        return StreamSource(f), f
    if isinstance(target, (bytes, bytearray, memoryview)):
        return BufferSource(target), None
    if not hasattr(target, "read"):
        raise TypeError(f"expected a path, bytes or a binary file object, got {type(target).__name__}")
    return StreamSource(target), None


def _can_read_ahead(src) -> bool:
    """True when reading ahead cannot wait on a writer.

    That is bytes, an in-memory ``io.BytesIO``, or a file object (opened by
    this reader or by the caller) whose descriptor is a regular file.  A
    pipe, a socket or an object without a descriptor may be fed by a writer
    that waits for this reader, so it is read one record at a time.
    """
    if isinstance(src, BufferSource):
        return True
    f = src.f
    if isinstance(f, io.BytesIO):
        return True
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


class Reader:
    """Iterate the tensors of a .dcz file front to back; works on pipes and sockets.

    Memory stays bounded by the largest record plus its decoded tensor plus
    a constant: records are read, checksummed, decoded and handed out in
    file order, one at a time.  When reading ahead cannot block (bytes, a
    ``BytesIO``, or a path or file object of a regular file), runs of small
    Huffman-coded records (up to 16 MB of records) are read ahead so that
    their streams decode together in one lock-step pass
    (:func:`dcfmt.decoder.decode_in_batches`); errors still surface in file
    order.  A pipe or socket may be fed by a writer that waits for this
    reader, so it is read one record at a time unless ``batch=True``.  The
    iterator yields ``(name, array)`` pairs; the whole
    file's structure (index, trailer, no trailing bytes) is checked when the
    last tensor has been yielded.

    Args:
        source: a path, bytes, or a binary file object (only ``read`` or
            ``readinto`` is used, so non-seekable streams work).
        limits: decoder limits (spec 9).
        batch: read ahead to decode short streams together.  None (the
            default): only where reading ahead cannot block (see above).

    Example:
        >>> import sys
        >>> with Reader(sys.stdin.buffer) as r:          # doctest: +SKIP
        ...     for name, array in r:
        ...         print(name, array.shape)
    """

    def __init__(self, source, *, limits: DecodeLimits = DEFAULT_LIMITS,
                 batch: bool | None = None) -> None:
        self._src, self._owned = _open_source(source)
        self._limits = limits
        self._batch = _can_read_ahead(self._src) if batch is None else batch
        self._events = walk(self._src, limits)
        self._pending: Event | None = None
        self.header: FileHeader | None = None
        self.entries: list[IndexEntry] | None = None
        self._metadata: dict | None = None
        self._started = False

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            ev = next(self._events)
            self.header = ev.header
            ev = next(self._events)
        except StopIteration:  # pragma: no cover - walk always ends with "end"
            return
        if ev.kind == "metadata":
            self._metadata = ev.metadata
        else:
            self._metadata = {}
            self._pending = ev

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata (read from the first record; empty if the file has none)."""
        self._start()
        return dict(self._metadata)

    def records(self) -> Iterator[TensorRecord]:
        """Yield parsed, checksum-verified tensor records without decoding them."""
        self._start()
        while True:
            if self._pending is not None:
                ev, self._pending = self._pending, None
            else:
                try:
                    ev = next(self._events)
                except StopIteration:
                    return
            if ev.kind == "tensor":
                yield ev.record
            elif ev.kind == "end":
                self.entries = ev.entries
                return

    def _limited_records(self) -> Iterator[TensorRecord]:
        total = 0
        for rec in self.records():
            total += rec.decoded_bytes
            self._limits.check("decoded bytes so far", total, "max_total_bytes",
                               offset=rec.offset, tensor=rec.name)
            yield rec

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        # a stream's record buffers are ours to hand out; bytes given by the
        # caller are not, so those tensors are copied
        copy = isinstance(self._src, BufferSource)
        if not self._batch:
            for rec in self._limited_records():
                yield rec.name, decode_tensor(rec, copy=copy)
            return
        for rec, array in decode_in_batches(
                self._limited_records(), lambda rec, pre: decode_tensor(rec, copy=copy, pre=pre)):
            yield rec.name, array

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
