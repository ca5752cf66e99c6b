"""Fuzz the one-shot reader: dcfmt.decode(bytes) decodes every tensor.

The reader decodes the short Huffman streams of consecutive tensors together;
decoding each record alone, as soon as it is read, must give the same arrays
or the same first error.
"""

import atheris

with atheris.instrument_imports():
    import dcfmt
    from common import prepare, run
    from dcfmt.record import decode_tensor


def _outcome(decode):
    try:
        return decode()
    except dcfmt.DczError as e:
        return (type(e).__name__, e.rule, e.tensor)


def _one_by_one(data: bytes) -> dict:
    with dcfmt.Reader(data) as r:
        return {rec.name: decode_tensor(rec) for rec in r._limited_records()}


def test_one_input(data: bytes) -> None:
    data = prepare(data)
    batched = _outcome(lambda: dcfmt.decode(data))
    alone = _outcome(lambda: _one_by_one(data))
    if isinstance(batched, dict) and isinstance(alone, dict):
        if list(batched) != list(alone) or any(
                a.dtype != b.dtype or a.tobytes() != b.tobytes()
                for a, b in zip(batched.values(), alone.values())):
            raise AssertionError("batched and one-by-one decoding give different tensors")
    elif batched != alone:
        raise AssertionError(f"batched: {batched if isinstance(batched, tuple) else 'ok'}, "
                             f"one by one: {alone if isinstance(alone, tuple) else 'ok'}")


if __name__ == "__main__":
    run(test_one_input)
