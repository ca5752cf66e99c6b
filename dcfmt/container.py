"""The container layer (spec 3): file header, record framing, metadata, index, trailer.

One small function per structure, in the style of numpy's ``.npy`` module.
Readers of files, streams and memory maps all go through these functions, so
every structure is checked the same way wherever it is read.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

from .binary import Cursor, control_char, uvar
from .constants import (
    END_MAGIC,
    FILE_HEADER_SIZE,
    HEADER_CRITICAL_MASK,
    HEADER_KNOWN_FLAGS,
    MAGIC,
    MAX_RANK,
    RECORD_KNOWN_FLAGS,
    RECORD_OPTIONAL,
    TRAILER_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    RecordKind,
)
from .dtypes import DType, from_code
from .errors import ChecksumError, FormatError, TruncatedError, UnsupportedFeatureError, VersionError
from .limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "FileHeader",
    "IndexEntry",
    "encode_header",
    "parse_header",
    "encode_trailer",
    "parse_trailer",
    "record_prefix",
    "encode_metadata",
    "parse_metadata",
    "encode_index",
    "parse_index",
    "sniff",
]

_HEADER = struct.Struct("<8sBBHI")
_TRAILER = struct.Struct("<QI4s")


def crc32(*parts) -> int:
    """CRC-32 (ISO-HDLC, as zlib) of the concatenation of ``parts``."""
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


# ---------------------------------------------------------------------------
# File header (spec 3.1)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileHeader:
    """The decoded file header: format version and feature flags."""

    major: int
    minor: int
    flags: int


def encode_header(minor: int = VERSION_MINOR, flags: int = 0) -> bytes:
    """The 16-byte file header of a format 1.x file."""
    head = _HEADER.pack(MAGIC, VERSION_MAJOR, minor, flags, 0)[:12]
    return head + struct.pack("<I", crc32(head))


def sniff(data: bytes) -> str | None:
    """Name the format that ``data`` (a file's first bytes) looks like, if not .dcz."""
    if data.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch .pt/.pth checkpoint?)"
    if data.startswith(b"GGUF"):
        return "a GGUF file"
    if data.startswith(b"\x93NUMPY"):
        return "a numpy .npy file"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a torch checkpoint?)"
    if len(data) >= 9:
        (n,) = struct.unpack_from("<Q", data)
        if data[8:9] == b"{" and n < 1 << 40:
            return "a safetensors file"
    if data.startswith(b"\x89HDF"):
        return "an HDF5 file"
    return None


def parse_header(data: bytes, *, checksum: bool = True) -> FileHeader:
    """Check the 16 bytes at offset 0 (rules HDR-1..HDR-4; HDR-4 unless ``checksum=False``)."""
    if len(data) < FILE_HEADER_SIZE:
        if MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise TruncatedError(f"file has {len(data)} bytes, a .dcz header needs {FILE_HEADER_SIZE}",
                                 offset=0, rule="HDR-1")
    magic, major, minor, flags, crc = _HEADER.unpack_from(bytes(data[:FILE_HEADER_SIZE]).ljust(16, b"\0"))
    if magic != MAGIC:
        looks = sniff(bytes(data[:64]))
        hint = f"; it looks like {looks}" if looks else ""
        raise FormatError(f"not a .dcz file: magic is {bytes(data[:8])!r}, expected {MAGIC!r}{hint}",
                          offset=0, rule="HDR-1")
    if major != VERSION_MAJOR:
        raise VersionError(f"format version {major}.{minor} is not supported (this reader reads "
                           f"{VERSION_MAJOR}.x)", offset=8, rule="HDR-2")
    if checksum and crc32(bytes(data[:12])) != crc:
        raise ChecksumError(f"file header CRC-32 is 0x{crc:08x}, computed 0x{crc32(bytes(data[:12])):08x}",
                            offset=12, rule="HDR-4")
    unknown = flags & HEADER_CRITICAL_MASK & ~HEADER_KNOWN_FLAGS
    if unknown:
        raise UnsupportedFeatureError(f"file sets unknown critical feature flags 0x{unknown:02x}",
                                      offset=10, rule="HDR-3")
    return FileHeader(major, minor, flags)


# ---------------------------------------------------------------------------
# Trailer (spec 3.6)
# ---------------------------------------------------------------------------


def encode_trailer(index_offset: int) -> bytes:
    """The 16-byte trailer pointing at the index record."""
    head = struct.pack("<Q", index_offset)
    return head + struct.pack("<I", crc32(head)) + END_MAGIC


def parse_trailer(data: bytes, file_size: int, *, checksum: bool = True) -> int:
    """Check the last 16 bytes (TRL-1..TRL-3; TRL-2 unless ``checksum=False``); return the index offset."""
    index_offset, crc, end = _TRAILER.unpack(bytes(data))
    at = file_size - TRAILER_SIZE
    if end != END_MAGIC:
        raise FormatError(f"trailer end magic is {end!r}, expected {END_MAGIC!r} (truncated file?)",
                          offset=at + 12, rule="TRL-1")
    if checksum and crc32(bytes(data[:8])) != crc:
        raise ChecksumError("trailer CRC-32 mismatch", offset=at + 8, rule="TRL-2")
    if not FILE_HEADER_SIZE <= index_offset < at:
        raise FormatError(f"index offset {index_offset} is outside {FILE_HEADER_SIZE}..{at - 1}",
                          offset=at, rule="TRL-3")
    return index_offset


# ---------------------------------------------------------------------------
# Record framing (spec 3.2)
# ---------------------------------------------------------------------------


def record_prefix(kind: int, flags: int, body_len: int) -> bytes:
    """Kind, flags and body length: the bytes before a record body."""
    return bytes([kind, flags]) + uvar(body_len)


def check_record_flags(kind: int, flags: int, offset: int) -> None:
    """RCD-1 / RCD-2: reserved flag bits and the optional flag of known kinds."""
    if flags & ~RECORD_KNOWN_FLAGS:
        raise FormatError(f"record flags 0x{flags:02x} set reserved bits", offset=offset + 1, rule="RCD-2")
    try:
        RecordKind(kind)
    except ValueError:
        if kind == 0:
            raise FormatError("record kind 0 (padding where a record must start)", offset=offset,
                              rule="RCD-1") from None
        if not flags & RECORD_OPTIONAL:
            raise UnsupportedFeatureError(f"unknown critical record kind {kind}", offset=offset,
                                          rule="RCD-1") from None
        return
    if flags & RECORD_OPTIONAL:
        raise FormatError(f"record kind {RecordKind(kind).name} must not be marked optional",
                          offset=offset + 1, rule="RCD-2")


# ---------------------------------------------------------------------------
# Metadata (spec 3.5)
# ---------------------------------------------------------------------------


def _has_control(text: str) -> bool:
    return control_char(text) is not None


def encode_metadata(metadata: dict) -> bytes:
    """Body of a METADATA record: string pairs sorted by key bytes (spec 3.5)."""
    from .errors import EncodeError

    items = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EncodeError(f"metadata maps str to str; got {type(key).__name__} -> "
                              f"{type(value).__name__} for key {key!r}")
        try:
            kb, vb = key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"metadata key or value is not valid UTF-8: {exc.reason}") from None
        if not kb or _has_control(key):
            raise EncodeError(f"metadata key {key!r} is empty or has a control character")
        items.append((kb, vb))
    items.sort()
    out = bytearray(uvar(len(items)))
    for kb, vb in items:
        out += uvar(len(kb)) + kb + uvar(len(vb)) + vb
    return bytes(out)


def parse_metadata(cur: Cursor, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """Parse a METADATA body (MET-1..MET-3).  Values are returned as inert strings."""
    at = cur.pos
    count = cur.uvar("metadata entry count")
    limits.check("metadata entries", count, "max_metadata_entries", offset=cur.base + at)
    # every entry needs at least 3 bytes: reject impossible counts in O(1)
    if count * 3 > cur.remaining:
        raise cur.fail(FormatError, f"{count} metadata entries cannot fit in {cur.remaining} bytes",
                       "MET-1", at)
    out: dict[str, str] = {}
    last = None
    for _ in range(count):
        at = cur.pos
        kb = bytes(cur.take(cur.uvar("metadata key length"), "metadata key"))
        vlen = cur.uvar("metadata value length")
        vat = cur.pos
        vb = bytes(cur.take(vlen, "metadata value"))
        # decode key and value separately so the error points at the bad one
        # (exc.object is a copy, so it cannot tell which of the two failed)
        try:
            key = kb.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise cur.fail(FormatError, f"metadata key is not valid UTF-8 ({exc.reason})", "MET-3",
                           at) from None
        try:
            value = vb.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise cur.fail(FormatError, f"metadata value is not valid UTF-8 ({exc.reason})", "MET-3",
                           vat) from None
        if not kb or _has_control(key):
            raise cur.fail(FormatError, f"metadata key {key!r} is empty or has a control character",
                           "MET-2", at)
        if last is not None and kb <= last:
            raise cur.fail(FormatError, f"metadata key {key!r} is not after {last.decode()!r} "
                           "(keys must be unique and sorted)", "MET-1", at)
        last = kb
        out[key] = value
    cur.done("metadata entries", "MET-1")
    return out


# ---------------------------------------------------------------------------
# Index (spec 3.7)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One index entry: a record's kind, place and, for tensors, name, dtype and shape."""

    kind: int
    offset: int
    length: int
    name: str | None = None
    dtype: DType | None = None
    shape: tuple[int, ...] | None = None


def encode_index(entries: list[IndexEntry]) -> bytes:
    """Body of the INDEX record."""
    out = bytearray(uvar(len(entries)))
    for e in entries:
        out += bytes([e.kind]) + uvar(e.offset) + uvar(e.length)
        if e.kind == RecordKind.TENSOR:
            name = e.name.encode("utf-8")
            out += uvar(len(name)) + name + bytes([e.dtype, len(e.shape)])
            for d in e.shape:
                out += uvar(d)
    return bytes(out)


def parse_index(cur: Cursor, index_offset: int, limits: DecodeLimits = DEFAULT_LIMITS) -> list[IndexEntry]:
    """Parse the INDEX body and check its layout rules (NDX-1..NDX-5) without reading records.

    Entries must tile the bytes between the file header and the index: each
    starts where the previous ended, or at the next multiple of 64 after it
    (alignment padding); metadata is first; tensor names are unique.
    """
    at = cur.pos
    count = cur.uvar("index entry count")
    limits.check("records", count, "max_tensors", offset=cur.base + at)
    if count * 3 > cur.remaining:
        raise cur.fail(FormatError, f"{count} index entries cannot fit in {cur.remaining} bytes",
                       "NDX-1", at)
    entries = []
    names: set[str] = set()
    expected = FILE_HEADER_SIZE
    for i in range(count):
        at = cur.pos
        kind = cur.u8("index entry kind")
        offset = cur.uvar("record offset")
        length = cur.uvar("record length")
        if kind == 0 or kind == RecordKind.INDEX:
            raise cur.fail(FormatError, f"index entry {i} has kind {kind}, which no record before "
                           "the index can have", "NDX-2", at)
        if kind == RecordKind.METADATA and i != 0:
            raise cur.fail(FormatError, "the metadata record must be the first record", "FIL-3", at)
        gap = offset - expected
        if not (gap == 0 or (0 < gap < 64 and offset % 64 == 0)):
            raise cur.fail(FormatError, f"index entry {i} places a record at {offset}, expected "
                           f"{expected} (or the next multiple of 64)", "NDX-3", at)
        if length < 7 or offset + length > index_offset:
            raise cur.fail(FormatError, f"index entry {i}: record {offset}+{length} overruns the "
                           f"index at {index_offset}", "NDX-3", at)
        expected = offset + length
        name = dtype = shape = None
        if kind == RecordKind.TENSOR:
            nlen = cur.uvar("index name length")
            if nlen == 0:
                raise cur.fail(FormatError, "empty tensor name in index", "TEN-1", at)
            limits.check("tensor name length", nlen, "max_name_bytes", offset=cur.base + at)
            name = cur.text(nlen, "index tensor name", "TEN-1")
            if _has_control(name):
                raise cur.fail(FormatError, f"tensor name {name!r} contains a control character",
                               "TEN-2", at)
            if name in names:
                raise cur.fail(FormatError, f"duplicate tensor name {name!r}", "FIL-4", at)
            names.add(name)
            dat = cur.pos
            try:
                dtype = from_code(cur.u8("index element type"))
            except UnsupportedFeatureError as exc:
                raise exc.located(offset=cur.base + dat, tensor=name)
            rank = cur.u8("index rank")
            if rank > MAX_RANK:
                raise cur.fail(FormatError, f"rank {rank} exceeds {MAX_RANK}", "TEN-3", dat + 1)
            shape = tuple(cur.uvar("index dimension") for _ in range(rank))
        entries.append(IndexEntry(kind, offset, length, name, dtype, shape))
    if expected != index_offset:
        raise FormatError(f"records end at {expected}, but the index starts at {index_offset}",
                          offset=index_offset, rule="NDX-3")
    cur.done("index entries", "NDX-1")
    return entries
