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
    # decoding the tensors together (short streams batched) must agree with
    # decoding them one by one: the same arrays, or the same first error
    outcomes = []
    for together in (False, True):
        try:
            with dcfmt.open(_PATH) as f:
                outcomes.append(f.get_tensors() if together else {n: f[n] for n in f.keys()})
        except dcfmt.DczError as e:
            outcomes.append((type(e).__name__, e.rule, e.tensor))
    alone, batched = outcomes
    if type(alone) is not type(batched) or (isinstance(alone, tuple) and alone != batched):
        raise AssertionError(f"one by one: {alone if isinstance(alone, tuple) else 'ok'}, "
                             f"get_tensors: {batched if isinstance(batched, tuple) else 'ok'}")
    if isinstance(alone, dict):
        assert list(alone) == list(batched)
        for name, array in alone.items():
            if array.tobytes() != batched[name].tobytes() or array.dtype != batched[name].dtype:
                raise AssertionError(f"get_tensors and f[{name!r}] disagree")


if __name__ == "__main__":
    run(test_one_input)
