"""Fuzz the memory-mapped lazy loader, touching every tensor, slice and the metadata."""

import os
import tempfile

import atheris

with atheris.instrument_imports():
    import dcfmt
    from common import prepare, run

_DIR = tempfile.mkdtemp(prefix="dcz-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
_PATH = os.path.join(_DIR, "input.dcz")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(prepare(data))
    try:
        with dcfmt.open(_PATH) as f:
            f.metadata()
            for name in f.keys():
                f.info(name)
                array = f[name]
                if array.ndim and array.shape[0] > 1:
                    f.get_slice(name)[1 : array.shape[0]]
    except dcfmt.DczError:
        pass


if __name__ == "__main__":
    run(test_one_input)
