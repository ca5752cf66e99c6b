"""Generate the golden conformance vectors of spec/vectors/.

Vectors are ADDED, NEVER REGENERATED: this script writes only the vectors whose
files do not exist yet, and refuses to touch existing ones.  An old vector that
stops decoding is a compatibility break, not a reason to rewrite it.

Each vector ``NAME.dcz`` comes with ``NAME.json``: what it covers and the
expected decoded content of every tensor (dtype, shape, and the little-endian
bytes of the data in hex).  Expected values come from the encoder's side (the
input arrays, or ``TensorCode.reconstruct()`` for lossy tensors), never from
the decoder under test.

Run:  python spec/vectors/generate.py
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import dcfmt  # noqa: E402
from dcfmt import container  # noqa: E402
from dcfmt.binary import uvar  # noqa: E402
from dcfmt.constants import Layout, RecordKind, Values  # noqa: E402
from dcfmt.dtypes import DType  # noqa: E402
from dcfmt.plan import FixedPlan  # noqa: E402
from dcfmt.record import EncodeOptions, TensorCode, encode_tensor  # noqa: E402

VECTORS = {}


def vector(fn):
    VECTORS[fn.__name__] = fn
    return fn


def _expected(name: str, array: np.ndarray, dtype: DType) -> dict:
    storage = np.asarray(array)
    if dtype is DType.BFLOAT16:
        storage = storage.view(np.uint16)
    raw = np.asarray(storage, dtype=dtype.storage, order="C").tobytes()
    return {"name": name, "dtype": dtype.label, "shape": list(np.shape(array)), "data": raw.hex()}


def _write(writer_fn, metadata=None, options=EncodeOptions()) -> tuple[bytes, list]:
    buf = io.BytesIO()
    with dcfmt.Writer(buf, metadata=metadata, plan="lossless", options=options) as w:
        expected = writer_fn(w)
    return buf.getvalue(), expected


def _code(w, code: TensorCode) -> dict:
    w.write_code(code)
    return _expected(code.name, code.reconstruct(), code.dtype)


def _array(w, name, array, plan="lossless", dtype=None) -> dict:
    code = w.write(name, array, plan=plan, dtype=dtype)
    return _expected(name, code.reconstruct(), code.dtype)


RNG = np.random.default_rng(20261204)


# --------------------------------------------------------------------------- vectors


@vector
def dense_raw_all_dtypes():
    """One dense raw tensor of every element type; payloads above and below 64 bytes."""
    arrays = {
        "bool": RNG.random(70) < 0.5,
        "int8": RNG.integers(-128, 128, 67, dtype=np.int8),
        "int16": RNG.integers(-2**15, 2**15, (3, 11), dtype=np.int16),
        "int32": RNG.integers(-2**31, 2**31, (5,), dtype=np.int32),
        "int64": RNG.integers(-2**63, 2**63 - 1, (2, 9), dtype=np.int64),
        "uint8": RNG.integers(0, 256, (8, 9), dtype=np.uint8),
        "uint16": RNG.integers(0, 2**16, (40,), dtype=np.uint16),
        "uint32": RNG.integers(0, 2**32, (3,), dtype=np.uint32),
        "uint64": RNG.integers(0, 2**63, (17,), dtype=np.uint64) * np.uint64(2),
        "float16": RNG.normal(size=(6, 7)).astype(np.float16),
        "float32": RNG.normal(size=(4, 5)).astype(np.float32),
        "float64": RNG.normal(size=(9,)),
    }

    def body(w):
        out = [_array(w, name, a, plan=dcfmt.LosslessPlan()) for name, a in arrays.items()]
        bf16 = RNG.integers(0, 2**16, (33,), dtype=np.uint16)
        bf16[bf16 & 0x7F80 == 0x7F80] = 0x3F80  # keep it free of NaN patterns for readability
        out.append(_array(w, "bfloat16", bf16, dtype="bfloat16"))
        return out

    return "every element type, dense raw; ALIGNED and unaligned records", _write(body)


@vector
def empty_and_scalar():
    """Zero-size tensors, 0-d scalars and a rank-32 tensor (must not be over-rejected)."""
    def body(w):
        return [
            _array(w, "empty_2d", np.zeros((0, 3), np.float32)),
            _array(w, "empty_1d", np.zeros((0,), np.int8)),
            _array(w, "empty_many", np.zeros((4, 0, 2), np.float64)),
            _array(w, "scalar_f64", np.array(-2.75)),
            _array(w, "scalar_bool", np.array(True)),
            _array(w, "rank32", np.full((1,) * 32, 7, np.int16)),
        ]
    return "empty tensors, 0-d scalars, maximum rank", _write(body)


@vector
def dense_codebook():
    """A 2-D float32 weight with a 4-bit linear-init codebook and a recipe."""
    w_ = (RNG.normal(size=(24, 20)) * 0.1).astype(np.float32)

    def body(w):
        return [_array(w, "fc.weight", w_, plan=FixedPlan(bits=4, label="fixed-4bit"))]
    return "dense layout, 16-entry codebook, Huffman indices, recipe section", _write(body)


@vector
def relative_fillers():
    """Relative index with 2-bit entries: long gaps need fillers."""
    positions = np.array([0, 1, 5, 6, 20, 21, 22, 60, 119])
    vals = np.array([0.5, -1.0, 0.5, 2.0, -1.0, 0.5, 0.5, 2.0, -1.0])
    book = np.array([-1.0, 0.5, 2.0], np.float32)
    idx = np.searchsorted(book, vals)
    code = TensorCode("sparse", DType.FLOAT32, (10, 12), layout=Layout.RELATIVE, values=Values.CODEBOOK,
                      positions=positions, index_bits=2, codebook=book, codebook_dtype=DType.FLOAT32,
                      indices=idx)
    return "relative index (b=2) with filler entries, codebook values", _write(lambda w: [_code(w, code)])


@vector
def relative_raw_multichunk():
    """Relative layout, raw values, 16-symbol chunks: multi-chunk stream and chunk tables."""
    n = 3000
    mask = RNG.random(n) < 0.06
    vals = np.where(mask, RNG.normal(size=n), 0).astype(np.float32)
    pos = np.flatnonzero(mask)
    code = TensorCode("pruned", DType.FLOAT32, (n,), layout=Layout.RELATIVE, positions=pos, index_bits=5,
                      raw=vals[pos])
    data = _write(lambda w: [_code(w, code)], options=EncodeOptions(chunk_log=4))
    return "relative layout (b=5), raw values, chunk_log 4: chunk offsets and chunk tables", data


@vector
def bitmap_layouts():
    """Bitmap layout with raw values and with codebook values."""
    n = 77
    mask = RNG.random(n) < 0.6
    pos = np.flatnonzero(mask)
    raw = TensorCode("bitmap_raw", DType.INT32, (7, 11), layout=Layout.BITMAP, positions=pos,
                     raw=RNG.integers(1, 1000, len(pos)).astype(np.int32))
    book = np.array([-3, 5, 9], np.int16)
    cb = TensorCode("bitmap_codebook", DType.INT16, (77,), layout=Layout.BITMAP, values=Values.CODEBOOK,
                    positions=pos, codebook=book, codebook_dtype=DType.INT16,
                    indices=RNG.integers(0, 3, len(pos)))
    return "bitmap layout; raw and codebook values; padding bits", _write(lambda w: [_code(w, raw), _code(w, cb)])


@vector
def one_symbol():
    """Huffman tables with a single used symbol (length-1 code '0')."""
    book = np.array([1.5, -0.25], np.float32)
    dense = TensorCode("one_index", DType.FLOAT32, (5, 5), values=Values.CODEBOOK, codebook=book,
                       codebook_dtype=DType.FLOAT32, indices=np.zeros(25, np.int64))
    pos = np.arange(3, 60, 3)
    rel = TensorCode("one_gap", DType.FLOAT32, (60,), layout=Layout.RELATIVE, values=Values.CODEBOOK,
                     positions=pos, index_bits=3, codebook=book, codebook_dtype=DType.FLOAT32,
                     indices=np.arange(len(pos)) % 2)
    return ("one-symbol alphabets: index stream and relative index stream (every gap 3)",
            _write(lambda w: [_code(w, dense), _code(w, rel)]))


@vector
def constant_codebook():
    """A codebook of one entry: no INDICES section, every element equals it."""
    code = TensorCode("ones", DType.FLOAT32, (3, 4), values=Values.CODEBOOK,
                      codebook=np.array([1.0], np.float32), codebook_dtype=DType.FLOAT32)
    return "k = 1 codebook without an index stream", _write(lambda w: [_code(w, code)])


@vector
def max_code_length():
    """Index stream whose longest code is 16 bits (the format maximum)."""
    fib = [1, 1]
    while len(fib) < 17:
        fib.append(fib[-1] + fib[-2])
    counts = fib  # Fibonacci counts give the deepest Huffman tree: 16-bit codes
    k = len(counts)
    idx = np.repeat(np.arange(k), counts)
    idx = RNG.permutation(idx)
    book = np.linspace(-1, 1, k).astype(np.float64)
    code = TensorCode("skewed", DType.FLOAT64, (len(idx),), values=Values.CODEBOOK, codebook=book,
                      codebook_dtype=DType.FLOAT64, indices=idx)
    data = _write(lambda w: [_code(w, code)], options=EncodeOptions(max_code_length=16, chunk_log=10))
    return "maximum code length 16 in a Huffman table", data


@vector
def metadata():
    """User metadata: unicode keys and values, an empty value, text that looks like code."""
    meta = {"format": "pt", "author": "Zoë ✓", "empty": "", "note": "line1\nline2",
            "__reduce__": "os.system('rm -rf /')", "z": "last"}

    def body(w):
        return [_array(w, "x", np.arange(6, dtype=np.int8).reshape(2, 3))]
    return "user metadata (sorted keys, unicode, inert code-like text)", _write(body, metadata=meta)


@vector
def multichunk_indices():
    """Dense codebook indices in 64 chunks of 16: exercises lock-step decoding."""
    book = np.linspace(-0.5, 0.5, 12).astype(np.float32)
    idx = np.clip(np.round(RNG.normal(5.5, 2.0, 1020)), 0, 11).astype(np.int64)
    code = TensorCode("many_chunks", DType.FLOAT32, (30, 34), values=Values.CODEBOOK, codebook=book,
                      codebook_dtype=DType.FLOAT32, indices=idx)
    return "1020 indices in 64 chunks (last chunk short)", _write(lambda w: [_code(w, code)],
                                                                  options=EncodeOptions(chunk_log=4))


@vector
def narrow_codebooks():
    """Codebooks stored narrower than the tensor: float16 for float32, bfloat16 for float64."""
    f16 = np.array([-0.5, 0.125, 3.0], np.float16)
    a = TensorCode("f32_with_f16_book", DType.FLOAT32, (4, 4), values=Values.CODEBOOK, codebook=f16,
                   codebook_dtype=DType.FLOAT16, indices=RNG.integers(0, 3, 16))
    bf = np.array([0x3F80, 0xC000, 0x4049], np.uint16)  # 1.0, -2.0, 3.140625
    b = TensorCode("f64_with_bf16_book", DType.FLOAT64, (6,), values=Values.CODEBOOK, codebook=bf,
                   codebook_dtype=DType.BFLOAT16, indices=np.array([0, 1, 2, 2, 1, 0]))
    return "codebook dtype narrower than the tensor dtype (exact widening)", _write(
        lambda w: [_code(w, a), _code(w, b)])


@vector
def special_floats():
    """NaN payloads, infinities, -0.0 and subnormals, raw and as a lossless codebook."""
    bits = np.array([0x7FC00001, 0xFFC00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001,
                     0x3F800000, 0x00000000], np.uint32)
    raw = bits.view(np.float32)
    few = np.tile(raw[:4], 20)  # 4 distinct patterns: stored as a codebook

    def body(w):
        return [_array(w, "raw_specials", raw), _array(w, "codebook_specials", few)]
    return "NaN with payload, +-inf, -0.0, subnormal: raw and lossless codebook", _write(body)


@vector
def all_zero():
    """An all-zero tensor: relative layout with no kept elements."""
    def body(w):
        return [_array(w, "zeros", np.zeros((64, 64), np.float32))]
    return "tensor with no kept elements (empty relative stream)", _write(body)


@vector
def no_tensors():
    """A file with no records at all: header, index, trailer."""
    return "no tensors, no metadata", _write(lambda w: [])


@vector
def error_bounded_model():
    """A small model saved with the default error-bounded plan."""
    rng = np.random.default_rng(7)
    conv = (rng.normal(size=(8, 3, 3, 3)) * 0.2).astype(np.float32)
    fc = (rng.normal(size=(40, 72)) * 0.05).astype(np.float32)
    fc[np.abs(fc) < 0.04] = 0  # pruned and retrained: zeros stay
    bias = (rng.normal(size=(40,)) * 0.01).astype(np.float32)

    def body(w):
        return [_array(w, n, a, plan=dcfmt.ErrorBoundedPlan())
                for n, a in (("conv.weight", conv), ("fc.weight", fc), ("fc.bias", bias))]
    return "default plan on a small model: codebooks, relative index, raw bias", _write(
        body, metadata={"arch": "tiny"})


@vector
def unknown_optional_parts():
    """An unknown OPTIONAL record and an unknown OPTIONAL section: decoders skip both."""
    code = TensorCode("t", DType.UINT8, (4,), raw=np.array([1, 2, 3, 4], np.uint8))
    _, parts = encode_tensor(code)
    extra_section = bytes([200, 0x01]) + uvar(3) + b"new"  # kind 200, OPTIONAL, after RAW (6)
    body = b"".join(bytes(p) for p in parts) + extra_section
    out = bytearray(container.encode_header())
    entries = []

    def record(kind, flags, body_bytes, **entry):
        start = len(out)
        prefix = container.record_prefix(kind, flags, len(body_bytes))
        out.extend(prefix + body_bytes + struct.pack("<I", zlib.crc32(prefix + body_bytes)))
        if kind != RecordKind.INDEX:
            entries.append(container.IndexEntry(kind, start, len(out) - start, **entry))

    record(RecordKind.TENSOR, 0, body, name="t", dtype=DType.UINT8, shape=(4,))
    record(77, 0x01, b"an optional record from a later minor version")
    index_offset = len(out)
    record(RecordKind.INDEX, 0, container.encode_index(entries))
    out.extend(container.encode_trailer(index_offset))
    return ("unknown optional record kind 77 and optional section kind 200 (skipped)",
            (bytes(out), [_expected("t", code.reconstruct(), DType.UINT8)]))


@vector
def grouped_indices():
    """Format 1.1: codebook indices coded in groups (GROUPED_INDICES, spec 7.4).

    The worked example of spec 7.4.1 (5 indices in pairs, the last pair
    completed with 0); 1001 indices of a 3-entry codebook in groups of 5, in
    16-symbol chunks; a relative layout with 16-entry float16-stored pairs and
    an odd nnz; a bitmap with a 2-entry codebook in groups of 8.
    """
    rng = np.random.default_rng(20261205)
    example = TensorCode("example", DType.FLOAT32, (5,), values=Values.CODEBOOK,
                         codebook=np.array([-1.0, 0.5, 2.5], np.float32),
                         codebook_dtype=DType.FLOAT32, indices=np.array([0, 1, 2, 1, 2]))
    idx3 = np.clip(np.round(rng.normal(1.0, 0.6, 1001)), 0, 2).astype(np.int64)
    g5 = TensorCode("groups_of_5", DType.FLOAT32, (7, 11, 13), values=Values.CODEBOOK,
                    codebook=np.array([-0.25, 0.0, 0.25], np.float32),
                    codebook_dtype=DType.FLOAT32, indices=idx3)
    pos = np.sort(rng.choice(40 * 40, size=777, replace=False)).astype(np.int64)
    idx16 = np.clip(np.round(rng.normal(7.5, 3.0, 777)), 0, 15).astype(np.int64)
    rel = TensorCode("pairs_relative", DType.FLOAT32, (40, 40), layout=Layout.RELATIVE,
                     values=Values.CODEBOOK, positions=pos, index_bits=3,
                     codebook=np.linspace(-1, 1, 16).astype(np.float16),
                     codebook_dtype=DType.FLOAT16, indices=idx16)
    bpos = np.sort(rng.choice(300, size=203, replace=False)).astype(np.int64)
    bits = (rng.random(203) < 0.8).astype(np.int64)
    bmp = TensorCode("groups_of_8_bitmap", DType.FLOAT64, (300,), layout=Layout.BITMAP,
                     values=Values.CODEBOOK, positions=bpos,
                     codebook=np.array([0.125, -3.0]), codebook_dtype=DType.FLOAT64, indices=bits)
    buf = io.BytesIO()
    expected = []
    with dcfmt.Writer(buf, plan="lossless") as w:
        for code, g, chunk_log in [(example, 2, 4), (g5, 5, 4), (rel, 2, 5), (bmp, 8, 4)]:
            w.write_code(code, options=EncodeOptions(chunk_log=chunk_log, index_group=g))
            expected.append(_expected(code.name, code.reconstruct(), code.dtype))
    data = buf.getvalue()
    recs = list(dcfmt.Reader(io.BytesIO(data)).records())
    assert [r.group for r in recs] == [2, 5, 2, 8] and data[9] == 1
    return "format 1.1 grouped indices: g = 2, 5, 8; dense, relative, bitmap; odd counts", \
        (data, expected)


def main() -> int:
    written = 0
    for name, fn in VECTORS.items():
        dcz = os.path.join(HERE, f"{name}.dcz")
        js = os.path.join(HERE, f"{name}.json")
        if os.path.exists(dcz) or os.path.exists(js):
            continue  # never regenerate
        description, (data, tensors) = fn()
        meta = dcfmt.load_metadata(data) if data[16:17] == bytes([RecordKind.METADATA]) else {}
        with open(dcz, "xb") as f:
            f.write(data)
        with open(js, "x") as f:
            json.dump({"description": description, "doc": (fn.__doc__ or "").strip(),
                       "bytes": len(data), "metadata": meta, "tensors": tensors}, f, indent=1)
            f.write("\n")
        written += 1
        print(f"wrote {name}.dcz ({len(data)} bytes)")
    print(f"{written} new vectors; {len(VECTORS) - written} already present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
