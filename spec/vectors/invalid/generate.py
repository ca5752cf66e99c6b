"""Generate the invalid-file corpus of spec/vectors/invalid/ (Wycheproof style).

Every file here breaks exactly one rule of spec/dcz.md (section 12, "Rule
index") and is recorded in ``manifest.json`` with the error class and rule id
a conforming decoder reports, the ``dcz`` exit code (spec 10), and whether a
lazy reader that opens the file and reads every tensor must refuse it too.

Files are ADDED, NEVER REGENERATED: this script writes only the cases whose
files do not exist yet, appends their entries to the manifest, and leaves the
existing files and entries alone (like ../generate.py for the valid vectors).
A case whose file exists is never rebuilt, so changing a builder below changes
nothing already in the corpus; to change a case, add a new one.

Files are built field by field with ``struct.pack`` and ``uvar`` (the helpers
below are copied from tests/builders.py, which this script must not import),
with every CRC-32 recomputed, so each file reaches the check it is aimed at.
Valid sub-parts (the Huffman stream of a codebook index, the index record
listing the records) come from small helpers of ``dcfmt`` that have exact-bytes
tests of their own.  The expected error of each case is written here from the
specification; before a new file is written the reference decoder must agree
with it, else the script stops and writes nothing for that case.

Run:  python spec/vectors/invalid/generate.py           (add missing files)
      python spec/vectors/invalid/generate.py --check   (build every case in memory
                                                          and compare, write nothing)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

import dcfmt  # noqa: E402
from dcfmt import huffman  # noqa: E402
from dcfmt.binary import uvar  # noqa: E402
from dcfmt.constants import MAGIC, RECORD_ALIGNED, Layout, RecordKind, SectionKind, Values  # noqa: E402
from dcfmt.container import IndexEntry, encode_index  # noqa: E402
from dcfmt.dtypes import DType  # noqa: E402

MANIFEST = os.path.join(HERE, "manifest.json")

#: spec 10: the exit code of ``dcz validate`` (and ``dcz info``) for each error class
EXIT_CODES = {"FormatError": 1, "TruncatedError": 1, "ChecksumError": 1, "VersionError": 5,
              "UnsupportedFeatureError": 5, "LimitError": 4}

S = SectionKind
F32 = DType.FLOAT32

# ---------------------------------------------------------------------------
# Byte builders (copied from tests/builders.py; keep them independent of the encoder)
# ---------------------------------------------------------------------------


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def header(major: int = 1, minor: int = 0, flags: int = 0, *, magic: bytes = MAGIC,
           good_crc: bool = True) -> bytes:
    """The 16-byte file header: magic, major, minor, flags (u16), CRC-32 of the first 12."""
    head = magic + struct.pack("<BBH", major, minor, flags)
    value = crc(head) if good_crc else crc(head) ^ 1
    return head + struct.pack("<I", value)


def trailer(index_offset: int, *, end: bytes = b"DCZE", good_crc: bool = True) -> bytes:
    head = struct.pack("<Q", index_offset)
    value = crc(head) if good_crc else crc(head) ^ 1
    return head + struct.pack("<I", value) + end


def record(kind: int, flags: int, body: bytes, *, good_crc: bool = True) -> bytes:
    """Record framing: kind u8, flags u8, body length uvar, body, CRC-32 of all before."""
    prefix = bytes([kind, flags]) + uvar(len(body))
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


def packed(values, width: int | None = None, *, pad_bit: bool = False) -> bytes:
    """A bit-packed array (spec 2.4): width u8, then each value in ``width`` bits, LSB first."""
    values = [int(v) for v in values]
    if width is None:
        width = max(values).bit_length() if values else 0
    bits = []
    for v in values:
        bits += [(v >> i) & 1 for i in range(width)]
    if pad_bit:
        assert len(bits) % 8, "no padding bit to set"
        bits += [0] * (-len(bits) % 8)
        bits[-1] = 1
    body = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes() if bits else b""
    return bytes([width]) + body


def stream_bytes(n: int, lengths, chunk_log: int, bit_len: int, payload: bytes, *,
                 sizes=None, table: bytes | None = None, max_len: int | None = None,
                 n_lengths: int | None = None, length_pad_bit: bool = False) -> bytes:
    """A Huffman stream (spec 5.2) from explicit fields.

    ``lengths`` are packed LSB first in ``bit_length(max_len)`` bits each;
    ``sizes`` are the bit sizes of every chunk but the last (a packed array),
    or ``table`` gives that array's bytes verbatim.
    """
    lengths = list(lengths)
    L = max(lengths) if max_len is None else max_len
    width = L.bit_length()  # the parser derives the field width from the declared max
    bits = []
    for value in lengths:
        bits += [(value >> i) & 1 for i in range(width)]
    if length_pad_bit:
        assert len(bits) % 8, "no padding bit to set"
        bits += [0] * (-len(bits) % 8)
        bits[-1] = 1
    lens = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes() if bits else b""
    if table is None:
        table = packed(sizes) if sizes is not None else b""
    count = len(lengths) if n_lengths is None else n_lengths
    return (uvar(n) + bytes([L]) + uvar(count) + lens + bytes([chunk_log])
            + uvar(bit_len) + table + payload)


@dataclasses.dataclass
class Rec:
    """A record to place in a file; ``name/dtype/shape`` feed its index entry."""

    kind: int
    body: bytes
    flags: int = 0
    name: str | None = None
    dtype: int | None = None
    shape: tuple | None = None
    good_crc: bool = True
    pad: bytes | None = None  # explicit bytes before the record (instead of alignment padding)


def tensor_rec(name: str, dtype: int, shape, layout: int = 0, values: int = 0,
               sections: bytes = b"", *, flags: int = 0, head: bytes | None = None) -> Rec:
    body = (tensor_head(name, dtype, shape, layout, values) if head is None else head) + sections
    return Rec(RecordKind.TENSOR, body, flags, name, dtype, tuple(shape))


def _dtype(code: int):
    try:
        return DType(code)
    except ValueError:
        return code


def build(recs, *, hdr: bytes | None = None, index_entries=None, index_body: bytes | None = None,
          index_flags: int = 0, trailer_offset: int | None = None, tail: bytes = b"",
          trailer_bytes: bytes | None = None) -> bytes:
    """Assemble header, records (padding ALIGNED ones to 64), index and trailer.

    ``index_entries`` may be a function editing the list of IndexEntry built
    from the records; ``index_body`` replaces the index body outright (bytes,
    or a function of the entries).
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
    """A dense raw tensor record; ALIGNED (with padding) when its payload has 64+ bytes."""
    payload = np.ascontiguousarray(values).tobytes()
    shape = values.shape
    head = tensor_head(name, dtype, shape)
    if aligned is None:
        aligned = len(payload) >= 64
    if pad is None:
        pad = raw_padding(len(head), len(payload)) if aligned else 0
    body = head + section(S.RAW, bytes([pad_byte]) * pad + payload)
    return Rec(RecordKind.TENSOR, body, RECORD_ALIGNED if aligned else 0, name, dtype, tuple(shape))


def t(sections: bytes, *, name="t", dtype=F32, shape=(4,), layout=0, values=0, flags=0) -> bytes:
    """A file holding one hand-made tensor record."""
    return build([tensor_rec(name, dtype, shape, layout, values, sections, flags=flags)])


RAW16 = section(S.RAW, np.arange(4, dtype="<f4").tobytes())  # RAW of a (4,) float32 tensor
GOOD = tensor_rec("t", F32, (4,), sections=RAW16)


def book(dtype, values: bytes, k: int | None = None) -> bytes:
    n = len(values) // DType(dtype).itemsize if k is None else k
    return section(S.CODEBOOK, bytes([dtype]) + uvar(n) + values)


def indices(symbols, k) -> bytes:
    return section(S.INDICES, huffman.encode_stream(np.asarray(symbols), k, chunk_log=4))


def rel(bits, nnz, symbols, tables=b"", chunk_log=4) -> bytes:
    stream = huffman.encode_stream(np.asarray(symbols, np.int64), 1 << bits, chunk_log=chunk_log) \
        if len(symbols) else uvar(0)
    return section(S.RELATIVE, bytes([bits]) + uvar(nnz) + stream + tables)


CB = dict(values=Values.CODEBOOK)
REL = dict(layout=Layout.RELATIVE)
BMP = dict(layout=Layout.BITMAP)
BOOK2 = book(F32, np.array([-1.0, 2.5], "<f4").tobytes())  # a 2-entry codebook
BOOK3 = book(F32, np.array([-1.0, 0.5, 2.5], "<f4").tobytes())


def with_index(recs, edit) -> bytes:
    """A file whose index entries are edited by ``edit(entries) -> entries``."""
    return build(recs, index_entries=edit)


def small_golden() -> bytes:
    """A small valid file with metadata and three tensors (for truncations and appendages)."""
    return build([Rec(RecordKind.METADATA, metadata_body([("arch", "tiny")])), GOOD,
                  tensor_rec("u", DType.UINT8, (3,), sections=section(S.RAW, bytes([1, 2, 3])))])


# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    rule: str
    error: str
    description: str
    build: object
    lazy: bool = True  # a lazy open + metadata + read of every tensor must refuse it too


CASES: list[Case] = []


def case(rule: str, error: str = "FormatError", *, lazy: bool = True):
    def register(fn):
        doc = " ".join((fn.__doc__ or "").split())
        CASES.append(Case(fn.__name__, rule, error, doc, fn, lazy))
        return fn
    return register


# -- primitives (PRI) ---------------------------------------------------------------


@case("PRI-1")
def pri1_nonminimal_uvar():
    """A record body length written as the non-minimal uvar 84 00."""
    return header() + bytes([RecordKind.TENSOR, 0]) + b"\x84\x00" + bytes(64)


@case("PRI-1")
def pri1_uvar_11_bytes():
    """A record body length uvar of 10 continuation bytes (longer than 10 bytes)."""
    return header() + bytes([RecordKind.TENSOR, 0]) + b"\xff" * 10 + bytes(64)


@case("PRI-1")
def pri1_uvar_above_2_64():
    """A 10-byte record body length uvar encoding a value of 2**64 or more."""
    return header() + bytes([RecordKind.TENSOR, 0]) + b"\xff" * 9 + b"\x02" + bytes(64)


@case("PRI-1")
def pri1_nonminimal_dimension():
    """A tensor dimension inside a record written as a non-minimal uvar."""
    head = uvar(1) + b"t" + bytes([F32, 1]) + b"\x84\x00" + bytes([0, 0])
    return build([Rec(RecordKind.TENSOR, head + RAW16, name="t", dtype=F32, shape=(4,))])


# -- file header (HDR) ----------------------------------------------------------------


@case("HDR-1", "TruncatedError")
def hdr1_empty():
    """An empty file (0 bytes): a prefix of the magic, so truncated."""
    return b""


@case("HDR-1", "TruncatedError")
def hdr1_magic_prefix():
    """The first 5 bytes of the magic and nothing else."""
    return MAGIC[:5]


@case("HDR-1")
def hdr1_bad_magic():
    """A 48-byte file of text that does not start with the magic."""
    return b"This is not a .dcz file, just some plain text.\n"


@case("HDR-1")
def hdr1_looks_like_safetensors():
    """A small safetensors file: the message should say what it looks like."""
    head = b'{"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + bytes(8)


@case("HDR-1")
def hdr1_looks_like_zip():
    """The start of a zip archive (a torch checkpoint or an .npz)."""
    return b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40)


@case("HDR-1")
def hdr1_looks_like_gguf():
    """The start of a GGUF version 3 file."""
    return b"GGUF\x03\x00\x00\x00" + bytes(40)


@case("HDR-1")
def hdr1_looks_like_pickle():
    """A legacy (non-zip) torch checkpoint: a pickle protocol 2 stream; never unpickled."""
    return b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02}q\x00" + bytes(24)


@case("HDR-2", "VersionError")
def hdr2_major_0():
    """Format version 0.0."""
    return header(major=0) + build([GOOD])[16:]


@case("HDR-2", "VersionError")
def hdr2_major_2():
    """Format version 2.0 (a future major version)."""
    return header(major=2) + build([GOOD])[16:]


@case("HDR-3", "UnsupportedFeatureError")
def hdr3_critical_flag_0():
    """Header flag bit 0 (a critical feature unknown in 1.0) is set."""
    return header(flags=0x0001) + build([GOOD])[16:]


@case("HDR-3", "UnsupportedFeatureError")
def hdr3_critical_flag_7():
    """Header flag bit 7 (the last critical bit) is set."""
    return header(flags=0x0080) + build([GOOD])[16:]


@case("HDR-4", "ChecksumError")
def hdr4_header_crc():
    """The header CRC-32 is off by one bit."""
    return header(good_crc=False) + build([GOOD])[16:]


# -- records (RCD) ---------------------------------------------------------------------


@case("RCD-1")
def rcd1_kind_0():
    """A record that starts with kind 0 at an offset where padding cannot be (it ends at 64)."""
    meta = record(RecordKind.METADATA, 0, metadata_body([("k", "v" * 37)]))
    assert len(meta) == 48
    return header() + meta + bytes(20)


@case("RCD-1", "UnsupportedFeatureError")
def rcd1_unknown_critical_kind():
    """A record of unknown kind 9 without the OPTIONAL flag."""
    return build([Rec(9, b"future"), GOOD])


@case("RCD-2")
def rcd2_reserved_flag():
    """A tensor record sets reserved record flag bit 2."""
    return build([dataclasses.replace(GOOD, flags=0x04)])


@case("RCD-2")
def rcd2_optional_tensor():
    """A TENSOR record carries the OPTIONAL flag."""
    return build([dataclasses.replace(GOOD, flags=0x01)])


@case("RCD-2")
def rcd2_optional_metadata():
    """A METADATA record carries the OPTIONAL flag."""
    return build([Rec(RecordKind.METADATA, b"\x00", flags=0x01), GOOD])


@case("RCD-3", "ChecksumError")
def rcd3_tensor_crc():
    """A tensor record's CRC-32 has one bit flipped."""
    return build([dataclasses.replace(GOOD, good_crc=False)])


@case("RCD-3", "ChecksumError")
def rcd3_metadata_crc():
    """The metadata record's CRC-32 has one bit flipped."""
    return build([Rec(RecordKind.METADATA, metadata_body([("k", "v")]), good_crc=False), GOOD])


@case("RCD-3", "ChecksumError", lazy=False)
def rcd3_optional_record_crc():
    """An unknown OPTIONAL record (kind 9) with a bad CRC-32: a full walk must reject it; a lazy
    reader never reads the record's body, so it need not."""
    return build([Rec(9, b"future", flags=1, good_crc=False), GOOD])


BIG = np.arange(64, dtype="<f4")  # a 256-byte payload: its record is ALIGNED


@case("RCD-4")
def rcd4_nonzero_padding():
    """A non-zero byte in the alignment padding before an ALIGNED record."""
    return build([dataclasses.replace(raw_tensor("big", BIG, F32), pad=bytes(1) + b"\x01" + bytes(46))])


@case("RCD-4")
def rcd4_padding_before_unaligned():
    """Zero padding up to offset 64 before a record that is not ALIGNED."""
    return build([dataclasses.replace(GOOD, pad=bytes(48))])


@case("RCD-4")
def rcd4_aligned_not_at_64():
    """An ALIGNED record placed right after the header, at offset 16."""
    return build([dataclasses.replace(raw_tensor("big", BIG, F32), pad=b"")])


@case("RCD-4")
def rcd4_aligned_flag_on_small_payload():
    """A 16-byte dense raw payload in a record flagged ALIGNED (must be 0)."""
    return build([raw_tensor("s", np.arange(4, dtype="<f4"), F32, aligned=True)])


@case("RCD-4")
def rcd4_aligned_flag_missing():
    """A 256-byte dense raw payload in a record not flagged ALIGNED (must be 1)."""
    return build([raw_tensor("b", BIG, F32, aligned=False)])


@case("RCD-4")
def rcd4_aligned_index():
    """The INDEX record is flagged ALIGNED."""
    return build([GOOD], index_flags=RECORD_ALIGNED)


@case("RCD-4")
def rcd4_aligned_metadata():
    """The METADATA record is flagged ALIGNED (and padded to 64)."""
    return build([Rec(RecordKind.METADATA, b"\x00", flags=RECORD_ALIGNED), GOOD])


@case("RCD-5")
def rcd5_section_past_body():
    """A RAW section declares 100 bytes; the record body ends after 16."""
    return t(section(S.RAW, bytes(16), length=100))


@case("RCD-5")
def rcd5_section_header_cut():
    """The record body ends one byte into a second section header."""
    return t(RAW16 + b"\x07")


@case("RCD-5")
def rcd5_tensor_header_cut():
    """The record body ends inside the tensor header (after the rank)."""
    return build([Rec(RecordKind.TENSOR, uvar(1) + b"t" + bytes([F32, 2]) + uvar(4), name="t",
                      dtype=F32, shape=(4,))])


# -- tensor header (TEN) -----------------------------------------------------------------


def _named(raw_name: bytes) -> bytes:
    body = tensor_head(raw_name, F32, (4,)) + RAW16
    return build([Rec(RecordKind.TENSOR, body, name="x", dtype=F32, shape=(4,))])


@case("TEN-1")
def ten1_empty_name():
    """A tensor record with an empty name."""
    return _named(b"")


@case("TEN-1")
def ten1_invalid_utf8_name():
    """A tensor name that is not UTF-8 (bytes ff fe)."""
    return _named(b"\xff\xfe")


@case("TEN-1")
def ten1_surrogate_name():
    """A tensor name holding an encoded UTF-16 surrogate (not strict UTF-8)."""
    return _named(b"a\xed\xa0\x80")


@case("TEN-1")
def ten1_empty_name_in_index():
    """The record's name is fine; its index entry's name is empty."""
    return with_index([GOOD], lambda es: [dataclasses.replace(es[0], name="")])


@case("TEN-2")
def ten2_nul_in_name():
    """A tensor name containing U+0000."""
    return _named(b"a\x00b")


@case("TEN-2")
def ten2_newline_in_name():
    """A tensor name containing a line feed (U+000A)."""
    return _named(b"line\nbreak")


@case("TEN-2")
def ten2_delete_in_name():
    """A tensor name ending in U+007F."""
    return _named(b"del\x7f")


@case("TEN-3")
def ten3_rank_33():
    """A tensor of rank 33 (the maximum is 32)."""
    return t(RAW16, shape=(1,) * 32 + (4,))


@case("TEN-4", "UnsupportedFeatureError")
def ten4_dtype_0():
    """Element type code 0."""
    return t(RAW16, dtype=0)


@case("TEN-4", "UnsupportedFeatureError")
def ten4_dtype_99():
    """Element type code 99."""
    return t(RAW16, dtype=99)


@case("TEN-4", "UnsupportedFeatureError")
def ten4_codebook_dtype_99():
    """A codebook with element type code 99."""
    return t(section(S.CODEBOOK, bytes([99]) + uvar(1) + bytes(4)), **CB)


@case("TEN-5", "UnsupportedFeatureError")
def ten5_layout_3():
    """Layout code 3."""
    return t(RAW16, layout=3)


@case("TEN-5", "UnsupportedFeatureError")
def ten5_values_2():
    """Value encoding code 2."""
    return t(RAW16, values=2)


@case("TEN-6")
def ten6_bytes_2_64():
    """A float32 tensor of 2**62 elements: exactly 2**64 bytes."""
    return t(RAW16, shape=(2**62,))


@case("TEN-6")
def ten6_dims_product_overflows():
    """Dims 2**63 x 2**63 x (2**64 - 1): the product overflows any fixed-width integer."""
    return t(RAW16, shape=(2**63, 2**63, 2**64 - 1))


# -- sections (SEC) -----------------------------------------------------------------------

RECIPE = section(S.RECIPE, b"", flags=1)


@case("SEC-1")
def sec1_descending():
    """RAW (6) followed by RECIPE (1): section kinds not ascending."""
    return t(RAW16 + RECIPE)


@case("SEC-1")
def sec1_repeated():
    """Two RAW sections."""
    return t(RAW16 + RAW16)


@case("SEC-1")
def sec1_kind_0():
    """A section of kind 0 (OPTIONAL) before RAW."""
    return t(section(0, b"", flags=1) + RAW16)


@case("SEC-2")
def sec2_reserved_flag():
    """A RAW section sets reserved section flag bit 1."""
    return t(section(S.RAW, bytes(16), flags=2))


@case("SEC-2")
def sec2_recipe_not_optional():
    """A RECIPE section without the OPTIONAL flag."""
    return t(section(S.RECIPE, b"") + RAW16)


@case("SEC-2")
def sec2_raw_optional():
    """A RAW section with the OPTIONAL flag."""
    return t(section(S.RAW, bytes(16), flags=1))


@case("SEC-3", "UnsupportedFeatureError")
def sec3_unknown_critical_section():
    """A section of unknown kind 7 without the OPTIONAL flag."""
    return t(RAW16 + section(7, b"xyz"))


@case("SEC-4")
def sec4_missing_raw():
    """A dense raw tensor with no sections at all."""
    return t(b"")


@case("SEC-4")
def sec4_unexpected_bitmap():
    """A dense raw tensor with a BITMAP section."""
    return t(section(S.BITMAP, uvar(4) + b"\x0f") + RAW16)


@case("SEC-4")
def sec4_indices_with_one_entry_codebook():
    """A codebook of k = 1 followed by an INDICES section (INDICES only when k >= 2)."""
    return t(book(F32, bytes(4)) + indices([0, 0, 0, 0], 1), **CB)


@case("SEC-4")
def sec4_missing_indices():
    """A codebook of k = 2 without an INDICES section."""
    return t(BOOK2, **CB)


@case("SEC-4")
def sec4_relative_without_positions():
    """A RELATIVE-layout tensor with no RELATIVE section."""
    return t(RAW16, **REL)


@case("SEC-5")
def sec5_codebook_leftover():
    """A CODEBOOK section with one byte more than its k entries."""
    return t(section(S.CODEBOOK, bytes([F32]) + uvar(2) + bytes(9)) + indices([0, 1, 1, 0], 2), **CB)


@case("SEC-5")
def sec5_codebook_short():
    """A CODEBOOK section declaring k = 2 with room for one entry."""
    return t(book(F32, bytes(4), k=2) + indices([0, 1, 1, 0], 2), **CB)


@case("SEC-5")
def sec5_stream_payload_missing():
    """An INDICES stream whose payload byte is missing from its section."""
    return t(BOOK2 + section(S.INDICES, stream_bytes(4, [1, 1], 4, 4, b"")), **CB)


@case("SEC-5")
def sec5_recipe_field_cut():
    """A RECIPE section holding a lone tag byte."""
    return t(section(S.RECIPE, bytes([2]), flags=1) + RAW16)


@case("SEC-5")
def sec5_bitmap_cut():
    """A BITMAP section holding nnz but no bits."""
    return t(section(S.BITMAP, uvar(1)) + section(S.RAW, bytes(4)), **BMP)


@case("SEC-5")
def sec5_relative_tables_missing():
    """A multi-chunk RELATIVE section without its spans and fillers tables."""
    return t(rel(2, 20, [0] * 20) + section(S.RAW, bytes(80)), shape=(30,), **REL)


# -- Huffman streams (HUF) ------------------------------------------------------------------


def _idx(stream: bytes, *, k: int = 2, n: int = 4) -> bytes:
    """A (n,) float32 tensor with a k-entry codebook and the INDICES stream given."""
    values = np.arange(k, dtype="<f4").tobytes()
    return t(book(F32, values) + section(S.INDICES, stream), shape=(n,), **CB)


@case("HUF-1")
def huf1_max_len_0():
    """max_len 0."""
    return _idx(stream_bytes(4, [1, 1], 4, 4, b"\x00", max_len=0))


@case("HUF-1")
def huf1_max_len_17():
    """max_len 17 (a code length over the cap of 16)."""
    return _idx(stream_bytes(4, [1, 1], 4, 4, b"\x00", max_len=17))


@case("HUF-1")
def huf1_max_len_not_largest():
    """max_len 2 while every stored length is 1."""
    return _idx(stream_bytes(4, [1, 1], 4, 4, b"\x00", max_len=2))


@case("HUF-1")
def huf1_length_above_max_len():
    """max_len 2 (2-bit fields) with a stored length of 3."""
    return _idx(stream_bytes(4, [1, 2, 3, 3], 4, 8, b"\x00", max_len=2), k=4)


@case("HUF-2")
def huf2_n_lengths_above_alphabet():
    """Three code lengths stored for an alphabet of 2."""
    return _idx(stream_bytes(4, [1, 1, 1], 4, 4, b"\x00"))


@case("HUF-2")
def huf2_n_lengths_0():
    """n_lengths 0."""
    return _idx(stream_bytes(4, [], 4, 4, b"\x00", max_len=1))


@case("HUF-2")
def huf2_last_length_0():
    """The last stored code length is 0 (trailing zeros must be omitted)."""
    return _idx(stream_bytes(4, [1, 0], 4, 4, b"\x00", max_len=1), k=2)


@case("HUF-3")
def huf3_length_padding_bit():
    """A 1 bit in the padding after the stored code lengths."""
    return _idx(stream_bytes(4, [1, 1], 4, 4, b"\x00", length_pad_bit=True))


@case("HUF-5")
def huf5_over_subscribed():
    """Lengths 1, 1, 1: Kraft sum 3/2."""
    return _idx(stream_bytes(4, [1, 1, 1], 4, 4, b"\x00"), k=3)


@case("HUF-5")
def huf5_incomplete():
    """Lengths 1, 2: Kraft sum 3/4."""
    return _idx(stream_bytes(4, [1, 2], 4, 4, b"\x00"), k=3)


@case("HUF-6")
def huf6_one_symbol_length_2():
    """One used symbol with a 2-bit code (it must be 1 bit)."""
    return _idx(stream_bytes(4, [0, 2], 4, 8, b"\x00"))


@case("HUF-7")
def huf7_chunk_log_3():
    """chunk_log 3 (minimum 4)."""
    return _idx(stream_bytes(4, [1, 1], 3, 4, b"\x00"))


@case("HUF-7")
def huf7_chunk_log_25():
    """chunk_log 25 (maximum 24)."""
    return _idx(stream_bytes(4, [1, 1], 25, 4, b"\x00"))


@case("HUF-8")
def huf8_bit_len_below_n():
    """4 symbols in 3 bits."""
    return _idx(stream_bytes(4, [1, 1], 4, 3, b"\x00"))


@case("HUF-8")
def huf8_bit_len_above_n_max_len():
    """4 one-bit symbols in 5 bits."""
    return _idx(stream_bytes(4, [1, 1], 4, 5, b"\x00"))


@case("HUF-8")
def huf8_impossible_symbol_count():
    """2**62 symbols in 2**62 - 1 bits for a 2**20-element tensor, no payload (rejected in O(1))."""
    return t(BOOK2 + section(S.INDICES, stream_bytes(2**62, [1, 1], 4, 2**62 - 1, b"")),
             shape=(2**20,), **CB)


# 20 symbols of one bit in chunks of 16: chunk 0 has 16 bits, chunk 1 has 4
_P20 = bytes(3)


@case("HUF-9")
def huf9_chunk_size_below_count():
    """Chunk 0 of 16 one-bit symbols declared as 15 bits."""
    return _idx(stream_bytes(20, [1, 1], 4, 20, _P20, sizes=[15]), n=20)


@case("HUF-9")
def huf9_chunk_size_above_count_max_len():
    """Chunk 0 of 16 one-bit symbols declared as 17 bits."""
    return _idx(stream_bytes(20, [1, 1], 4, 20, _P20, sizes=[17]), n=20)


@case("HUF-9")
def huf9_chunk_sizes_not_minimal():
    """The chunk-size array uses 6-bit values for 16 (bit length 5)."""
    return _idx(stream_bytes(20, [1, 1], 4, 20, _P20, table=packed([16], 6)), n=20)


@case("HUF-9")
def huf9_chunk_sizes_too_wide():
    """The chunk-size array has width 33 (maximum 32)."""
    return _idx(stream_bytes(20, [1, 1], 4, 20, _P20, table=packed([2**32], 33)), n=20)


@case("HUF-9")
def huf9_chunk_sizes_padding_bit():
    """A 1 bit in the padding of the chunk-size array."""
    return _idx(stream_bytes(20, [1, 1], 4, 20, _P20, table=packed([16], pad_bit=True)), n=20)


@case("HUF-10")
def huf10_payload_padding_bit():
    """A 1 bit after the last code of the payload."""
    return _idx(stream_bytes(4, [1, 1], 4, 4, b"\xf0"))


@case("HUF-11")
def huf11_one_symbol_bit_1():
    """A one-symbol code (code 0) with a 1 bit where a code starts."""
    return _idx(stream_bytes(4, [0, 1], 4, 4, b"\x04"))


@case("HUF-11")
def huf11_chunk_overrun():
    """Chunk 0's last code runs past the chunk's end into chunk 1."""
    # lengths 1, 2, 2 (codes 0, 10, 11); chunk 0: 15 x '0' then '10' = 17 bits, declared 16
    # chunk 1: 4 x '0'.  Sizes are in range, but chunk 0 does not end at bit 16.
    bits = [0] * 15 + [1, 0] + [0] * 4
    payload = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes()
    return _idx(stream_bytes(20, [1, 2, 2], 4, 21, payload, sizes=[16]), k=3, n=20)


@case("HUF-11")
def huf11_leftover_bits():
    """Chunk 0 decodes its 16 symbols in 16 bits but is declared 17 bits long."""
    bits = [0] * 16 + [0] + [0] * 4  # codes of 20 symbol-0s with one spare bit in chunk 0
    payload = np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes()
    return _idx(stream_bytes(20, [1, 2, 2], 4, 21, payload, sizes=[17]), k=3, n=20)


@case("HUF-11")
def huf11_relative_stream():
    """A RELATIVE entry stream with a one-symbol code and a 1 bit."""
    stream = stream_bytes(2, [0, 1], 4, 2, b"\x02")
    secs = section(S.RELATIVE, bytes([2]) + uvar(2) + stream) + section(S.RAW, bytes(8))
    return t(secs, **REL)


# -- sparse positions (SPA) ------------------------------------------------------------------


@case("SPA-1")
def spa1_index_width_0():
    """Relative index width b = 0."""
    return t(rel(0, 0, []) + section(S.RAW, b""), **REL)


@case("SPA-1")
def spa1_index_width_17():
    """Relative index width b = 17."""
    return t(rel(17, 0, []) + section(S.RAW, b""), **REL)


@case("SPA-2")
def spa2_nnz_above_numel():
    """5 kept elements declared in a 4-element tensor (relative)."""
    return t(rel(2, 5, [0] * 5) + section(S.RAW, bytes(20)), **REL)


@case("SPA-2")
def spa2_fewer_entries_than_nnz():
    """nnz 3 with 2 relative entries."""
    return t(rel(2, 3, [0, 0]) + section(S.RAW, bytes(12)), **REL)


@case("SPA-2")
def spa2_entries_without_kept():
    """nnz 0 with one relative entry."""
    return t(rel(2, 0, [0]) + section(S.RAW, b""), **REL)


@case("SPA-2")
def spa2_real_entries_differ():
    """nnz 1 with 2 real relative entries."""
    return t(rel(2, 1, [0, 0]) + section(S.RAW, bytes(4)), shape=(8,), **REL)


@case("SPA-2")
def spa2_bitmap_nnz_above_numel():
    """A bitmap declaring 5 kept elements of 4."""
    return t(section(S.BITMAP, uvar(5) + bytes([0b1111])) + section(S.RAW, bytes(20)), **BMP)


@case("SPA-2")
def spa2_bitmap_count_differs():
    """A bitmap declaring nnz 1 with 2 bits set."""
    return t(section(S.BITMAP, uvar(1) + bytes([0b11])) + section(S.RAW, bytes(4)), **BMP)


@case("SPA-3")
def spa3_trailing_filler():
    """The last relative entry is a filler (b = 2, entries 0 3)."""
    return t(rel(2, 1, [0, 3]) + section(S.RAW, bytes(4)), shape=(8,), **REL)


@case("SPA-4")
def spa4_position_past_end():
    """Relative entries 2 2 keep position 5 of a 5-element tensor."""
    return t(rel(2, 2, [2, 2]) + section(S.RAW, bytes(8)), shape=(5,), **REL)


_TWENTY = dict(shape=(30,), **REL)


@case("SPA-5")
def spa5_span_out_of_range():
    """A chunk span of 15 for 16 entries (each advances at least 1)."""
    return t(rel(2, 20, [0] * 20, packed([15]) + packed([0])) + section(S.RAW, bytes(80)), **_TWENTY)


@case("SPA-5")
def spa5_spans_exceed_numel():
    """Chunk spans that cover 40 of 30 positions."""
    return t(rel(2, 20, [0] * 20, packed([40]) + packed([0])) + section(S.RAW, bytes(80)), **_TWENTY)


@case("SPA-5")
def spa5_tables_disagree():
    """A span table of 17 where the decoded entries advance 16."""
    return t(rel(2, 20, [0] * 20, packed([17]) + packed([0])) + section(S.RAW, bytes(80)), **_TWENTY)


@case("SPA-5")
def spa5_fillers_not_minimal():
    """The fillers table written with width 3 for the value 0."""
    return t(rel(2, 20, [0] * 20, packed([16]) + packed([0], 3)) + section(S.RAW, bytes(80)),
             **_TWENTY)


@case("SPA-6")
def spa6_bitmap_padding_bit():
    """A bitmap of a 4-element tensor with bit 4 (padding) set."""
    return t(section(S.BITMAP, uvar(1) + bytes([0b10001])) + section(S.RAW, bytes(4)), **BMP)


# -- values (VAL) ------------------------------------------------------------------------------


@case("VAL-1")
def val1_bool_raw_2():
    """A raw bool tensor holding the byte 2."""
    return t(section(S.RAW, bytes([0, 1, 2, 1])), dtype=DType.BOOL)


@case("VAL-1")
def val1_bool_codebook_2():
    """A bool codebook holding the entry 2."""
    return t(book(DType.BOOL, bytes([0, 2])) + indices([0, 1, 1, 0], 2), dtype=DType.BOOL, **CB)


@case("VAL-2")
def val2_float64_codebook_for_float32():
    """A float64 codebook for a float32 tensor."""
    return t(book(DType.FLOAT64, bytes(16)) + indices([0, 1, 1, 0], 2), **CB)


@case("VAL-2")
def val2_float32_codebook_for_int8():
    """A float32 codebook for an int8 tensor."""
    return t(book(F32, bytes(8)) + indices([0, 1, 1, 0], 2), dtype=DType.INT8, **CB)


@case("VAL-2")
def val2_bfloat16_codebook_for_float16():
    """A bfloat16 codebook for a float16 tensor."""
    return t(book(DType.BFLOAT16, bytes(4)) + indices([0, 1, 1, 0], 2), dtype=DType.FLOAT16, **CB)


@case("VAL-3")
def val3_codebook_size_0():
    """A codebook of k = 0."""
    return t(book(F32, b"", k=0), **CB)


@case("VAL-3")
def val3_codebook_size_65537():
    """A codebook of k = 65537 (the maximum is 65536)."""
    return t(book(F32, b"", k=65537), **CB)


@case("VAL-4")
def val4_index_count_differs():
    """3 codebook indices for a 4-element tensor."""
    return t(BOOK2 + indices([0, 1, 1], 2), **CB)


@case("VAL-5")
def val5_raw_short():
    """A RAW section of 15 bytes for a (4,) float32 tensor."""
    return t(section(S.RAW, bytes(15)))


@case("VAL-5")
def val5_raw_long():
    """A RAW section of 20 bytes for a (4,) float32 tensor."""
    return t(section(S.RAW, bytes(20)))


@case("VAL-5")
def val5_padding_not_zero():
    """The RAW alignment padding P of an ALIGNED tensor holds 01 bytes."""
    return build([raw_tensor("p" * 10, BIG, F32, pad_byte=1)])


@case("VAL-5")
def val5_padding_too_long():
    """The RAW padding is 64 bytes longer than the P of spec 4.4."""
    name = "p" * 10
    pad = raw_padding(len(tensor_head(name, F32, (64,))), 256)
    return build([raw_tensor(name, BIG, F32, pad=pad + 64)])


# -- format 1.1: grouped indices (spec 7.4) ------------------------------------------------------


def grouped(g: int, symbols, alphabet: int) -> bytes:
    """A GROUPED_INDICES section: group size, then a stream of group symbols."""
    return section(S.GROUPED_INDICES, bytes([g]) + huffman.encode_stream(
        np.asarray(symbols, np.int64), alphabet, chunk_log=4))


def t11(sections: bytes, **kw) -> bytes:
    """A 1.1 file holding one hand-made float32 codebook tensor of shape (5,)."""
    kw.setdefault("shape", (5,))
    return build([tensor_rec("t", F32, kw.pop("shape"), values=Values.CODEBOOK, sections=sections,
                             **kw)], hdr=header(minor=1))


@case("VAL-6")
def val6_group_of_one():
    """A GROUPED_INDICES section with g = 1 (groups need at least 2 indices)."""
    return t11(BOOK3 + grouped(1, [0, 1, 2, 1, 2], 3))


@case("VAL-6")
def val6_group_alphabet_too_large():
    """Groups of 11 indices of a 3-entry codebook: 3**11 = 177147 symbols, above 65536."""
    return t11(BOOK3 + grouped(11, [0], 2))


@case("VAL-4")
def val4_group_count_differs():
    """2 groups of 2 indices for 5 stored elements (3 are needed)."""
    return t11(BOOK3 + grouped(2, [1, 7], 9))


@case("VAL-7")
def val7_last_group_not_completed_with_zero():
    """5 indices in pairs whose last pair is (2, 1): the index after the last element must be 0."""
    return t11(BOOK3 + grouped(2, [1, 7, 7], 9))


@case("SEC-4")
def sec4_plain_and_grouped_indices():
    """Both an INDICES and a GROUPED_INDICES section for one codebook."""
    return t11(BOOK3 + indices([0, 1, 2, 1, 2], 3) + grouped(2, [1, 7, 6], 9))


# -- recipe (RCP) --------------------------------------------------------------------------------


@case("RCP-1")
def rcp1_tags_descending():
    """Recipe tag 3 followed by tag 2."""
    return t(section(S.RECIPE, bytes([3, 4]) + bytes(4) + bytes([2, 1, 1]), flags=1) + RAW16)


@case("RCP-1")
def rcp1_tag_0():
    """A recipe field with tag 0."""
    return t(section(S.RECIPE, bytes([0, 1, 1]), flags=1) + RAW16)


@case("RCP-2")
def rcp2_value_length():
    """A u8 recipe field (prune_method) 5 bytes long."""
    return t(section(S.RECIPE, bytes([2, 5, 1]) + bytes(4), flags=1) + RAW16)


@case("RCP-2")
def rcp2_plan_not_utf8():
    """A recipe plan name that is not UTF-8."""
    return t(section(S.RECIPE, bytes([1, 2, 0xC3, 0x28]), flags=1) + RAW16)


@case("RCP-3")
def rcp3_bool_field_2():
    """The recipe's finetuned flag is 2."""
    return t(section(S.RECIPE, bytes([8, 1, 2]), flags=1) + RAW16)


# -- metadata (MET) --------------------------------------------------------------------------------


def _meta(body: bytes) -> bytes:
    return build([Rec(RecordKind.METADATA, body), GOOD])


@case("MET-1")
def met1_duplicate_keys():
    """Two metadata entries with the key "a"."""
    return _meta(metadata_body([("a", "1"), ("a", "2")]))


@case("MET-1")
def met1_unsorted_keys():
    """Metadata keys "b" then "a"."""
    return _meta(metadata_body([("b", "1"), ("a", "2")]))


@case("MET-1")
def met1_count_cannot_fit():
    """A metadata count of 1000 in a 2-byte body."""
    return _meta(uvar(1000))


@case("MET-1")
def met1_value_overrun():
    """A metadata value declared 9 bytes long with 1 byte left."""
    return _meta(uvar(1) + uvar(1) + b"k" + uvar(9) + b"v")


@case("MET-1")
def met1_trailing_bytes():
    """A byte left after the last metadata entry."""
    return _meta(metadata_body([("k", "v")]) + b"\x00")


@case("MET-2")
def met2_empty_key():
    """An empty metadata key."""
    return _meta(metadata_body([("", "1")]))


@case("MET-2")
def met2_control_in_key():
    """A metadata key containing U+0001."""
    return _meta(metadata_body([("a\x01", "1")]))


@case("MET-3")
def met3_key_not_utf8():
    """A metadata key of the byte ff."""
    return _meta(metadata_body([(b"\xff", "1")]))


@case("MET-3")
def met3_value_not_utf8():
    """A metadata value cut inside a UTF-8 sequence."""
    return _meta(metadata_body([("k", b"\xc3")]))


# -- index (NDX) -----------------------------------------------------------------------------------

TWO = [tensor_rec("a", F32, (4,), sections=RAW16), tensor_rec("b", F32, (4,), sections=RAW16)]


@case("NDX-1")
def ndx1_trailing_bytes():
    """A byte left after the last index entry."""
    return build(TWO, index_body=lambda es: encode_index(es) + b"\x00")


@case("NDX-1")
def ndx1_count_cannot_fit():
    """An index count of 3 in a 5-byte body."""
    return build(TWO, index_body=uvar(3) + bytes(4))


@case("NDX-1")
def ndx1_empty_body():
    """An index record with an empty body."""
    return build(TWO, index_body=b"")


def _raw_entry(kind: int, offset: int, length: int) -> bytes:
    return bytes([kind]) + uvar(offset) + uvar(length)


@case("NDX-2")
def ndx2_entry_kind_0():
    """An index entry of kind 0."""
    def body(es):
        e = es[0]
        return uvar(1) + _raw_entry(0, e.offset, e.length)
    return build([Rec(9, b"x" * 20, flags=1)], index_body=body)


@case("NDX-2")
def ndx2_entry_kind_3():
    """An index entry of kind 3 (INDEX)."""
    def body(es):
        e = es[0]
        return uvar(1) + _raw_entry(3, e.offset, e.length)
    return build([Rec(9, b"x" * 20, flags=1)], index_body=body)


@case("NDX-3")
def ndx3_entry_missing():
    """The index lists the first of two records: the entries end before the index."""
    return build(TWO, index_entries=lambda es: es[:1])


@case("NDX-3")
def ndx3_entry_misplaced():
    """The second index entry starts one byte after the first record ends."""
    return with_index(TWO, lambda es: [es[0], dataclasses.replace(es[1], offset=es[1].offset + 1)])


@case("NDX-4")
def ndx4_wrong_shape():
    """The second entry gives shape (2, 2) for a (4,) tensor."""
    return with_index(TWO, lambda es: [es[0], dataclasses.replace(es[1], shape=(2, 2))])


@case("NDX-4")
def ndx4_wrong_name():
    """The first entry names the tensor "z"; its record says "a"."""
    return with_index(TWO, lambda es: [dataclasses.replace(es[0], name="z"), es[1]])


@case("NDX-4")
def ndx4_wrong_dtype():
    """The first entry gives float64 for a float32 tensor."""
    return with_index(TWO, lambda es: [dataclasses.replace(es[0], dtype=DType.FLOAT64), es[1]])


@case("NDX-4")
def ndx4_wrong_kind():
    """An entry of kind TENSOR for an optional record of kind 9."""
    return with_index([Rec(9, b"x" * 20, flags=1)], lambda es: [dataclasses.replace(
        es[0], kind=RecordKind.TENSOR, name="a", dtype=F32, shape=(4,))])


@case("NDX-4")
def ndx4_merged_entries():
    """One unknown-kind entry spans both tensor records (it tiles, but lists one record)."""
    return with_index(TWO, lambda es: [dataclasses.replace(
        es[0], kind=9, length=es[0].length + es[1].length, name=None, dtype=None, shape=None)])


# -- trailer (TRL) ---------------------------------------------------------------------------------


@case("TRL-1")
def trl1_end_magic():
    """The last 4 bytes are DCZX."""
    return build([GOOD])[:-4] + b"DCZX"


@case("TRL-2", "ChecksumError")
def trl2_trailer_crc():
    """The trailer CRC-32 is off by one bit."""
    return build([GOOD], trailer_bytes=trailer(0, good_crc=False))


@case("TRL-3")
def trl3_offset_below_16():
    """index_offset 5: inside the header."""
    return build([GOOD], trailer_offset=5)


@case("TRL-3")
def trl3_offset_at_trailer():
    """index_offset = file size - 16: the trailer itself."""
    n = len(build([GOOD]))
    return build([GOOD], trailer_offset=n - 16)


@case("TRL-3")
def trl3_points_at_tensor():
    """index_offset 16: the first tensor record, not the index."""
    return build([GOOD], trailer_offset=16)


# -- whole file (FIL) --------------------------------------------------------------------------------


@case("FIL-1", "TruncatedError")
def fil1_header_only():
    """A valid header and nothing else."""
    return header()


@case("FIL-1", "TruncatedError")
def fil1_cut_in_record():
    """A valid file cut in the middle of its second record."""
    good = small_golden()
    return good[:60]


@case("FIL-1", "TruncatedError")
def fil1_trailer_missing():
    """A valid file without its 16-byte trailer."""
    return small_golden()[:-16]


@case("FIL-1", "TruncatedError")
def fil1_trailer_cut():
    """A valid file missing the last byte of its trailer."""
    return small_golden()[:-1]


@case("FIL-2")
def fil2_byte_appended():
    """A valid file followed by one zero byte."""
    return small_golden() + b"\x00"


@case("FIL-2")
def fil2_file_appended_to_itself():
    """A valid file written twice (a polyglot-style appendage)."""
    good = small_golden()
    return good + good


@case("FIL-3")
def fil3_metadata_not_first():
    """A METADATA record after a tensor record."""
    return build([GOOD, Rec(RecordKind.METADATA, b"\x00")])


@case("FIL-3")
def fil3_two_metadata_records():
    """Two METADATA records."""
    return build([Rec(RecordKind.METADATA, b"\x00"), Rec(RecordKind.METADATA, b"\x00"), GOOD])


@case("FIL-4")
def fil4_duplicate_names():
    """Two tensors named "w"."""
    return build([tensor_rec("w", F32, (4,), sections=RAW16),
                  tensor_rec("w", F32, (4,), sections=RAW16)])


# -- limits (LIM) -------------------------------------------------------------------------------------


@case("LIM-1", "LimitError")
def lim1_name_too_long():
    """A 5000-byte tensor name (max_name_bytes = 4096)."""
    body = tensor_head("n" * 5000, F32, (4,)) + RAW16
    return build([Rec(RecordKind.TENSOR, body, name="x", dtype=F32, shape=(4,))])


@case("LIM-1", "LimitError")
def lim1_decompression_bomb():
    """A 2**30-element float32 tensor (4 GiB) with nothing kept, in a few dozen bytes."""
    secs = section(S.RELATIVE, bytes([1]) + uvar(0) + uvar(0)) + section(S.RAW, b"")
    return t(secs, shape=(2**30,), **REL)


@case("LIM-1", "LimitError")
def lim1_tensor_bytes():
    """A float32 tensor of 2**62 - 1 elements (just below TEN-6; above max_tensor_bytes)."""
    return t(RAW16, shape=(2**62 - 1,))


@case("LIM-1", "LimitError")
def lim1_record_length():
    """A tensor record declaring a 2**40-byte body (max_record_bytes = 2**36)."""
    return header() + bytes([RecordKind.TENSOR, 0]) + uvar(2**40) + bytes(100)


@case("LIM-1", "LimitError")
def lim1_metadata_length():
    """A metadata record declaring a 2**30-byte body (max_metadata_bytes = 16 MiB)."""
    return header() + bytes([RecordKind.METADATA, 0]) + uvar(2**30) + bytes(100)


@case("LIM-1", "LimitError")
def lim1_index_count():
    """An index declaring 2**40 entries (max_tensors = 10**6)."""
    return build([GOOD], index_body=uvar(2**40) + bytes(8))


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def outcome(data: bytes) -> tuple[str, str | None] | None:
    """(error class, rule) the reference decoder reports, or None if it accepts the file."""
    try:
        dcfmt.decode(data)
    except dcfmt.DczError as exc:
        return type(exc).__name__, exc.rule
    return None


def load_manifest() -> dict:
    if os.path.exists(MANIFEST):
        with open(MANIFEST, encoding="utf-8") as f:
            return json.load(f)
    return {
        "description": ("Invalid .dcz files, one broken rule each (spec/dcz.md section 12). "
                        "Files are added, never regenerated. For every entry a conforming "
                        "decoder rejects the file with the error category of `error` "
                        "(spec 1.2) and should name `rule`; the reference implementation raises "
                        "exactly `error` with `rule`, `dcfmt.validate` reports `rule` first, "
                        "and `dcz validate` exits with `exit` (spec 10). `lazy_rejects`: a lazy "
                        "reader that opens the file, reads its metadata and every tensor must "
                        "reject it too."),
        "must_accept": ["../empty_and_scalar.dcz", "../one_symbol.dcz", "../constant_codebook.dcz",
                        "../all_zero.dcz", "../no_tensors.dcz", "../max_code_length.dcz",
                        "../unknown_optional_parts.dcz"],
        "vectors": [],
    }


def main(argv: list[str]) -> int:
    check_only = "--check" in argv
    manifest = load_manifest()
    listed = {v["file"] for v in manifest["vectors"]}
    next_id = max((v["id"] for v in manifest["vectors"]), default=0) + 1
    written = bad = 0
    for c in CASES:
        file = c.name + ".dcz"
        path = os.path.join(HERE, file)
        exists = os.path.exists(path)
        if exists and not check_only:
            continue  # never regenerate
        data = c.build()
        got = outcome(data)
        if got != (c.error, c.rule):
            print(f"MISMATCH {file}: expected {c.error} {c.rule}, the reference decoder gives {got}")
            bad += 1
            continue
        if check_only:
            if exists and open(path, "rb").read() != data:
                print(f"note: {file} differs from what its builder makes now (the file is kept)")
            continue
        if file in listed:
            print(f"MISMATCH {file}: listed in the manifest but missing; restore it from git")
            bad += 1
            continue
        with open(path, "xb") as f:
            f.write(data)
        manifest["vectors"].append({
            "id": next_id, "file": file, "rule": c.rule, "error": c.error,
            "exit": EXIT_CODES[c.error], "lazy_rejects": c.lazy, "description": c.description,
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        })
        next_id += 1
        written += 1
        print(f"wrote {file} ({len(data)} bytes): {c.rule} {c.error}")
    if written:
        tmp = MANIFEST + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, MANIFEST)
    if check_only:
        print(f"{len(CASES)} cases checked; {bad} mismatches")
    else:
        print(f"{written} new invalid vectors; {len(CASES) - written - bad} already present"
              + (f"; {bad} mismatches" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
