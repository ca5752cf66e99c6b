"""Bounds-checked reading and writing of the format's primitive fields (spec 2).

A :class:`Cursor` walks a buffer that has already been read and checksummed (a
record body, the index, a header).  Every read checks the bytes that remain;
running past the end raises the error class the caller chose -- a record whose
fields overrun its declared length is corrupt (FormatError), a file that stops
early is truncated (TruncatedError).  The cursor knows the absolute file offset
of its buffer, so every error says where it happened.
"""

from __future__ import annotations

import re
import struct

from .errors import DczError, FormatError

__all__ = ["Cursor", "uvar", "uvar_size", "UVAR_MAX_BYTES", "control_char"]

_CONTROL = re.compile("[\x00-\x1f\x7f]")


def control_char(text: str) -> str | None:
    """The first C0 control character or DEL in ``text`` (forbidden in names and keys), or None."""
    m = _CONTROL.search(text)
    return m.group() if m else None

UVAR_MAX_BYTES = 10
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def uvar(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as minimal unsigned LEB128 (spec 2.2)."""
    if value < 0 or value >= 1 << 64:
        raise OverflowError(f"uvar out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def uvar_size(value: int) -> int:
    """Number of bytes :func:`uvar` uses for ``value``."""
    return max(1, (value.bit_length() + 6) // 7)


class Cursor:
    """Sequential reader over ``buf`` whose first byte is at file offset ``base``.

    Args:
        buf: bytes-like object (bytes, bytearray, memoryview, mmap slice).
        base: absolute offset of ``buf[0]`` in the file, for error messages.
        overrun: exception class raised when a read passes the end.
        overrun_rule: spec rule id attached to that exception.
        tensor: tensor name attached to errors, if any.
    """

    __slots__ = ("buf", "pos", "end", "base", "overrun", "overrun_rule", "tensor")

    def __init__(
        self,
        buf,
        base: int = 0,
        *,
        overrun: type[DczError] = FormatError,
        overrun_rule: str = "RCD-5",
        tensor: str | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> None:
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        self.pos = start
        self.end = len(self.buf) if end is None else end
        self.base = base
        self.overrun = overrun
        self.overrun_rule = overrun_rule
        self.tensor = tensor

    # -- location helpers -------------------------------------------------------
    @property
    def offset(self) -> int:
        """Absolute file offset of the next byte to read."""
        return self.base + self.pos

    @property
    def remaining(self) -> int:
        """Bytes left before the end of this cursor's range."""
        return self.end - self.pos

    def fail(self, cls: type[DczError], message: str, rule: str, at: int | None = None) -> DczError:
        """Build an error located at ``at`` (a buffer position) or the cursor."""
        pos = self.pos if at is None else at
        return cls(message, offset=self.base + pos, tensor=self.tensor, rule=rule)

    def need(self, n: int, what: str) -> None:
        """Raise the overrun error unless ``n`` more bytes are available."""
        if n > self.end - self.pos:
            raise self.fail(
                self.overrun,
                f"{what} needs {n} bytes but only {self.end - self.pos} remain",
                self.overrun_rule,
            )

    # -- primitive reads ----------------------------------------------------------
    def u8(self, what: str) -> int:
        self.need(1, what)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self, what: str) -> int:
        self.need(2, what)
        (value,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return value

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return value

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes as a zero-copy memoryview."""
        self.need(n, what)
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def uvar(self, what: str) -> int:
        """Read a minimal unsigned LEB128 value below 2**64 (spec 2.2, rule PRI-1)."""
        start = self.pos
        if start < self.end and self.buf[start] < 0x80:  # one-byte fast path
            self.pos = start + 1
            return self.buf[start]
        value = 0
        shift = 0
        for i in range(UVAR_MAX_BYTES):
            if self.pos >= self.end:
                raise self.fail(self.overrun, f"{what}: varint runs past the end", self.overrun_rule, start)
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise self.fail(FormatError, f"{what}: varint is not minimal", "PRI-1", start)
                if value >= 1 << 64:
                    raise self.fail(FormatError, f"{what}: varint {value} is not below 2**64", "PRI-1", start)
                return value
            shift += 7
        raise self.fail(FormatError, f"{what}: varint longer than {UVAR_MAX_BYTES} bytes", "PRI-1", start)

    def text(self, n: int, what: str, rule: str) -> str:
        """Read ``n`` bytes of strict UTF-8 (no surrogates, no overlong forms)."""
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8", "strict")
        except UnicodeDecodeError as exc:
            raise self.fail(FormatError, f"{what} is not valid UTF-8 ({exc.reason})", rule,
                            self.pos - n + exc.start) from None

    def done(self, what: str, rule: str) -> None:
        """Raise unless every byte of the range was consumed (no trailing bytes)."""
        if self.pos != self.end:
            raise self.fail(FormatError, f"{self.end - self.pos} unexpected bytes after {what}", rule)


# -- bit-packed unsigned arrays (spec 2.4) -------------------------------------


def pack_uints(values, width: int) -> bytes:
    """Pack non-negative integers in ``width`` bits each, LSB-first, zero-padded to a byte."""
    import numpy as np

    v = np.asarray(values, dtype=np.uint64)
    if width == 0 or len(v) == 0:
        return b""
    bits = ((v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def packed_size(count: int, width: int) -> int:
    """Bytes :func:`pack_uints` produces for ``count`` values of ``width`` bits."""
    return (count * width + 7) // 8


def write_packed(values) -> bytes:
    """A packed array with its width byte: ``width u8`` then the values (spec 2.4).

    The width is the bit length of the largest value (0 when all are 0), so the
    encoding of an array is unique.
    """
    import numpy as np

    v = np.asarray(values, dtype=np.int64)
    width = int(v.max()).bit_length() if len(v) else 0
    return bytes([width]) + pack_uints(v, width)


def read_packed(cur: "Cursor", count: int, what: str, rule: str, max_width: int = 63):
    """Read a packed array of ``count`` values written by :func:`write_packed`.

    Checks that the width is at most ``max_width``, that it is minimal (the
    largest value needs all its bits) and that the padding bits are zero.
    """
    import numpy as np

    at = cur.pos
    width = cur.u8(f"{what} width")
    if width > max_width:
        raise cur.fail(FormatError, f"{what}: width {width} exceeds {max_width}", rule, at)
    nbytes = packed_size(count, width)
    raw = cur.take(nbytes, what)
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    if raw[-1] >> (8 - (-count * width) % 8):  # the unused high bits of the last byte
        raise cur.fail(FormatError, f"{what}: padding bits are not zero", rule, at + nbytes)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count * width, bitorder="little")
    # each row of `width` bits packs into ceil(width/8) little-endian bytes;
    # padded to 8 bytes, a row reads as one uint64
    rows = np.zeros((count, 8), dtype=np.uint8)
    rows[:, : (width + 7) // 8] = np.packbits(bits.reshape(count, width), axis=1, bitorder="little")
    values = rows.view("<u8").reshape(count).astype(np.int64)
    if int(values.max()).bit_length() != width:
        raise cur.fail(FormatError, f"{what}: width {width} is not the bit length of the largest "
                       "value", rule, at)
    return values
