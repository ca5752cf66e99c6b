"""Benchmark of ``dcz convert`` on a synthetic safetensors checkpoint.

    python -m dcfmt.converters.bench                 # 2 GB checkpoint under $TMPDIR
    python -m dcfmt.converters.bench --size-mb 512 --dir /tmp --keep

The checkpoint holds many 2-D float32 tensors drawn from a normal
distribution (std 0.02, like a transformer's weights) with shapes cycling
through 4096x4096 (64 MiB, the largest), 4096x1024, 1024x4096, 2048x2048,
1024x1024 and 512x2048, written with ``safetensors.numpy.save_file``.  Each
conversion runs in a fresh subprocess that reports its wall time and its
peak resident memory (``VmHWM`` from ``/proc/self/status``), so the figures
are those of a real ``dcz convert`` process:

* default plan (error-bounded, 1 %) and ``--lossless``: seconds, MB/s of
  float32 input, output size and ratio, peak RSS against the target
  ``3 x largest tensor + 300 MB``;
* lossless size against the target ``input x 1.001 + 4 KB``;
* the .dcz back to safetensors;
* with ``--no-verify-too``, the lossy conversion without the read-back check.

Wall time depends on what else the machine runs: the load average is printed,
and on a virtual machine the share of CPU time the hypervisor gave to other
guests during each run ("steal", from ``/proc/stat``).  CPU seconds of the
converting process are printed too.  The encoder splits its work over
``DCZ_THREADS`` threads (default: the usable CPUs); the bytes written do not
depend on it.

Files are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = [(4096, 4096), (4096, 1024), (1024, 4096), (2048, 2048), (1024, 1024), (512, 2048)]


def make_checkpoint(path: str, size_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write the synthetic checkpoint; returns (tensor bytes, largest tensor bytes)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    total = 0
    i = 0
    while total < size_bytes:
        shape = SHAPES[i % len(SHAPES)]
        nbytes = shape[0] * shape[1] * 4
        if total + nbytes > size_bytes and tensors:
            shape = (max(1, (size_bytes - total) // (4 * 1024)), 1024)
            nbytes = shape[0] * shape[1] * 4
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.02)
        tensors[f"layers.{i // len(SHAPES)}.w{i % len(SHAPES)}.weight"] = w
        total += nbytes
        i += 1
    largest = max(t.nbytes for t in tensors.values())
    save_file(tensors, path, metadata={"format": "np", "generator": "dcfmt.converters.bench"})
    return total, largest


def _child(argv: list[str]) -> None:
    """Run one conversion in this process and print a JSON line of figures."""
    from dcfmt.cli import main

    t = time.perf_counter()
    cpu = time.process_time()
    code = main(["convert", *argv, "--quiet"])
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    with open("/proc/self/status") as f:
        status = f.read()
    hwm_kb = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"exit": code, "seconds": seconds, "cpu_seconds": cpu,
                      "peak_rss": hwm_kb * 1024}))


def run(argv: list[str]) -> dict:
    """Convert in a fresh interpreter; returns its figures (``steal``: see :func:`steal_share`)."""
    from dcfmt.bench import cpu_ticks, steal_share

    ticks = cpu_ticks()
    out = subprocess.run([sys.executable, "-m", "dcfmt.converters.bench", "--child", *argv],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"conversion {argv} failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["steal"] = steal_share(ticks, cpu_ticks())
    if result["exit"] != 0:
        raise SystemExit(f"conversion {argv} exited {result['exit']}:\n{out.stderr}")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m dcfmt.converters.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=2048, help="checkpoint size (default 2048)")
    ap.add_argument("--dir", default=None, help="where to write the files (default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--skip-lossless", action="store_true")
    ap.add_argument("--no-verify-too", action="store_true",
                    help="also time the lossy conversion without the read-back check")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="dcz-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "model.safetensors")
        t = time.perf_counter()
        total, largest = make_checkpoint(src, args.size_mb << 20)
        in_bytes = os.path.getsize(src)
        print(f"checkpoint: {in_bytes / 1e6:.0f} MB, largest tensor {largest / 2**20:.0f} MiB "
              f"(generated in {time.perf_counter() - t:.0f} s)")
        mem_limit = 3 * largest + 300e6
        rows = []

        def report(label, argv, out_path, limit_bytes=None):
            r = run(argv)
            size = os.path.getsize(out_path)
            mbs = total / 1e6 / r["seconds"]
            ok_mem = r["peak_rss"] <= mem_limit
            line = (f"{label:<36} {r['seconds']:6.1f} s {mbs:6.1f} MB/s "
                    f"(cpu {r['cpu_seconds']:5.1f} s, {total / 1e6 / r['cpu_seconds']:5.1f} MB/s)  "
                    f"out {size / 1e6:7.1f} MB ({in_bytes / size:4.2f}x)  "
                    f"peak RSS {r['peak_rss'] / 1e6:4.0f} MB "
                    f"(limit {mem_limit / 1e6:.0f}: {'ok' if ok_mem else 'OVER'})")
            if r["steal"] is not None:
                line += f"  steal {100 * r['steal']:.0f}%"
            if limit_bytes is not None:
                line += f"  +{size - in_bytes} bytes (limit +{limit_bytes - in_bytes:.0f}: " + \
                    ("ok)" if size <= limit_bytes else "OVER)")
            print(line, flush=True)
            rows.append({"label": label, **r, "output_bytes": size, "mb_per_s": mbs,
                         "memory_ok": ok_mem})

        from dcfmt import parallel

        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
              f"encoder threads: {parallel.threads()} (DCZ_THREADS)")
        lossy = os.path.join(work, "lossy.dcz")
        report("safetensors -> dcz (error-bounded)", [src, lossy], lossy)
        if args.no_verify_too:
            report("  the same with --no-verify", [src, lossy, "--no-verify"], lossy)
        if not args.skip_lossless:
            lossless = os.path.join(work, "lossless.dcz")
            report("safetensors -> dcz (--lossless)", [src, lossless, "--lossless"], lossless,
                   limit_bytes=in_bytes * 1.001 + 4096)
        back = os.path.join(work, "back.safetensors")
        report("dcz (error-bounded) -> safetensors", [lossy, back], back)
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
