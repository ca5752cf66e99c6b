"""The ``dcz`` command line.

Exit codes are stable (spec 10): 0 success, 1 invalid file, 2 usage error,
3 I/O error, 4 limit exceeded, 5 unsupported version or critical feature.
``dcz validate`` with several files exits with the code of the worst one,
ranked I/O error > limit > unsupported > invalid > valid.
Errors print one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import DczError, LimitError, VersionError

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
    if isinstance(exc, VersionError):  # includes UnsupportedFeatureError
        return EXIT_UNSUPPORTED
    if isinstance(exc, DczError):
        return EXIT_INVALID
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_INVALID


def _fmt_bits(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def cmd_info(args) -> int:
    """Per-tensor table of a file: where the bits went (the paper's Tables 2-5).

    Uses the lazy loader: checks the index and each tensor record's framing,
    CRC and headers, and decodes nothing, so it is fast on any file.  Defects
    only a decode can find (a Huffman payload, sparse positions) are the job
    of ``dcz validate``.
    """
    from .lazy import open as lazy_open

    with lazy_open(args.file) as f:
        meta = f.metadata()
        stats = [f.stats(name) for name in f.keys()]
        version = f.header
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
    print(f"{args.file}: .dcz format {version.major}.{version.minor}, {len(stats)} "
          f"tensor{'s' if len(stats) != 1 else ''}, "
          f"{format_bytes(file_size)}")
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
            _fmt_bits(s.pos_bits_huffman), format_bytes(s.stored_bytes), f"{s.ratio:.1f}x",
        ))
    rows.append(("total", "", "", "", str(sum(s.numel for s in stats)),
                 f"{100 * sum(s.nnz for s in stats) / max(1, sum(s.numel for s in stats)):.1f}%",
                 "", "", "", "", "", format_bytes(file_size),
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


def cmd_validate(args) -> int:
    """Validate files against the spec; one line per finding; exit code by the worst file."""
    from .validate import severity, validate

    worst = EXIT_OK
    order = {EXIT_OK: 0, EXIT_INVALID: 1, EXIT_UNSUPPORTED: 2, EXIT_LIMIT: 3, EXIT_IO: 4}
    results = []
    for path in args.files:
        try:
            report = validate(path, checksums=not args.no_checksums)
        except OSError as exc:
            code = EXIT_IO
            results.append({"path": path, "valid": False, "io_error": str(exc)})
            if not args.json:
                print(f"{path}: I/O error: {exc.strerror or exc}", file=sys.stderr)
        else:
            code = {"valid": EXIT_OK, "invalid": EXIT_INVALID, "limit": EXIT_LIMIT,
                    "unsupported": EXIT_UNSUPPORTED}[severity(report)]
            results.append(report.to_dict())
            if not args.json:
                if report.valid:
                    print(f"{path}: valid (.dcz {report.version}, {report.tensors} tensor{'s' if report.tensors != 1 else ''}, "
                          f"{report.file_bytes} bytes{'' if report.checksums else ', checksums not checked'})")
                for finding in report.findings:
                    print(finding.line(path))
        if order[code] > order[worst]:
            worst = code
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcz", description="The .dcz Deep Compression format.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    try:  # dcfmt.converters imports torch and safetensors only when a conversion runs
        from .converters.cli import register as register_convert
    except ModuleNotFoundError as exc:  # a source tree used without installing it
        if exc.name != "dcfmt.converters":
            raise
    else:
        register_convert(sub)
    p = sub.add_parser("info", help="per-tensor statistics of a .dcz file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("validate", help="check files against the .dcz specification")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--no-checksums", action="store_true",
                   help="skip CRC-32 checks (every other rule is still checked)")
    p.set_defaults(func=cmd_validate)
    from .demo import register as register_demo  # imports torch and scikit-learn only when run

    register_demo(sub)
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
    except BrokenPipeError:
        # the reader of our output went away (dcz info | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (DczError, OSError) as exc:
        if args.debug:
            raise
        print(f"dcz: error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
