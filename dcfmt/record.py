"""Tensor records (spec 4): the encoded form of one tensor, its bytes, and back.

* :class:`TensorCode` -- the structured content of a tensor record (layout,
  positions, codebook, indices, raw values, recipe), what plans produce and
  what :meth:`TensorCode.reconstruct` turns into the exact decoded array.
* :func:`encode_tensor` -- TensorCode -> record body parts (spec 4.1-4.2).
* :func:`parse_tensor` -- record body -> :class:`TensorRecord`, every check
  that needs no decoding (shared by the readers, the lazy loader and the
  validator).
* :func:`decode_tensor` -- TensorRecord -> ndarray, with the remaining checks.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import groups, huffman, sparse
from .binary import Cursor, control_char, uvar, uvar_size
from .constants import (
    ALIGN_MIN_PAYLOAD,
    ALIGNMENT,
    DEFAULT_CHUNK_LOG,
    DEFAULT_GROUP_MAX_CODE_LENGTH,
    DEFAULT_MAX_CODE_LENGTH,
    MAX_ALPHABET,
    MAX_CODEBOOK,
    MAX_RANK,
    OPTIONAL_SECTIONS,
    SECTION_KNOWN_FLAGS,
    SECTION_OPTIONAL,
    Layout,
    VERSION_MINOR,
    SectionKind,
    Values,
)
from .dtypes import DType, codebook_dtype_allowed, from_code, widen
from .decoder import decode_range, present
from .errors import EncodeError, FormatError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, DecodeLimits
from .recipe import Recipe

__all__ = [
    "EncodeOptions",
    "TensorCode",
    "TensorRecord",
    "encode_tensor",
    "parse_tensor",
    "decode_tensor",
    "check_name",
]


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """Stream parameters an encoder chooses (they do not change decoded values).

    Attributes:
        chunk_log: Huffman chunks hold ``2**chunk_log`` symbols (spec 5.2).
        max_code_length: cap on Huffman code lengths (spec allows up to 16).
        group_indices: code the indices of small codebooks (up to 64 entries)
            in groups when that is smaller (spec 7.4, format 1.1).  False writes
            only 1.0 sections, for readers that predate 1.1.
        group_max_code_length: cap on the codes of grouped index streams.
        index_group: 0 lets the encoder choose; g >= 2 groups every index
            stream whose ``k**g`` is at most 65536 by g, smaller or not (for
            tests and conformance vectors).
    """

    chunk_log: int = DEFAULT_CHUNK_LOG
    max_code_length: int = DEFAULT_MAX_CODE_LENGTH
    group_indices: bool = True
    group_max_code_length: int = DEFAULT_GROUP_MAX_CODE_LENGTH
    index_group: int = 0

    @property
    def format_minor(self) -> int:
        """The minor format version of files written with these options (spec 13)."""
        return VERSION_MINOR if self.group_indices else 0


DEFAULT_OPTIONS = EncodeOptions()


def check_name(name: str, max_bytes: int = DEFAULT_LIMITS.max_name_bytes) -> bytes:
    """UTF-8 bytes of a tensor name, or EncodeError if the format forbids it (TEN-1, TEN-2)."""
    if not isinstance(name, str):
        raise EncodeError(f"tensor names are strings, got {type(name).__name__}")
    raw = name.encode("utf-8", "strict") if _encodable(name) else None
    if raw is None:
        raise EncodeError(f"tensor name {name!r} is not encodable as UTF-8")
    if not 1 <= len(raw) <= max_bytes:
        raise EncodeError(f"tensor name must have 1..{max_bytes} UTF-8 bytes, has {len(raw)}")
    bad = _control_char(name)
    if bad is not None:
        raise EncodeError(f"tensor name {name!r} contains control character U+{ord(bad):04X}")
    return raw


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "strict")
        return True
    except UnicodeEncodeError:
        return False


_control_char = control_char


# ---------------------------------------------------------------------------
# In-memory form
# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class TensorCode:
    """The content of one tensor record, before serialization.

    Attributes:
        name: tensor name (1..4096 UTF-8 bytes, no control characters).
        dtype: element type.
        shape: dimensions (rank 0..32).
        layout: DENSE, RELATIVE or BITMAP.
        values: RAW or CODEBOOK.
        positions: sparse layouts: strictly increasing flat positions (int64).
        index_bits: RELATIVE: the relative index width b.
        codebook: CODEBOOK: the k stored centroids (storage dtype of ``codebook_dtype``).
        codebook_dtype: CODEBOOK: their element type.
        indices: CODEBOOK: centroid index of each stored element.
        raw: RAW: stored element values (storage dtype of ``dtype``).
        recipe: how the tensor was compressed, or None.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    layout: Layout = Layout.DENSE
    values: Values = Values.RAW
    positions: np.ndarray | None = None
    index_bits: int | None = None
    codebook: np.ndarray | None = None
    codebook_dtype: DType | None = None
    indices: np.ndarray | None = None
    raw: np.ndarray | None = None
    recipe: Recipe | None = None

    @property
    def numel(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @property
    def nnz(self) -> int:
        """Elements stored (all of them in the dense layout)."""
        return self.numel if self.layout is Layout.DENSE else len(self.positions)

    def stored_values(self) -> np.ndarray:
        """Values of the stored elements, in the tensor's storage dtype."""
        if self.values is Values.RAW:
            return self.raw
        book = widen(self.codebook, self.codebook_dtype, self.dtype)
        return book.take(self.indices) if len(book) > 1 else np.repeat(book, self.nnz)

    def reconstruct(self) -> np.ndarray:
        """The exact array a conforming decoder returns for this record."""
        vals = self.stored_values()
        if self.layout is Layout.DENSE:
            flat = vals
        else:
            flat = np.zeros(self.numel, dtype=self.dtype.storage)
            flat[self.positions] = vals
        return present(flat, self.shape, self.dtype)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _section(kind: SectionKind, body: bytes | list, optional: bool = False) -> list:
    parts = body if isinstance(body, list) else [body]
    size = sum(len(p) for p in parts)
    return [bytes([kind, SECTION_OPTIONAL if optional else 0]) + uvar(size)] + parts


def encode_tensor(code: TensorCode, options: EncodeOptions = DEFAULT_OPTIONS) -> tuple[bool, list]:
    """Serialize a TensorCode into record body parts (spec 4).

    Returns:
        ``(aligned, parts)``: whether the record must start on a 64-byte
        boundary (a dense raw payload of 64+ bytes, spec 3.2), and the body as a
        list of bytes-like parts whose last part may be a large raw payload
        (kept as a view so it is never copied).  The record header and CRC are
        added by :mod:`dcfmt.container`.
    """
    name = check_name(code.name)
    shape = tuple(int(d) for d in code.shape)
    if len(shape) > MAX_RANK:
        raise EncodeError(f"rank {len(shape)} exceeds the format's maximum {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise EncodeError(f"negative dimension in shape {shape}")
    _check_code(code)
    head = bytearray()
    head += uvar(len(name)) + name
    head += bytes([code.dtype, len(shape)])
    for d in shape:
        head += uvar(d)
    head += bytes([code.layout, code.values])
    sections: list = []
    if code.recipe is not None:
        sections += _section(SectionKind.RECIPE, code.recipe.to_bytes(), optional=True)
    if code.layout is Layout.RELATIVE:
        sections += _section(SectionKind.RELATIVE, sparse.encode_relative(
            code.positions, code.index_bits, code.numel, chunk_log=options.chunk_log,
            max_length=options.max_code_length))
    elif code.layout is Layout.BITMAP:
        mask = np.zeros(code.numel, dtype=bool)
        mask[code.positions] = True
        sections += _section(SectionKind.BITMAP, sparse.encode_bitmap(mask))
    if code.values is Values.CODEBOOK:
        book = np.ascontiguousarray(code.codebook, dtype=code.codebook_dtype.storage)
        sections += _section(SectionKind.CODEBOOK, bytes([code.codebook_dtype]) + uvar(len(book))
                             + book.tobytes())
        if len(book) > 1:
            k = len(book)
            group = None
            if not options.group_indices:
                group = 1
            elif options.index_group:
                group = options.index_group if k ** options.index_group <= MAX_ALPHABET else 1
            g, stream = groups.encode_indices(
                np.asarray(code.indices), k, max_length=options.max_code_length,
                group_max_length=options.group_max_code_length, chunk_log=options.chunk_log,
                group=group)
            if g == 1:
                sections += _section(SectionKind.INDICES, stream)
            else:
                sections += _section(SectionKind.GROUPED_INDICES, [bytes([g]), stream])
        aligned = False
    else:
        payload = memoryview(np.ascontiguousarray(code.raw, dtype=code.dtype.storage)).cast("B")
        aligned = code.layout is Layout.DENSE and len(payload) >= ALIGN_MIN_PAYLOAD
        pad = b""
        if aligned:
            pad = bytes(raw_padding(len(head) + sum(len(p) for p in sections), len(payload)))
        sections += _section(SectionKind.RAW, [pad, payload] if pad else [payload])
    return aligned, [bytes(head)] + sections


def payload_offset(before: int, pad: int, payload: int, after: int = 0) -> int:
    """Record-relative offset of a RAW payload preceded by ``pad`` zero bytes.

    ``before`` is the body bytes before the RAW section header and ``after``
    the body bytes after the section.  The record header and the section
    header end in varint lengths that grow with the padding, which is why the
    padding cannot simply be ``-offset % 64`` (spec 4.4).
    """
    section_len = pad + payload
    body_len = before + 2 + uvar_size(section_len) + section_len + after
    return 2 + uvar_size(body_len) + before + 2 + uvar_size(section_len) + pad


def raw_padding(before: int, payload: int, after: int = 0) -> int:
    """The smallest padding (0..191) that puts a dense raw payload on a 64-byte boundary.

    The offset grows by one per padding byte, plus one whenever one of the two
    varint lengths (section, record body) gains a byte.  Each can gain at most
    one byte over 192 consecutive paddings, so at most two multiples of 64 are
    jumped over and a third one fits.
    """
    for pad in range(3 * ALIGNMENT):
        if payload_offset(before, pad, payload, after) % ALIGNMENT == 0:
            return pad
    raise AssertionError("unreachable: one of 192 consecutive paddings fits")


def _check_code(code: TensorCode) -> None:
    """Reject a TensorCode that would produce an invalid record (writer duties)."""
    numel = code.numel
    if code.layout is not Layout.DENSE:
        pos = np.asarray(code.positions)
        if pos.ndim != 1 or (len(pos) and (pos[0] < 0 or pos[-1] >= numel)) \
                or np.any(np.diff(pos) <= 0):
            raise EncodeError(f"{code.name}: positions must be strictly increasing and in range")
        if code.layout is Layout.RELATIVE and not 1 <= (code.index_bits or 0) <= 16:
            raise EncodeError(f"{code.name}: relative index width must be 1..16")
    nnz = code.nnz
    if code.values is Values.CODEBOOK:
        if code.codebook_dtype is None or not codebook_dtype_allowed(code.dtype, code.codebook_dtype):
            raise EncodeError(f"{code.name}: codebook dtype {code.codebook_dtype} cannot serve "
                              f"a {code.dtype.label} tensor")
        k = len(code.codebook)
        if not 1 <= k <= MAX_CODEBOOK:
            raise EncodeError(f"{code.name}: codebook size {k} is outside 1..{MAX_CODEBOOK}")
        if k > 1 and (code.indices is None or len(code.indices) != nnz):
            raise EncodeError(f"{code.name}: need one index per stored element ({nnz})")
        if k > 1 and nnz and (int(np.min(code.indices)) < 0 or int(np.max(code.indices)) >= k):
            raise EncodeError(f"{code.name}: codebook index out of range")
    else:
        if code.raw is None or np.size(code.raw) != nnz:
            raise EncodeError(f"{code.name}: need {nnz} raw values, got "
                              f"{None if code.raw is None else np.size(code.raw)}")


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class TensorRecord:
    """A parsed tensor record: header fields and located, header-checked sections.

    Nothing has been decoded yet; :func:`decode_tensor` does that.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    layout: Layout
    values: Values
    offset: int  # absolute offset of the record
    size: int    # bytes of the whole record
    recipe: Recipe | None = None
    relative: sparse.Relative | None = None
    bitmap: sparse.Bitmap | None = None
    codebook: np.ndarray | None = None
    codebook_dtype: DType | None = None
    indices: huffman.Stream | None = None
    group: int = 1  # codebook indices per symbol of ``indices`` (spec 7.4)
    raw: memoryview | None = None
    raw_offset: int = 0
    sections: dict = dataclasses.field(default_factory=dict)  # kind -> (offset, length)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:
        if self.layout is Layout.RELATIVE:
            return self.relative.nnz
        if self.layout is Layout.BITMAP:
            return self.bitmap.nnz
        return self.numel

    @property
    def decoded_bytes(self) -> int:
        return self.numel * self.dtype.itemsize


_REQUIRED = {
    Layout.DENSE: set(),
    Layout.RELATIVE: {SectionKind.RELATIVE},
    Layout.BITMAP: {SectionKind.BITMAP},
}


def parse_tensor(cur: Cursor, *, offset: int, size: int, aligned: bool,
                 limits: DecodeLimits = DEFAULT_LIMITS) -> TensorRecord:
    """Parse a tensor record body from ``cur`` (positioned at the body, ending at its end).

    Applies rules TEN-*, SEC-*, VAL-1..VAL-6, RCP-*, SPA-1/2/5/6, HUF-1..HUF-10
    and the limits; leaves only the checks that need decoding to
    :func:`decode_tensor`.
    """
    at = cur.pos
    name_len = cur.uvar("tensor name length")
    if not 1 <= name_len <= limits.max_name_bytes:
        if name_len == 0:
            raise cur.fail(FormatError, "tensor name is empty", "TEN-1", at)
        limits.check("tensor name length", name_len, "max_name_bytes", offset=cur.base + at)
    name = cur.text(name_len, "tensor name", "TEN-1")
    bad = _control_char(name)
    if bad is not None:
        raise cur.fail(FormatError, f"tensor name {name!r} contains control character "
                       f"U+{ord(bad):04X}", "TEN-2", at)
    cur.tensor = name
    at = cur.pos
    code = cur.u8("element type")
    try:
        dtype = from_code(code)
    except UnsupportedFeatureError as exc:
        raise exc.located(offset=cur.base + at, tensor=name)
    at = cur.pos
    rank = cur.u8("rank")
    if rank > MAX_RANK:
        raise cur.fail(FormatError, f"rank {rank} exceeds {MAX_RANK}", "TEN-3", at)
    shape = tuple(cur.uvar(f"dimension {i}") for i in range(rank))
    numel = 1
    for d in shape:
        numel *= d  # Python ints: no overflow however large the declared dims
    if numel * dtype.itemsize >= 1 << 64:
        raise cur.fail(FormatError, f"shape {list(shape)} of {dtype.label} declares "
                       f"{numel * dtype.itemsize} bytes, not below 2**64", "TEN-6", at)
    limits.check("decoded tensor size", numel * dtype.itemsize, "max_tensor_bytes",
                 offset=cur.base + at, tensor=name)
    limits.check_expansion(numel * dtype.itemsize, size, offset=offset, tensor=name)
    at = cur.pos
    layout_code = cur.u8("layout")
    values_code = cur.u8("values")
    try:
        layout = Layout(layout_code)
    except ValueError:
        raise UnsupportedFeatureError(f"unknown layout {layout_code}", offset=cur.base + at,
                                      tensor=name, rule="TEN-5") from None
    try:
        values = Values(values_code)
    except ValueError:
        raise UnsupportedFeatureError(f"unknown value encoding {values_code}", offset=cur.base + at + 1,
                                      tensor=name, rule="TEN-5") from None
    rec = TensorRecord(name, dtype, shape, layout, values, offset, size)
    seen = []
    last = 0
    while cur.remaining:
        at = cur.pos
        kind = cur.u8("section kind")
        flags = cur.u8("section flags")
        length = cur.uvar("section length")
        cur.need(length, f"section {kind}")
        body = Cursor(cur.buf, cur.base, overrun=FormatError, overrun_rule="SEC-5", tensor=name,
                      start=cur.pos, end=cur.pos + length)
        cur.pos += length
        if kind <= last:
            raise body.fail(FormatError, f"section kind {kind} after kind {last}: sections must "
                            "appear once each, in ascending kind order", "SEC-1", at)
        last = kind
        if flags & ~SECTION_KNOWN_FLAGS:
            raise body.fail(FormatError, f"section flags 0x{flags:02x} set reserved bits", "SEC-2",
                            at + 1)
        try:
            skind = SectionKind(kind)
        except ValueError:
            if flags & SECTION_OPTIONAL:
                continue  # unknown optional section: skip (spec 4.2)
            raise UnsupportedFeatureError(f"unknown critical section kind {kind}",
                                          offset=cur.base + at, tensor=name, rule="SEC-3") from None
        if bool(flags & SECTION_OPTIONAL) != (skind in OPTIONAL_SECTIONS):
            raise body.fail(FormatError, f"section {skind.name} has the wrong optional flag", "SEC-2",
                            at + 1)
        rec.sections[skind] = (cur.base + body.pos, length)
        seen.append(skind)
        _parse_section(rec, skind, body, numel, aligned, at, limits)
        body.done(f"section {skind.name}", "SEC-5")
    _check_sections(rec, set(seen), cur, aligned)
    return rec


def _parse_section(rec: TensorRecord, kind: SectionKind, body: Cursor, numel: int,
                   aligned: bool, header_at: int, limits: DecodeLimits) -> None:
    """Parse one known section; ``header_at`` is its header's position in the body."""
    if kind is SectionKind.RECIPE:
        rec.recipe = Recipe.parse(body)
    elif kind is SectionKind.RELATIVE:
        rec.relative = sparse.parse_relative(body, numel)
    elif kind is SectionKind.BITMAP:
        rec.bitmap = sparse.parse_bitmap(body, numel)
    elif kind is SectionKind.CODEBOOK:
        at = body.pos
        code = body.u8("codebook element type")
        try:
            cdtype = from_code(code)
        except UnsupportedFeatureError as exc:
            raise exc.located(offset=body.base + at, tensor=rec.name)
        if not codebook_dtype_allowed(rec.dtype, cdtype):
            raise body.fail(FormatError, f"a {cdtype.label} codebook cannot serve a "
                            f"{rec.dtype.label} tensor", "VAL-2", at)
        at = body.pos
        k = body.uvar("codebook size")
        if not 1 <= k <= MAX_CODEBOOK:
            raise body.fail(FormatError, f"codebook size {k} is outside 1..{MAX_CODEBOOK}", "VAL-3", at)
        at = body.pos
        raw = body.take(k * cdtype.itemsize, "codebook values")
        book = np.frombuffer(raw, dtype=cdtype.storage)
        if cdtype is DType.BOOL and np.any(np.frombuffer(raw, np.uint8) > 1):
            raise body.fail(FormatError, "bool codebook value is not 0 or 1", "VAL-1", at)
        rec.codebook = book
        rec.codebook_dtype = cdtype
    elif kind is SectionKind.INDICES:
        k = len(rec.codebook) if rec.codebook is not None else 0
        if k < 2:
            raise body.fail(FormatError, "INDICES section without a codebook of 2+ entries", "SEC-4")
        at = body.pos
        nnz = _stored_count(rec, body)
        rec.indices = huffman.parse_stream(body, k, "codebook index stream")
        if rec.indices.n_symbols != nnz:
            raise body.fail(FormatError, f"{rec.indices.n_symbols} codebook indices for {rec.nnz} "
                            "stored elements", "VAL-4", at)
    elif kind is SectionKind.GROUPED_INDICES:
        k = len(rec.codebook) if rec.codebook is not None else 0
        if k < 2:
            raise body.fail(FormatError, "GROUPED_INDICES section without a codebook of 2+ entries",
                            "SEC-4")
        at = body.pos
        nnz = _stored_count(rec, body)
        g = body.u8("index group size")
        if g < 2 or k ** g > MAX_ALPHABET:
            raise body.fail(FormatError, f"groups of {g} indices of a {k}-entry codebook: need "
                            f"2 <= g and k**g <= {MAX_ALPHABET}", "VAL-6", at)
        at = body.pos
        rec.group = g
        rec.indices = huffman.parse_stream(body, k ** g, "grouped codebook index stream")
        if rec.indices.n_symbols != -(-nnz // g):
            raise body.fail(FormatError, f"{rec.indices.n_symbols} groups of {g} codebook indices "
                            f"for {nnz} stored elements", "VAL-4", at)
    elif kind is SectionKind.RAW:
        count = _stored_count(rec, body)
        want = count * rec.dtype.itemsize
        pad = body.remaining - want
        expected_pad = 0
        if aligned and pad >= 0:
            # the body cursor starts at the record body, so header_at is the
            # number of body bytes before this section
            after = len(body.buf) - body.end
            expected_pad = raw_padding(header_at, want, after)
        if pad != expected_pad:
            raise body.fail(FormatError, f"RAW section holds {body.remaining} bytes, expected "
                            f"{expected_pad} padding + {count} x {rec.dtype.itemsize}", "VAL-5")
        if pad and any(body.take(pad, "raw padding")):
            raise body.fail(FormatError, "raw padding bytes are not zero", "VAL-5", body.pos - pad)
        rec.raw_offset = body.base + body.pos
        rec.raw = body.take(want, "raw values")
        if rec.dtype is DType.BOOL and want and int(np.frombuffer(rec.raw, np.uint8).max()) > 1:
            raise body.fail(FormatError, "bool value is not 0 or 1", "VAL-1", body.pos - want)


def _stored_count(rec: TensorRecord, body: Cursor) -> int:
    """Stored elements, once the positions section (which precedes values) was read."""
    if (rec.layout is Layout.RELATIVE and rec.relative is None) or \
            (rec.layout is Layout.BITMAP and rec.bitmap is None):
        raise body.fail(FormatError, f"{rec.layout.name} layout without its positions section "
                        "before the values", "SEC-4")
    return rec.nnz


def _check_sections(rec: TensorRecord, seen: set, cur: Cursor, aligned: bool) -> None:
    need = set(_REQUIRED[rec.layout])
    if rec.values is Values.RAW:
        need.add(SectionKind.RAW)
    else:
        need.add(SectionKind.CODEBOOK)
        if rec.codebook is not None and len(rec.codebook) > 1:
            # format 1.1: grouped indices stand in for the plain index stream
            need.add(SectionKind.GROUPED_INDICES if SectionKind.GROUPED_INDICES in seen
                     else SectionKind.INDICES)
    have = seen - OPTIONAL_SECTIONS
    if have != need:
        missing = sorted(k.name for k in need - have)
        extra = sorted(k.name for k in have - need)
        raise FormatError(
            f"{rec.layout.name.lower()}/{rec.values.name.lower()} record needs sections "
            f"{sorted(k.name for k in need)}; missing {missing}, unexpected {extra}",
            offset=rec.offset, tensor=rec.name, rule="SEC-4")
    should_align = (rec.layout is Layout.DENSE and rec.values is Values.RAW
                    and rec.numel * rec.dtype.itemsize >= ALIGN_MIN_PAYLOAD)
    if aligned != should_align:
        raise FormatError(f"record ALIGNED flag is {int(aligned)}, must be {int(should_align)}",
                          offset=rec.offset, tensor=rec.name, rule="RCD-4")


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode_tensor(rec: TensorRecord, *, copy: bool = True, method: str = "auto",
                  pre: dict | None = None) -> np.ndarray:
    """Decode a parsed record into an ndarray of its dtype and shape (spec 4.5).

    Args:
        rec: the record, from :func:`parse_tensor`.
        copy: for dense raw records, False returns a zero-copy view of the
            record's buffer (read-only if the buffer is); True (default)
            returns an owned array.
        method: Huffman decoder choice (see :func:`dcfmt.huffman.decode`).
        pre: streams already decoded (:func:`dcfmt.decoder.predecode`).

    Raises:
        FormatError: a check that needs decoding failed (HUF-11, SPA-2..5).
    """
    flat = decode_range(rec, 0, rec.numel, method=method, pre=pre)
    if copy and rec.layout is Layout.DENSE and rec.values is Values.RAW:
        flat = flat.copy()
    return present(flat, rec.shape, rec.dtype)
