"""Fuzz Huffman table parsing and decoding in isolation; both decoders must agree."""

import atheris
import numpy as np

with atheris.instrument_imports():
    from dcfmt import huffman
    from dcfmt.binary import Cursor
    from dcfmt.errors import DczError
    from common import run


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    alphabet = 1 + int.from_bytes(data[:2], "little") % 4096
    try:
        stream = huffman.parse_stream(Cursor(data[2:]), alphabet, "fuzz")
    except DczError:
        return
    results = []
    for method in ("bitarray", "lockstep"):
        try:
            results.append(huffman.decode(stream, method=method))
        except DczError as exc:
            results.append(exc.rule)
    a, b = results
    same = (a == b) if isinstance(a, str) or isinstance(b, str) else np.array_equal(a, b)
    if not same:
        raise AssertionError(f"decoders disagree: {a!r} vs {b!r}")


if __name__ == "__main__":
    run(test_one_input)
