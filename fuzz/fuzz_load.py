"""Fuzz the one-shot reader: dcfmt.decode(bytes) decodes every tensor."""

import atheris

with atheris.instrument_imports():
    import dcfmt
    from common import prepare, run


def test_one_input(data: bytes) -> None:
    try:
        dcfmt.decode(prepare(data))
    except dcfmt.DczError:
        pass


if __name__ == "__main__":
    run(test_one_input)
