"""The memory-mapped lazy loader: ``dcfmt.open(path)``.

Opening reads the 16-byte header, the 16-byte trailer and the index record --
nothing else is touched, so opening costs memory proportional to the index,
not to what the file declares.  A tensor is parsed, checksummed and decoded
only when asked for; raw tensors come back as read-only zero-copy views of the
map, and ``get_slice(name)[a:b]`` decodes only the Huffman chunks that cover
rows ``a..b`` of the first axis.

Example:
    >>> with dcfmt.open("model.dcz") as f:                 # doctest: +SKIP
    ...     print(f.keys(), f.metadata())
    ...     w = f["fc1.weight"]
    ...     rows = f.get_slice("embed.weight")[1000:2000]
"""

from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np

from .binary import Cursor
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
)
from .decoder import decode_in_batches, decode_range, present
from .errors import ChecksumError, FormatError, TruncatedError
from .limits import DEFAULT_LIMITS, DecodeLimits
from .record import TensorRecord, parse_tensor
from .stats import TensorStats, tensor_stats

__all__ = ["open", "LazyFile", "TensorInfo", "Slice"]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What ``LazyFile.info(name)`` reports without decoding the tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str
    values: str
    stored_bytes: int
    decoded_bytes: int
    nnz: int
    codebook_size: int | None
    recipe: dict
    offset: int


def _frame(buf: memoryview, entry: IndexEntry, verify: bool) -> tuple[int, memoryview, int]:
    """Check a record's framing at ``entry`` and return (flags, body, body offset)."""
    at = entry.offset
    cur = Cursor(buf, 0, overrun=TruncatedError, overrun_rule="FIL-1", start=at, end=at + entry.length)
    kind = cur.u8("record kind")
    flags = cur.u8("record flags")
    body_len = cur.uvar("record body length")
    check_record_flags(kind, flags, at)
    if kind != entry.kind or cur.pos - at + body_len + CRC_SIZE != entry.length:
        raise FormatError(f"record at {at} (kind {kind}, {cur.pos - at + body_len + CRC_SIZE} bytes) "
                          f"does not match its index entry (kind {entry.kind}, {entry.length} bytes)",
                          offset=at, tensor=entry.name, rule="NDX-4")
    body_at = cur.pos
    body = buf[body_at : body_at + body_len]
    if verify:
        (stored,) = np.frombuffer(buf[body_at + body_len : body_at + body_len + CRC_SIZE], "<u4")
        computed = crc32(buf[at:body_at], body)
        if int(stored) != computed:
            raise ChecksumError(f"record CRC-32 is 0x{int(stored):08x}, computed 0x{computed:08x}",
                                offset=body_at + body_len, tensor=entry.name, rule="RCD-3")
    return flags, body, body_at


class Slice:
    """Row slicing of one tensor: ``f.get_slice(name)[a:b]`` (first axis, step 1)."""

    def __init__(self, owner: "LazyFile", name: str) -> None:
        self._owner = owner
        self._name = name
        entry = owner._entry(name)
        self.shape = entry.shape
        self.dtype = entry.dtype

    def get_shape(self) -> list[int]:
        """The tensor's shape (safetensors' PySafeSlice spelling)."""
        return list(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        if not self.shape:
            raise IndexError("a 0-d tensor has no rows to slice")
        if isinstance(key, int):
            n = self.shape[0]
            k = key + n if key < 0 else key
            if not 0 <= k < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return self._owner._rows(self._name, k, k + 1)[0]
        if not isinstance(key, slice):
            raise TypeError("get_slice supports an int or a slice along the first axis")
        a, b, step = key.indices(self.shape[0])
        if step != 1:
            return self._owner._rows(self._name, 0, self.shape[0])[key]
        return self._owner._rows(self._name, a, max(a, b))


class LazyFile:
    """An open .dcz file; see :func:`open`."""

    def __init__(self, path, *, limits: DecodeLimits = DEFAULT_LIMITS, verify: bool = True) -> None:
        self.path = os.fspath(path)
        self._limits = limits
        self._verify = verify
        self._records: dict[str, TensorRecord] = {}
        self._verified: set[int] = set()
        with builtins_open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < FILE_HEADER_SIZE + TRAILER_SIZE:
                head = f.read(FILE_HEADER_SIZE)
                parse_header(head)  # names what the file looks like, or says truncated
                raise TruncatedError(f"file has {size} bytes, fewer than a header and a trailer",
                                     offset=size, rule="FIL-1")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._buf = memoryview(self._map)
            self._open(size)
        except BaseException:
            self.close()
            raise

    def _open(self, size: int) -> None:
        buf = self._buf
        self.header = parse_header(buf[:FILE_HEADER_SIZE])
        index_offset = parse_trailer(buf[size - TRAILER_SIZE :], size)
        limit = size - TRAILER_SIZE
        cur = Cursor(buf, 0, overrun=FormatError, overrun_rule="TRL-3", start=index_offset, end=limit)
        kind = cur.u8("index record kind")
        flags = cur.u8("index record flags")
        body_len = cur.uvar("index body length")
        if kind != RecordKind.INDEX or flags:
            raise FormatError(f"the trailer points at a record of kind {kind}, flags {flags}, not "
                              "the index", offset=index_offset, rule="TRL-3")
        self._limits.check("index body", body_len, "max_index_bytes", offset=index_offset)
        if cur.pos + body_len + CRC_SIZE != limit:
            raise FormatError("the index record does not end at the trailer", offset=index_offset,
                              rule="TRL-3")
        body = buf[cur.pos : cur.pos + body_len]
        (stored,) = np.frombuffer(buf[limit - CRC_SIZE : limit], "<u4")
        if self._verify and int(stored) != crc32(buf[index_offset : cur.pos], body):
            raise ChecksumError("index record CRC-32 mismatch", offset=limit - CRC_SIZE, rule="RCD-3")
        self.entries = parse_index(Cursor(body, cur.pos, overrun_rule="NDX-1"), index_offset,
                                   self._limits)
        self._by_name = {e.name: e for e in self.entries if e.kind == RecordKind.TENSOR}
        ends = [FILE_HEADER_SIZE] + [e.offset + e.length for e in self.entries]
        self._prev_end = {e.offset: end for e, end in zip(self.entries, ends)}
        meta = [e for e in self.entries if e.kind == RecordKind.METADATA]
        self._meta_entry = meta[0] if meta else None
        self._meta: dict | None = None
        # Records of kinds this version does not know are never read, but they
        # must be OPTIONAL ones and must be where the index says (RCD-1, NDX-4):
        # check their framing now.  Such records are rare; known ones are
        # checked when first read.
        for e in self.entries:
            if e.kind not in (RecordKind.TENSOR, RecordKind.METADATA):
                _frame(buf, e, verify=False)

    # -- mapping-like API ---------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._by_name)

    def __iter__(self):
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def metadata(self) -> dict[str, str]:
        """User metadata (parsed and checksummed on first use)."""
        if self._meta is None:
            if self._meta_entry is None:
                self._meta = {}
            else:
                e = self._meta_entry
                flags, body, body_at = self._checked_frame(e)
                if flags & RECORD_ALIGNED:
                    raise FormatError("a metadata record must not be ALIGNED", offset=e.offset,
                                      rule="RCD-4")
                self._limits.check("record body", len(body), "max_metadata_bytes", offset=e.offset)
                self._meta = parse_metadata(Cursor(body, body_at, overrun_rule="MET-1"),
                                            self._limits)
        return dict(self._meta)

    def _entry(self, name: str) -> IndexEntry:
        self._check_open()
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r}") from None

    def _checked_frame(self, entry: IndexEntry):
        # bytes between the previous record and this one are alignment padding:
        # they belong to no record, so check them when the record is read
        gap_start = self._gap_start(entry)
        if gap_start < entry.offset and any(self._buf[gap_start : entry.offset]):
            raise FormatError("alignment padding bytes are not zero", offset=gap_start, rule="RCD-4")
        verify = self._verify and entry.offset not in self._verified
        frame = _frame(self._buf, entry, verify)
        if verify:
            self._verified.add(entry.offset)
        flags = frame[0]
        aligned = bool(flags & RECORD_ALIGNED)
        if (gap_start < entry.offset) != (aligned and gap_start % ALIGNMENT != 0) or \
                (aligned and entry.offset % ALIGNMENT):
            raise FormatError("record alignment does not match its ALIGNED flag", offset=entry.offset,
                              tensor=entry.name, rule="RCD-4")
        return frame

    def _gap_start(self, entry: IndexEntry) -> int:
        return self._prev_end[entry.offset]

    def record(self, name: str) -> TensorRecord:
        """The parsed, checksum-verified record of ``name`` (nothing decoded)."""
        rec = self._records.get(name)
        if rec is None:
            entry = self._entry(name)
            flags, body, body_at = self._checked_frame(entry)
            rec = parse_tensor(Cursor(body, body_at, overrun_rule="RCD-5"), offset=entry.offset,
                               size=entry.length, aligned=bool(flags & RECORD_ALIGNED),
                               limits=self._limits)
            if (rec.name, rec.dtype, rec.shape) != (entry.name, entry.dtype, entry.shape):
                raise FormatError(f"record {rec.name!r} {rec.dtype.label}{list(rec.shape)} does not "
                                  f"match its index entry {entry.name!r} {entry.dtype.label}"
                                  f"{list(entry.shape)}", offset=entry.offset, tensor=entry.name,
                                  rule="NDX-4")
            self._records[name] = rec
        return rec

    def info(self, name: str) -> TensorInfo:
        """Shape, dtype, encoding, stored bytes and recipe of ``name``, without decoding."""
        rec = self.record(name)
        s: TensorStats = tensor_stats(rec)
        return TensorInfo(name=s.name, dtype=s.dtype, shape=tuple(s.shape), layout=s.layout,
                          values=s.values, stored_bytes=s.stored_bytes, decoded_bytes=s.decoded_bytes,
                          nnz=s.nnz, codebook_size=s.codebook, recipe=s.recipe, offset=rec.offset)

    def stats(self, name: str) -> TensorStats:
        """Storage accounting of ``name`` (see :mod:`dcfmt.stats`)."""
        return tensor_stats(self.record(name))

    def __getitem__(self, name: str) -> np.ndarray:
        """Decode tensor ``name``.  Raw tensors are read-only zero-copy views of the map."""
        rec = self.record(name)
        flat = decode_range(rec, 0, rec.numel)
        return present(flat, rec.shape, rec.dtype)

    get_tensor = __getitem__

    def get_tensors(self, names=None) -> dict[str, np.ndarray]:
        """Decode several tensors (default: all, in file order) into a dict.

        Gives the same arrays as ``{n: f[n] for n in names}``, faster when
        there are many small Huffman-coded tensors: the short streams of up
        to 8 M symbols' worth of consecutive tensors are decoded together in
        one lock-step pass.  Errors come in the order of ``names``.
        """
        names = self.keys() if names is None else list(names)

        def decode(rec, pre):
            return present(decode_range(rec, 0, rec.numel, pre=pre), rec.shape, rec.dtype)

        return {rec.name: array
                for rec, array in decode_in_batches((self.record(n) for n in names), decode)}

    def get_slice(self, name: str) -> Slice:
        """A :class:`Slice` for decoding rows of ``name`` along the first axis."""
        return Slice(self, name)

    def _rows(self, name: str, a: int, b: int) -> np.ndarray:
        rec = self.record(name)
        row = 1
        for d in rec.shape[1:]:
            row *= d
        flat = decode_range(rec, a * row, b * row, full=False)
        return present(flat, (b - a,) + tuple(rec.shape[1:]), rec.dtype)

    # -- lifetime -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._map is None:
            raise ValueError("I/O operation on a closed .dcz file")

    def close(self) -> None:
        """Release the map.  Arrays already returned keep their pages alive until freed."""
        self._records.clear()
        for attr in ("_buf", "_map"):
            obj = getattr(self, attr, None)
            setattr(self, attr, None)
            if obj is None:
                continue
            try:
                obj.release() if attr == "_buf" else obj.close()
            except BufferError:
                pass  # zero-copy arrays still use the map; it goes when the last one is freed

    def __enter__(self) -> "LazyFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


builtins_open = open


def open(path, *, limits: DecodeLimits = DEFAULT_LIMITS, verify: bool = True) -> LazyFile:  # noqa: A001
    """Memory-map a .dcz file and read only its header, trailer and index.

    Args:
        path: file to open.
        limits: decoder limits (spec 9).
        verify: check each record's CRC-32 the first time it is read (default);
            False skips checksums for trusted files (structure is still checked).

    Returns:
        A :class:`LazyFile` with ``keys()``, ``metadata()``, ``info(name)``,
        ``f[name]`` and ``get_slice(name)[a:b]``; use it as a context manager.

    Raises:
        DczError: the header, trailer or index is invalid.
        OSError: the file cannot be read.
    """
    return LazyFile(path, limits=limits, verify=verify)
