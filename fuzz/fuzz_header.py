"""Fuzz the header, trailer, metadata and index parsers directly."""

import atheris

with atheris.instrument_imports():
    from dcfmt import container
    from dcfmt.binary import Cursor
    from dcfmt.errors import DczError
    from common import run


def test_one_input(data: bytes) -> None:
    which = data[0] % 4 if data else 0
    body = data[1:]
    try:
        if which == 0:
            container.parse_header(body)
        elif which == 1:
            container.parse_trailer(body[:16].ljust(16, b"\0"), 16 + len(body))
        elif which == 2:
            container.parse_metadata(Cursor(body))
        else:
            container.parse_index(Cursor(body), 16 + len(body))
    except DczError:
        pass


if __name__ == "__main__":
    run(test_one_input)
