"""``dcz demo``: the paper's LeNet experiments (Tables 2 and 3), end to end, on real data.

Trains LeNet-300-100 (64-300-100-10 for 8x8 images) and a LeNet-5 adapted to
8x8 inputs on scikit-learn's bundled handwritten digits (1,797 images, no
download; stratified 75/25 split), then runs the Deep Compression pipeline:
iterative magnitude pruning with retraining, k-means weight sharing (linear
initialisation) with centroid fine-tuning, and Huffman coding into a
``.dcz`` file.  The model is then reloaded *from the file* into a fresh
network and evaluated, and the per-layer accounting is printed in the form of
the paper's tables, in two accountings:

* **paper**: what the paper counts -- codebooks, Huffman-coded cluster indices
  and Huffman-coded relative (sparse) indices, for every tensor (biases
  included, they have codebooks too);
* **file**: the whole ``.dcz`` file on disk (headers, code tables, chunk
  tables, recipes, index, checksums).

Everything is seeded and runs with deterministic algorithms on a fixed number
of threads, so two runs print the same.  Needs torch and scikit-learn.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time

import numpy as np

__all__ = ["NetSpec", "NETWORKS", "load_digits_split", "run_network", "register", "main"]


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One experiment: the network and the budget of each stage.

    Attributes:
        key / title: command-line name and display name.
        layers: the weight layers, in order (module names).
        epochs: training of the uncompressed baseline.
        sparsity: final fraction pruned, per layer.
        prune_steps: iterative pruning steps (cubic schedule).
        retrain_epochs: retraining after each pruning step.
        bits: codebook bits per weight layer; ``bias_bits`` for every bias.
        finetune_epochs: centroid fine-tuning after weight sharing.
    """

    key: str
    title: str
    layers: tuple[str, ...]
    epochs: int
    lr: float
    sparsity: dict
    prune_steps: int
    retrain_epochs: int
    retrain_lr: float
    bits: dict
    bias_bits: int
    finetune_epochs: int
    finetune_lr: float
    batch: int = 32
    weight_decay: float = 0.0

    def scaled(self, scale: float) -> "NetSpec":
        """The same experiment with every epoch count multiplied by ``scale`` (at least 1)."""
        s = lambda n: max(1, int(round(n * scale)))  # noqa: E731
        return dataclasses.replace(self, epochs=s(self.epochs), retrain_epochs=s(self.retrain_epochs),
                                   finetune_epochs=s(self.finetune_epochs),
                                   prune_steps=min(self.prune_steps, s(self.prune_steps)))


NETWORKS = {
    "lenet-300-100": NetSpec(
        key="lenet-300-100", title="LeNet-300-100", layers=("ip1", "ip2", "ip3"),
        epochs=40, lr=1e-3,
        sparsity={"ip1.weight": 0.93, "ip2.weight": 0.93, "ip3.weight": 0.75},
        prune_steps=5, retrain_epochs=8, retrain_lr=1e-3,
        bits={"ip1.weight": 4, "ip2.weight": 4, "ip3.weight": 4}, bias_bits=4,
        finetune_epochs=10, finetune_lr=1e-4,
    ),
    "lenet-5": NetSpec(
        key="lenet-5", title="LeNet-5", layers=("conv1", "conv2", "ip1", "ip2"),
        epochs=30, lr=1e-3,
        sparsity={"conv1.weight": 0.4, "conv2.weight": 0.88, "ip1.weight": 0.94, "ip2.weight": 0.8},
        prune_steps=3, retrain_epochs=8, retrain_lr=1e-3,
        bits={"conv1.weight": 5, "conv2.weight": 4, "ip1.weight": 4, "ip2.weight": 4}, bias_bits=4,
        finetune_epochs=8, finetune_lr=1e-4,
    ),
}


# ---------------------------------------------------------------------------
# Data and models
# ---------------------------------------------------------------------------


def load_digits_split(seed: int):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], stratified 75/25 split.

    Returns ``(x_train, y_train, x_test, y_test)`` as numpy arrays (float32
    images of shape (n, 64), int64 labels).  Reads only files shipped with
    scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dcz demo needs scikit-learn (pip install 'dcfmt[demo]')") from exc
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def build(key: str):
    """A fresh network (module names match the paper's tables: ip = inner product)."""
    import torch
    from torch import nn

    if key == "lenet-300-100":
        class LeNet300100(nn.Module):
            def __init__(self):
                super().__init__()
                self.ip1 = nn.Linear(64, 300)
                self.ip2 = nn.Linear(300, 100)
                self.ip3 = nn.Linear(100, 10)

            def forward(self, x):
                x = torch.relu(self.ip1(x.reshape(len(x), 64)))
                x = torch.relu(self.ip2(x))
                return self.ip3(x)

        return LeNet300100()
    if key == "lenet-5":
        class LeNet5(nn.Module):
            # Caffe's LeNet-5 (20 and 50 5x5 filters, 500 hidden units), padded for 8x8 inputs
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 20, 5, padding=2)
                self.conv2 = nn.Conv2d(20, 50, 5, padding=2)
                self.ip1 = nn.Linear(200, 500)
                self.ip2 = nn.Linear(500, 10)

            def forward(self, x):
                x = x.reshape(len(x), 1, 8, 8)
                x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
                x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
                x = torch.relu(self.ip1(x.reshape(len(x), 200)))
                return self.ip2(x)

        return LeNet5()
    raise KeyError(key)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _fit(model, optimizer, x, y, epochs: int, batch: int, generator) -> None:
    """Mini-batch training, the batches in an order drawn from the seeded ``generator``."""
    import torch
    from torch.nn import functional as F

    model.train()
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()


def _accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean()) * 100.0


@dataclasses.dataclass
class Row:
    """Accounting of one tensor, read back from the file (bit counts are totals)."""

    layer: str
    weights: int              # elements
    kept: int                 # non-zero after pruning
    coded: int                # cluster indices coded (kept ones, or all in the dense layout)
    idx_width: int            # fixed-width cluster index bits, ceil(log2 k)
    idx_bits: int             # Huffman payload of the cluster indices
    pos_width: int            # relative index width b (0: dense layout)
    pos_entries: int          # relative index entries, fillers included
    pos_bits: int             # Huffman payload of the relative index (bitmap: its bits)
    book_bits: int            # the codebook
    raw_bits: int             # raw values (a tensor without a codebook)
    record_bytes: int         # the whole record on disk
    before_bits: int          # the tensor at 32 bits per element

    @property
    def sparse(self) -> bool:
        return self.pos_width > 0

    @property
    def bits_pq(self) -> int:
        """Pruning + quantization, fixed-width indices (the paper's P+Q)."""
        return (self.coded * self.idx_width + self.pos_entries * self.pos_width
                + self.book_bits + self.raw_bits)

    @property
    def bits_pqh(self) -> int:
        """Pruning + quantization + Huffman (the paper's P+Q+H): the paper's accounting."""
        return self.idx_bits + self.pos_bits + self.book_bits + self.raw_bits


def _rows(path: str) -> tuple[list[Row], int]:
    """Per-tensor accounting read back from the file; and the file's size."""
    import dcfmt
    from dcfmt.constants import Layout, Values

    rows = []
    with dcfmt.open(path) as f:
        for name in f.keys():
            rec = f.record(name)
            k = len(rec.codebook) if rec.values is Values.CODEBOOK else 0
            coded = rec.nnz if k else 0
            width = max(1, math.ceil(math.log2(k))) if k > 1 else 0
            idx_bits = rec.indices.bit_len if (k > 1 and rec.indices is not None) else 0
            book_bits = k * rec.codebook_dtype.itemsize * 8 if k else 0
            raw_bits = rec.nnz * rec.dtype.itemsize * 8 if rec.values is Values.RAW else 0
            pos_width = entries = pos_bits = 0
            if rec.layout is Layout.RELATIVE:
                pos_width = rec.relative.bits
                entries = rec.relative.stream.n_symbols
                pos_bits = rec.relative.stream.bit_len
            elif rec.layout is Layout.BITMAP:
                pos_width, entries, pos_bits = 1, rec.numel, rec.numel
            kept = int(np.count_nonzero(f[name]))
            rows.append(Row(name, rec.numel, kept, coded, width, idx_bits, pos_width, entries,
                            pos_bits, book_bits, raw_bits, rec.size, rec.numel * 32))
    return rows, os.path.getsize(path)


@dataclasses.dataclass
class Result:
    """What one network's run measured."""

    spec: NetSpec
    seed: int
    acc_before: float
    acc_after: float
    rows: list
    file_bytes: int
    path: str
    seconds: float
    exact: bool

    @property
    def before_bytes(self) -> int:
        return sum(r.before_bits for r in self.rows) // 8

    @property
    def paper_bytes(self) -> float:
        return sum(r.bits_pqh for r in self.rows) / 8

    @property
    def paper_ratio(self) -> float:
        return self.before_bytes / self.paper_bytes

    @property
    def file_ratio(self) -> float:
        return self.before_bytes / self.file_bytes


def run_network(spec: NetSpec, data, seed: int, path: str, *, log=None) -> Result:
    """Train, compress, save to ``path``, reload from the file and evaluate one network."""
    import torch

    from . import train as dct

    start = time.perf_counter()
    say = log or (lambda *a: None)
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in data)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build(spec.key)

    # 1. the uncompressed baseline
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    _fit(model, opt, x_tr, y_tr, spec.epochs, spec.batch, gen)
    acc_before = _accuracy(model, x_te, y_te)
    say(f"{spec.title}: baseline {acc_before:.2f}%")

    # 2. iterative pruning, retraining with the masks
    pruner = dct.Pruner(model, names=[f"{layer}.weight" for layer in spec.layers])
    opt = torch.optim.Adam(model.parameters(), lr=spec.retrain_lr)
    pruner.attach(opt)
    for step in dct.sparsity_schedule(spec.sparsity, spec.prune_steps):
        pruner.prune(sparsity=step)
        _fit(model, opt, x_tr, y_tr, spec.retrain_epochs, spec.batch, gen)
    pruner.detach()
    say(f"{spec.title}: pruned + retrained {_accuracy(model, x_te, y_te):.2f}%")

    # 3. weight sharing; 4. centroid fine-tuning (biases get small codebooks too)
    bits = dict(spec.bits)
    bits.update({f"{layer}.bias": spec.bias_bits for layer in spec.layers})
    dct.share_weights(model, bits, masks=pruner, codebook_dtype="float16")
    say(f"{spec.title}: quantized {_accuracy(model, x_te, y_te):.2f}%")
    opt = torch.optim.Adam(model.parameters(), lr=spec.finetune_lr)
    _fit(model, opt, x_tr, y_tr, spec.finetune_epochs, spec.batch, gen)
    say(f"{spec.title}: centroids fine-tuned {_accuracy(model, x_te, y_te):.2f}%")

    # 5. Huffman coding into .dcz; 6. reload from the file into a fresh model
    dct.save(model, path, pruner=pruner, recipes="compact",
             metadata={"model": spec.title, "data": "sklearn digits 8x8", "seed": str(seed)})
    fresh = dct.load_model(build(spec.key), path)
    acc_after = _accuracy(fresh, x_te, y_te)
    trained = dct.logical_state_dict(model)
    exact = all(torch.equal(trained[k], v) for k, v in fresh.state_dict().items())
    rows, size = _rows(path)
    return Result(spec, seed, acc_before, acc_after, rows, size, path,
                  time.perf_counter() - start, exact)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _kb(nbytes: float) -> str:
    return f"{nbytes / 1000:.1f} KB" if nbytes >= 1000 else f"{nbytes:.0f} B"


def _pct(bits: float, before: float) -> str:
    return f"{100 * bits / before:.2f}%" if before else "-"


def _table(head, rows, left=1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    line = fmt(head)
    out = [line, "-" * len(line)]
    for r in rows[:-1]:
        out.append(fmt(r))
    out.append("-" * len(line))
    out.append(fmt(rows[-1]))
    return out


def _per(bits: float, n: int) -> str:
    return f"{bits / n:.1f}" if n else "-"


def report(res: Result) -> str:
    """The paper-style table (Tables 2 and 3) for one network, with both accountings."""
    weights = [r for r in res.rows if not r.layer.endswith(".bias")]
    biases = [r for r in res.rows if r.layer.endswith(".bias")]
    head = ("layer", "#weights", "weights%(P)", "weight bits(P+Q)", "weight bits(P+Q+H)",
            "index bits(P+Q)", "index bits(P+Q+H)", "rate(P+Q)", "rate(P+Q+H)", "file bytes")

    def line(label, rows, kept_text=None):
        n = sum(r.weights for r in rows)
        kept = sum(r.kept for r in rows)
        coded = sum(r.coded for r in rows)
        sp = [r for r in rows if r.sparse]
        sp_kept = sum(r.kept for r in sp)
        before = sum(r.before_bits for r in rows)
        pq, pqh = sum(r.bits_pq for r in rows), sum(r.bits_pqh for r in rows)
        total = label == "total"
        return (label, f"{n:,}", kept_text or f"{100 * kept / n:.1f}%",
                _per(sum(r.coded * r.idx_width for r in rows), coded),
                _per(sum(r.idx_bits for r in rows), coded),
                _per(sum(r.kept * r.pos_width for r in sp), sp_kept) if sp else "-",
                _per(sum(r.pos_bits for r in sp), sp_kept) if sp else "-",
                _pct(pq, before) + (f" ({before / pq:.0f}x)" if total else ""),
                _pct(pqh, before) + (f" ({before / pqh:.0f}x)" if total else ""),
                f"{res.file_bytes if total else sum(r.record_bytes for r in rows):,}")

    table = [line(r.layer.removesuffix(".weight"), [r]) for r in weights]
    if biases:
        table.append(line("biases", biases))
    n_all, kept_all = sum(r.weights for r in res.rows), sum(r.kept for r in res.rows)
    table.append(line("total", res.rows, f"{100 * kept_all / n_all:.1f}% ({n_all / kept_all:.0f}x)"))
    n_w = sum(r.weights for r in weights)
    before = sum(r.before_bits for r in res.rows)
    pqh = sum(r.bits_pqh for r in res.rows)
    outside = res.file_bytes - sum(r.record_bytes for r in res.rows)
    n_b = sum(r.weights for r in biases)
    out = [f"{res.spec.title} on sklearn digits (8x8), seed {res.seed}: {len(weights)} layers, "
           f"{n_w:,} weights + {n_b:,} biases"]
    out += ["  " + text for text in _table(head, table)]
    out += [
        "  P: pruning, Q: quantization (weight sharing), H: Huffman coding.",
        "  weights%: kept after pruning.  weight bits: per coded cluster index (a dense layout also",
        "  codes the pruned zeros).  index bits: relative sparse index per kept weight, fillers",
        "  included.  rate: compressed / 32-bit size, float16 codebooks included.  file bytes: the",
        "  tensor's records (headers, code tables, chunk tables, recipe, CRC); total: the whole file",
        f"  ({outside} B outside the tensor records: file header, metadata, index, trailer).",
        f"  size before: {_kb(before / 8)} (32-bit weights and biases)",
        f"  after, paper's accounting (codebooks + Huffman-coded cluster indices + Huffman-coded "
        f"sparse indices): {_kb(pqh / 8)} -> {before / pqh:.1f}x",
        f"  after, whole .dcz file on disk: {_kb(res.file_bytes)} -> {before / 8 / res.file_bytes:.1f}x",
        f"  test accuracy: {res.acc_before:.2f}% before -> {res.acc_after:.2f}% after, reloaded from "
        f"the file ({res.acc_after - res.acc_before:+.2f} points; top-1 error "
        f"{100 - res.acc_before:.2f}% -> {100 - res.acc_after:.2f}%)",
        f"  reloaded weights equal the trained shared weights bit for bit: "
        f"{'yes' if res.exact else 'NO'}",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _setup(threads: int):
    import torch

    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return state


def _restore(state) -> None:
    import torch

    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1])


def run(args) -> int:
    """``dcz demo`` (see the module docstring)."""
    for module, hint in (("torch", "pip install torch==2.13.0"), ("sklearn", "pip install scikit-learn")):
        try:
            __import__(module)
        except ImportError:
            print(f"dcz demo needs {module}: {hint}", file=sys.stderr)
            return 2
    keys = list(NETWORKS) if args.net == "all" else [args.net]
    seeds = args.seeds if args.seeds else [args.seed]
    state = _setup(args.threads)
    out = args.out
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="dcz-demo-")
        out = tmp.name
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    results = []
    try:
        for seed in seeds:
            data = load_digits_split(seed)
            for key in keys:
                spec = NETWORKS[key].scaled(args.scale) if args.scale != 1 else NETWORKS[key]
                name = f"{key}.dcz" if len(seeds) == 1 else f"{key}-seed{seed}.dcz"
                res = run_network(spec, data, seed, os.path.join(out, name), log=log)
                results.append(res)
                print(report(res))
                print()
    finally:
        _restore(state)
        if tmp is not None:
            tmp.cleanup()
    if len(seeds) > 1:
        print(f"mean over seeds {', '.join(map(str, seeds))}:")
        for key in keys:
            rs = [r for r in results if r.spec.key == key]
            m = lambda f: sum(f(r) for r in rs) / len(rs)  # noqa: E731
            print(f"  {rs[0].spec.title}: paper {m(lambda r: r.paper_ratio):.1f}x, file "
                  f"{m(lambda r: r.file_ratio):.1f}x, accuracy {m(lambda r: r.acc_before):.2f}% -> "
                  f"{m(lambda r: r.acc_after):.2f}% ({m(lambda r: r.acc_after - r.acc_before):+.2f} points)")
    if args.out:
        print(f"files kept in {args.out}: " + ", ".join(os.path.basename(r.path) for r in results)
              + " (see `dcz info FILE`)")
    if args.timing:
        print(f"took {time.perf_counter() - start:.1f} s")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to a ``dcz`` argument parser."""
    p = subparsers.add_parser(
        "demo", help="reproduce the paper's LeNet results on scikit-learn's digits",
        description="Train LeNet-300-100 and LeNet-5 on scikit-learn's bundled 8x8 digits, "
                    "prune, retrain, quantize, fine-tune centroids, Huffman-code into .dcz, "
                    "reload from the file and print the paper's Tables 2 and 3.")
    p.add_argument("--out", metavar="DIR", help="keep the .dcz files in DIR")
    p.add_argument("--net", choices=["all", *NETWORKS], default="all", help="which network (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, init and data order")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run several seeds and print the means")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest for these small networks, and the "
                        "results do not depend on the number of cores)")
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)  # epochs x scale
    p.add_argument("--timing", action="store_true", help="print the run time")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m dcfmt.demo``."""
    parser = argparse.ArgumentParser(prog="dcz")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
