"""Fuzz the validator; it must agree with a full load on every input."""

import atheris

with atheris.instrument_imports():
    import dcfmt
    from common import prepare, run


def test_one_input(data: bytes) -> None:
    blob = prepare(data)
    report = dcfmt.validate(blob)
    try:
        dcfmt.decode(blob)
        loaded = True
    except dcfmt.DczError:
        loaded = False
    if report.valid != loaded:
        raise AssertionError(f"validate says {report.valid}, load says {loaded}: {report.findings}")


if __name__ == "__main__":
    run(test_one_input)
