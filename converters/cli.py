"""``dcz convert IN OUT``: convert checkpoints between .dcz, safetensors, torch and npz.

Registered into the ``dcz`` parser by :func:`register` (``dcfmt/cli.py``
imports this module lazily, so ``dcz info`` and ``dcz validate`` never need
torch).  Exit codes are the ``dcz`` ones: 0 success, 1 invalid or unsafe
input (or a written file that failed verification), 2 usage error (options,
plan file, output extension), 3 I/O error, 4 limit exceeded (zip bombs, huge
headers), 5 unsupported input (fp8/complex tensors, pickled modules, missing
torch).  Errors are one line on stderr; ``dcz --debug convert ...`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..cli import format_bytes
from .errors import ConvertError
from .formats import FORMATS, OUTPUT_FORMATS, open_source, output_format
from .plans import PlanError, is_plan_file, load_plan_file, plan_from_spec

__all__ = ["register", "cmd_convert", "plan_from_args"]

EXIT_OK = 0
EXIT_USAGE = 2

_EPILOG = """\
plans (for .dcz output):
  default            error-bounded: per tensor, the pruning and codebook size that make it
                     smallest while its relative L2 error stays under --max-error (1%)
  --lossless         every tensor bit-exact
  --plan paper       the paper's settings: conv (4-D) 8-bit, fc (2-D) 5-bit codebooks, other
                     tensors lossless; with --sparsity/--quality/--threshold it prunes too
  --plan fixed       one codebook size (--bits, default 5) for every float tensor
  --plan FILE.toml   glob rules per tensor name (converters/README.md, "Plan files")
  --bits/--conv-bits/--fc-bits or a pruning option alone select the paper plan.

examples:
  dcz convert model.safetensors model.dcz
  dcz convert model.safetensors model.dcz --max-error 0.005
  dcz convert model.pt model.dcz --plan paper --quality 0.7 --fc-bits 4
  dcz convert ./llama-shards/ model.dcz --lossless
  dcz convert model.dcz model.safetensors
"""

# CLI destination -> (plan-spec key, flag)
_OPTION_KEYS = {
    "max_error": ("max_error", "--max-error"), "max_bits": ("max_bits", "--max-bits"),
    "no_prune": ("prune", "--no-prune"), "bits": ("bits", "--bits"),
    "conv_bits": ("conv_bits", "--conv-bits"), "fc_bits": ("fc_bits", "--fc-bits"),
    "sparsity": ("sparsity", "--sparsity"), "quality": ("quality", "--quality"),
    "threshold": ("threshold", "--threshold"), "index_bits": ("index_bits", "--index-bits"),
    "codebook_dtype": ("codebook_dtype", "--codebook-dtype"),
}
_PAPER_ONLY = {"bits", "conv_bits", "fc_bits", "sparsity", "quality", "threshold"}
_ALLOWED = {
    "error-bounded": {"max_error", "max_bits", "no_prune", "codebook_dtype", "index_bits"},
    "paper": {"bits", "conv_bits", "fc_bits", "sparsity", "quality", "threshold", "codebook_dtype",
              "index_bits"},
    "fixed": {"bits", "sparsity", "quality", "threshold", "codebook_dtype", "index_bits"},
    "lossless": {"index_bits"},
}


class UsageError(ConvertError):
    """Options that do not fit together (exit code 2)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to the ``dcz`` parser's subparsers."""
    p = subparsers.add_parser(
        "convert", help="convert checkpoints between .dcz, safetensors, torch (.pt) and .npz",
        description="Convert IN to OUT, tensor by tensor. Formats come from the extension and "
        "the content: .dcz, .safetensors, .pt/.pth/.bin (torch state dicts), .npz, or a sharded "
        "checkpoint directory (input only). OUT is written atomically and read back before it "
        "replaces anything; OUT may be IN.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="input file or sharded checkpoint directory")
    p.add_argument("output", metavar="OUT", help="output file")
    g = p.add_argument_group("compression plan (when OUT is .dcz)")
    g.add_argument("--lossless", action="store_true", help="store every tensor exactly")
    g.add_argument("--plan", metavar="NAME|FILE.toml",
                   help="error-bounded (default), paper, fixed, lossless, or a TOML plan file")
    g.add_argument("--max-error", type=float, metavar="E",
                   help="error-bounded: largest relative L2 error per tensor (default 0.01)")
    g.add_argument("--max-bits", type=int, metavar="N",
                   help="error-bounded: largest codebook, 2**N centroids (default 8)")
    g.add_argument("--no-prune", action="store_true", help="error-bounded: do not prune")
    g.add_argument("--bits", type=int, metavar="N",
                   help="codebook bits for conv and fc weights (paper) or all float tensors (fixed)")
    g.add_argument("--conv-bits", type=int, metavar="N", help="codebook bits of 4-D (conv) weights")
    g.add_argument("--fc-bits", type=int, metavar="N", help="codebook bits of 2-D (fc) weights")
    prune = g.add_mutually_exclusive_group()
    prune.add_argument("--sparsity", type=float, metavar="S", help="prune this fraction of weights")
    prune.add_argument("--quality", type=float, metavar="Q",
                       help="prune |w| <= Q * std(w), the paper's per-layer rule")
    prune.add_argument("--threshold", type=float, metavar="T", help="prune |w| <= T")
    g.add_argument("--index-bits", type=int, metavar="B",
                   help="relative-index width for sparse tensors (default: the smallest per tensor)")
    g.add_argument("--codebook-dtype", choices=("float16", "bfloat16", "float32"),
                   help="store centroids in this type (default: the tensor's)")
    p.add_argument("--from", dest="source_format", choices=FORMATS, help="input format (default: "
                   "detected)")
    p.add_argument("--to", dest="target_format", choices=OUTPUT_FORMATS,
                   help="output format (default: from OUT's extension)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="add or replace a user metadata entry (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reading the output back before it replaces OUT")
    p.set_defaults(func=cmd_convert)
    return p


def plan_from_args(args):
    """The :class:`dcfmt.Plan` the options ask for (None: the default error-bounded plan).

    Raises:
        UsageError / PlanError: options that do not fit together or are out of range.
    """
    given = {dest for dest in _OPTION_KEYS
             if getattr(args, dest, None) is not None and getattr(args, dest) is not False}
    if args.lossless:
        if args.plan is not None:
            raise UsageError("--lossless and --plan cannot be combined")
        name = "lossless"
    elif args.plan is not None and is_plan_file(args.plan):
        if given:
            raise UsageError("options " + ", ".join(_OPTION_KEYS[d][1] for d in sorted(given))
                             + " cannot be combined with a plan file; put them in its rules")
        return load_plan_file(args.plan)
    elif args.plan is not None:
        name = args.plan.lower()
        if name not in _ALLOWED:
            raise UsageError(f"unknown plan {args.plan!r}: use error-bounded, paper, fixed, "
                             "lossless, or a .toml plan file")
    else:
        name = "paper" if given & _PAPER_ONLY else "error-bounded"
    wrong = given - _ALLOWED[name]
    if wrong:
        raise UsageError(", ".join(_OPTION_KEYS[d][1] for d in sorted(wrong))
                         + f" cannot be used with the {name} plan"
                         + (" (--lossless)" if args.lossless else ""))
    spec = {"plan": name}
    for dest in given:
        key, _ = _OPTION_KEYS[dest]
        spec[key] = False if dest == "no_prune" else getattr(args, dest)
    if not given and name == "error-bounded":
        return None
    try:
        return plan_from_spec(spec, "options")
    except PlanError as exc:
        # name the flag, not the plan-spec key
        msg = str(exc).replace("options: ", "")
        for dest, (key, flag) in _OPTION_KEYS.items():
            if msg.startswith(key + " "):
                msg = flag + msg[len(key):]
        raise UsageError(msg) from None


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata needs KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _fmt_err(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2e}" if x < 1e-3 or x >= 1e3 or not math.isfinite(x) else f"{x:.4f}"


def print_report(report, out=None) -> None:
    """The per-tensor table and the totals (the paper's Table 1 per tensor)."""
    out = out or sys.stdout
    head = ("tensor", "shape", "dtype", "plan", "encoding", "before", "after", "ratio", "bits/w",
            "rel L2", "max abs")
    rows = []
    numel_total = 0
    for t in report.tensors:
        numel = math.prod(t.shape)
        numel_total += numel
        rows.append((t.name, "x".join(map(str, t.shape)) or "()", t.dtype, t.plan or "-",
                     t.encoding or "-", format_bytes(t.bytes_in), format_bytes(t.bytes_out),
                     f"{t.bytes_in / t.bytes_out:.2f}x" if t.bytes_out else "-",
                     f"{8 * t.bytes_out / numel:.2f}" if numel else "-",
                     _fmt_err(t.rel_error), _fmt_err(t.max_abs_error)))
    b_in = sum(t.bytes_in for t in report.tensors)
    b_out = sum(t.bytes_out for t in report.tensors)
    worst = max((t.rel_error for t in report.tensors if t.rel_error is not None), default=None)
    worst_abs = max((t.max_abs_error for t in report.tensors if t.max_abs_error is not None),
                    default=None)
    rows.append(("total (tensors)", "", "", "", "", format_bytes(b_in), format_bytes(b_out),
                 f"{b_in / b_out:.2f}x" if b_out else "-",
                 f"{8 * b_out / numel_total:.2f}" if numel_total else "-",
                 _fmt_err(worst), _fmt_err(worst_abs)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 5 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(head), file=out)
    print("-" * len(line(head)), file=out)
    for r in rows:
        if r[0].startswith("total (tensors)"):
            print("-" * len(line(head)), file=out)
        print(line(r), file=out)
    lossy = sum(1 for t in report.tensors if t.rel_error is not None)
    print(f"{report.source} ({report.source_format}, {format_bytes(report.input_bytes)}) -> "
          f"{report.target} ({report.target_format}, {format_bytes(report.output_bytes)}): "
          f"{report.ratio:.2f}x, {len(report.tensors)} tensors ({lossy} lossy), "
          f"{report.seconds:.1f} s, {report.tensor_bytes / 1e6 / max(report.seconds, 1e-9):.0f} MB/s"
          + ("" if report.verified else ", not verified"), file=out)
    if report.plan:
        print(f"plan: {report.plan}; bits/w: stored bits per weight; rel L2 = ||w - w'|| / ||w||, "
              "max abs = max |w - w'| (lossy tensors)", file=out)
    if report.aliases:
        tied = ", ".join(f"{a} -> {t}" for a, t in sorted(report.aliases.items())[:6])
        more = f" (+{len(report.aliases) - 6} more)" if len(report.aliases) > 6 else ""
        how = "stored once" if report.target_format in ("dcz", "torch") else \
            "written as copies, recorded in metadata dcfmt.aliases"
        print(f"tied tensors ({how}): {tied}{more}", file=out)


def _progress_bar(total: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc="converting", leave=False, dynamic_ncols=True)


def cmd_convert(args) -> int:
    """Run ``dcz convert``; returns the exit code (errors other than usage go to ``dcz``'s handler)."""
    from .convert import convert_source

    try:
        plan = plan_from_args(args)
        fmt = output_format(args.output, args.target_format)
        metadata = _metadata(args.metadata)
        if fmt != "dcz" and (plan is not None or args.lossless):
            raise UsageError(f"plan options apply when writing .dcz; {args.output} is {fmt}")
    except (UsageError, PlanError) as exc:
        return _usage(args, exc)
    except ConvertError as exc:  # unknown output extension
        return _usage(args, exc)
    with open_source(args.input, args.source_format) as src:
        total = sum(src.info(n).nbytes for n in src.names())
        bar = _progress_bar(total, args.quiet or args.json)

        def progress(name: str, nbytes: int) -> None:
            if bar is not None:
                bar.set_postfix_str(name[-32:], refresh=False)
                bar.update(nbytes)

        try:
            report = convert_source(src, args.output, fmt, plan=plan, metadata=metadata,
                                    verify=not args.no_verify, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK
    if not args.quiet:
        for note in report.notes:
            print(f"dcz: note: {note}", file=sys.stderr)
        print_report(report)
    return EXIT_OK


def _usage(args, exc: Exception) -> int:
    if getattr(args, "debug", False):
        raise exc
    print(f"dcz: error: {exc}", file=sys.stderr)
    return EXIT_USAGE
