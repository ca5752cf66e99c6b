"""Benchmarks of the codec: ``python -m dcfmt.bench`` prints tables.

Two tables:

1. Huffman streams alone: encode and decode speed in millions of symbols per
   second, bits per symbol against the empirical Shannon entropy of the coded
   symbols (the overhead includes the code table and chunk offsets).
2. Whole tensors of float32 weights through a plan: compression ratio, encode
   and decode throughput in MB/s of float32, and peak traced memory of decoding.

Numbers depend on the machine; this prints them, it never judges them.
Use ``--quick`` for a fast run, ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import sys
import time
import tracemalloc

import numpy as np

from . import huffman
from .binary import Cursor


def _best(fn, repeat: int) -> tuple[float, object]:
    best = math.inf
    out = None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _entropy(symbols: np.ndarray, alphabet: int) -> float:
    counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _gaussian_indices(rng, n: int, k: int) -> np.ndarray:
    """Cluster indices as k-means on Gaussian weights produces them (linear init)."""
    w = rng.normal(size=n)
    edges = np.linspace(w.min(), w.max(), k + 1)[1:-1]
    return np.searchsorted(edges, w).astype(np.int64)


def _gap_symbols(rng, n: int, density: float, bits: int) -> np.ndarray:
    from .sparse import relative_symbols

    numel = int(n / density)
    pos = np.flatnonzero(rng.random(numel) < density)
    return relative_symbols(pos, bits).astype(np.int64)


def huffman_table(sizes, repeat: int, seed: int = 0) -> list[dict]:
    """Encode/decode speed and bits per symbol of Huffman streams."""
    rng = np.random.default_rng(seed)
    rows = []
    cases = []
    for n in sizes:
        for k in (16, 32, 256):
            cases.append((f"indices k={k}", n, k, _gaussian_indices(rng, n, k)))
        cases.append(("rel. index b=5, 8% kept", n, 32, _gap_symbols(rng, n, 0.08, 5)))
    for label, n, alphabet, sym in cases:
        t_enc, data = _best(lambda: huffman.encode_stream(sym, alphabet), repeat)
        stream = huffman.parse_stream(Cursor(data), alphabet, "bench")
        t_dec, out = _best(lambda: huffman.decode(stream), repeat)
        assert np.array_equal(out, sym)
        n_sym = len(sym)
        h = _entropy(sym, alphabet)
        bps = 8 * len(data) / n_sym
        rows.append({
            "stream": label, "symbols": n_sym, "max_len": stream.max_len,
            "enc_Msym_s": n_sym / t_enc / 1e6, "dec_Msym_s": n_sym / t_dec / 1e6,
            "payload_bps": stream.bit_len / n_sym, "total_bps": bps, "entropy_bps": h,
            "over_entropy_pct": 100 * (bps / h - 1) if h else 0.0,
        })
    return rows


def tensor_table(numel: int, repeat: int, seed: int = 0) -> list[dict]:
    """Whole-tensor compression of float32 weights under several plans."""
    from . import api
    from .plan import ErrorBoundedPlan, FixedPlan, LosslessPlan
    from .reader import Reader

    rng = np.random.default_rng(seed)
    side = int(math.sqrt(numel))
    w = (rng.normal(size=(side, numel // side)) * 0.05).astype(np.float32)
    pruned = w.copy()
    pruned[np.abs(pruned) < np.quantile(np.abs(pruned), 0.9)] = 0
    cases = [
        ("lossless", {"w": w}, LosslessPlan()),
        ("4-bit codebook", {"w": w}, FixedPlan(bits=4)),
        ("8-bit codebook", {"w": w}, FixedPlan(bits=8)),
        ("error-bounded 1%", {"w": w}, ErrorBoundedPlan()),
        ("90% pruned, 5-bit", {"w": pruned}, FixedPlan(bits=5)),
    ]
    rows = []
    mb = w.nbytes / 1e6
    for label, tensors, plan in cases:
        def enc():
            buf = io.BytesIO()
            api.save(tensors, buf, plan=plan)
            return buf.getvalue()

        t_enc, data = _best(enc, max(1, repeat - 1))

        def dec():
            with Reader(data) as r:
                return dict(r)

        t_dec, out = _best(dec, repeat)
        gc.collect()
        tracemalloc.start()
        dec()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({
            "plan": label, "weights": w.size, "ratio": w.nbytes / len(data),
            "bits_per_weight": 8 * len(data) / w.size,
            "enc_MB_s": mb / t_enc, "dec_MB_s": mb / t_dec,
            "dec_peak_MB": peak / 1e6, "dec_peak_over_output": peak / w.nbytes,
        })
    return rows


def _print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    head = [c[1] for c in columns]
    cells = [[format(r[c[0]], c[2]) if c[2] else str(r[c[0]]) for c in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for c in cells:
        print("  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcfmt.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    sizes = [10**5, 10**6] if args.quick else [10**6, 10**7]
    repeat = 1 if args.quick else 3
    numel = 1 << 20 if args.quick else 1 << 24
    hrows = huffman_table(sizes, repeat)
    trows = tensor_table(numel, repeat)
    if args.json:
        print(json.dumps({"huffman": hrows, "tensors": trows}, indent=2))
        return 0
    print("Huffman streams (bits per symbol include the code table and chunk offsets)")
    _print_table(hrows, [("stream", "stream", ""), ("symbols", "symbols", ",d"),
                         ("max_len", "max len", "d"),
                         ("enc_Msym_s", "enc Msym/s", ".1f"), ("dec_Msym_s", "dec Msym/s", ".1f"),
                         ("total_bps", "bits/sym", ".4f"), ("entropy_bps", "entropy", ".4f"),
                         ("over_entropy_pct", "over H %", ".2f")])
    print()
    print(f"Tensors: {numel:,} float32 weights (N(0, 0.05^2)), whole .dcz file")
    _print_table(trows, [("plan", "plan", ""), ("ratio", "ratio", ".2f"),
                         ("bits_per_weight", "bits/weight", ".3f"),
                         ("enc_MB_s", "enc MB/s", ".1f"), ("dec_MB_s", "dec MB/s", ".1f"),
                         ("dec_peak_MB", "dec peak MB", ".1f"),
                         ("dec_peak_over_output", "peak/output", ".2f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
