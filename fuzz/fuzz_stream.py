"""Fuzz the streaming reader with fuzzer-chosen read sizes (short reads everywhere)."""

import io

import atheris

with atheris.instrument_imports():
    import dcfmt
    from common import prepare, run


class ChosenReads(io.RawIOBase):
    """Returns reads of the sizes listed in ``sizes`` (cycled), never more than asked."""

    def __init__(self, data: bytes, sizes: bytes) -> None:
        self._buf = io.BytesIO(data)
        self._sizes = [s or 1 for s in sizes] or [7]
        self._i = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._sizes[self._i % len(self._sizes)])
        self._i += 1
        chunk = self._buf.read(n)
        b[: len(chunk)] = chunk
        return len(chunk)


def test_one_input(data: bytes) -> None:
    k = data[0] % 8 if data else 0
    sizes, body = data[1 : 1 + k], data[1 + k :]
    try:
        with dcfmt.Reader(ChosenReads(prepare(body), sizes)) as r:
            r.metadata
            for _name, _array in r:
                pass
    except dcfmt.DczError:
        pass


if __name__ == "__main__":
    run(test_one_input)
