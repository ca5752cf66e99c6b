"""Shared pieces of the atheris harnesses.

Contract in every harness: a :class:`dcfmt.DczError` is a clean rejection;
any other exception escaping the code under test is a bug, and the harness
lets it propagate so atheris reports it with the input that caused it.

``fix_checksums`` recomputes every CRC-32 (header, records, trailer) of a
mutated file, so mutations get past the checksums and reach the deep code
(Huffman tables, sparse indices, limits).  Harnesses apply it to half of the
inputs, chosen by the input's first byte, so both paths are explored.
"""

from __future__ import annotations

import glob
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VECTORS = os.path.join(ROOT, "spec", "vectors")

# Tokens of the format for the mutator: magic numbers, record and section
# kinds with flags, common varints and the trailer magic.
DICTIONARY = [
    b"\x89DCZ\r\n\x1a\n", b"DCZE", b"\x01\x00", b"\x01\x02", b"\x02\x00", b"\x03\x00",
    b"\x01\x01", b"\x02\x00", b"\x03\x00", b"\x04\x00", b"\x05\x00", b"\x06\x00", b"\xc8\x01",
    b"\x0c", b"\x0b", b"\x0a", b"\x01", b"\x7f", b"\x80\x01", b"\xff\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x10", b"\x0a\x10", b"\x00\x00\x00\x00",
]


def seeds() -> list[bytes]:
    """Every golden vector's bytes."""
    out = []
    for path in sorted(glob.glob(os.path.join(VECTORS, "*.dcz"))):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def write_dictionary(path: str) -> str:
    """Write DICTIONARY in libFuzzer's format and return the path.

    Harnesses run in parallel share the file, so it is written under a
    private name and renamed into place: rewriting it in place let one
    harness's libFuzzer read it while another had just truncated it
    ("ParseDictionaryFile: file does not exist or is empty", exit 1).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        for i, tok in enumerate(DICTIONARY):
            f.write(f'kw{i}="' + "".join(f"\\x{b:02x}" for b in tok) + '"\n')
    os.replace(tmp, path)
    return path


def write_corpus(directory: str) -> str:
    """Seed corpus directory from spec/vectors (created if missing)."""
    os.makedirs(directory, exist_ok=True)
    for i, data in enumerate(seeds()):
        with open(os.path.join(directory, f"seed{i:02d}.dcz"), "wb") as f:
            f.write(data)
    return directory


def _uvar(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for i in range(10):
        if pos + i >= len(data):
            return None
        b = data[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    return None


def fix_checksums(data: bytes) -> bytes:
    """Recompute the header, record and trailer CRC-32s wherever the framing parses."""
    buf = bytearray(data)
    if len(buf) >= 16:
        buf[12:16] = struct.pack("<I", zlib.crc32(bytes(buf[:12])))
    pos = 16
    while pos < len(buf):
        if buf[pos] == 0 and pos % 64:
            pos += (-pos) % 64
            continue
        head = _uvar(buf, pos + 2)
        if head is None:
            break
        body_len, body_at = head
        end = body_at + body_len
        if end + 4 > len(buf):
            break
        buf[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(buf[pos:end])))
        kind = buf[pos]
        pos = end + 4
        if kind == 3:
            break
    if len(buf) >= 16:
        t = len(buf) - 16
        buf[t + 8 : t + 12] = struct.pack("<I", zlib.crc32(bytes(buf[t : t + 8])))
    return bytes(buf)


def prepare(data: bytes) -> bytes:
    """Use the input as is, or with fixed checksums, depending on its first byte."""
    if data and data[0] & 1 and len(data) > 1:
        return fix_checksums(data[1:])
    return data[1:] if data else data


def run(test_one_input, argv=None) -> None:
    """Start atheris with the seed corpus and dictionary unless told otherwise."""
    import sys

    import atheris

    argv = list(sys.argv if argv is None else argv)
    extra = []
    if not any(a.startswith("-dict=") for a in argv):
        extra.append("-dict=" + write_dictionary(os.path.join(HERE, ".dcz.dict")))
    corpus_given = any(not a.startswith("-") for a in argv[1:])
    if not corpus_given:
        extra.append(write_corpus(os.path.join(HERE, ".corpus", os.path.basename(argv[0])[:-3])))
    atheris.Setup(argv + extra, test_one_input)
    atheris.Fuzz()
