"""The ``dcz`` command line.

Exit codes are stable (spec 10): 0 success, 1 invalid file, 2 usage error,
3 I/O error, 4 limit exceeded, 5 unsupported version or critical feature.
Errors print one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import DczError, LimitError, UnsupportedFeatureError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_IO = 3
EXIT_LIMIT = 4
EXIT_UNSUPPORTED = 5


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an exception raised while handling a file."""
    if isinstance(exc, LimitError):
        return EXIT_LIMIT
    if isinstance(exc, UnsupportedFeatureError) or type(exc).__name__ == "VersionError":
        return EXIT_UNSUPPORTED
    if isinstance(exc, DczError):
        return EXIT_INVALID
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_INVALID


def _fmt_bits(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def cmd_info(args) -> int:
    """Per-tensor table of a file: where the bits went (the paper's Tables 2-5)."""
    from .stats import tensor_stats
    from .reader import Reader

    with Reader(args.file) as r:
        meta = r.metadata
        stats = [tensor_stats(rec) for rec in r.records()]
        version = r.header
    file_size = os.path.getsize(args.file)
    total_decoded = sum(s.decoded_bytes for s in stats)
    if args.json:
        print(json.dumps({
            "file": args.file, "format_version": f"{version.major}.{version.minor}",
            "file_bytes": file_size, "decoded_bytes": total_decoded,
            "ratio": total_decoded / file_size if file_size else None,
            "metadata": meta, "tensors": [s.to_dict() for s in stats],
        }, indent=2))
        return EXIT_OK
    print(f"{args.file}: .dcz format {version.major}.{version.minor}, {len(stats)} tensors, "
          f"{_fmt_bytes(file_size)}")
    for key, value in meta.items():
        print(f"  {key} = {value!r}")
    head = ("tensor", "shape", "dtype", "layout/values", "weights", "kept", "k", "idx b",
            "idx b(H)", "pos b", "pos b(H)", "stored", "ratio")
    rows = []
    for s in stats:
        rows.append((
            s.name, "x".join(map(str, s.shape)) or "()", s.dtype, f"{s.layout}/{s.values}",
            f"{s.numel}", f"{100 * s.kept:.1f}%", "-" if s.codebook is None else str(s.codebook),
            _fmt_bits(s.index_bits), _fmt_bits(s.index_bits_huffman), _fmt_bits(s.pos_bits),
            _fmt_bits(s.pos_bits_huffman), _fmt_bytes(s.stored_bytes), f"{s.ratio:.1f}x",
        ))
    rows.append(("total", "", "", "", str(sum(s.numel for s in stats)),
                 f"{100 * sum(s.nnz for s in stats) / max(1, sum(s.numel for s in stats)):.1f}%",
                 "", "", "", "", "", _fmt_bytes(file_size),
                 f"{total_decoded / file_size:.1f}x" if file_size else "-"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print("idx b: bits per codebook index before / after Huffman (H); pos b: relative index bits per "
          "kept weight; ratio: decoded bytes / stored bytes")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcz", description="The .dcz Deep Compression format.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="per-tensor statistics of a .dcz file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dcz`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("dcz: interrupted", file=sys.stderr)
        return 130
    except (DczError, OSError) as exc:
        if args.debug:
            raise
        print(f"dcz: error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
