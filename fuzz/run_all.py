"""Run every harness for a bounded time; exit non-zero if any of them finds a bug.

    python fuzz/run_all.py --seconds 20          # what CI runs
    python fuzz/run_all.py --seconds 3600 -j 2   # a longer local campaign

Prints the executions per harness.  A finding leaves libFuzzer's crash-* file
in fuzz/artifacts/ and the harness's output on stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESSES = ["fuzz_load", "fuzz_stream", "fuzz_lazy", "fuzz_validate", "fuzz_huffman",
             "fuzz_header", "fuzz_roundtrip"]


def run_one(name: str, seconds: int) -> tuple[str, int, int, str]:
    artifacts = os.path.join(HERE, "artifacts") + os.sep
    os.makedirs(artifacts, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE,
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), f"-max_total_time={seconds}",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}{name}-", "-rss_limit_mb=4096"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds * 4 + 120)
    m = re.search(r"stat::number_of_executed_units: (\d+)", proc.stderr)
    return name, proc.returncode, int(m.group(1)) if m else 0, proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="time per harness")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="harnesses run at once")
    parser.add_argument("harness", nargs="*", default=HARNESSES)
    args = parser.parse_args()
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, execs, err in pool.map(lambda h: run_one(h, args.seconds), args.harness):
            status = "ok" if rc == 0 else f"FINDING (exit {rc})"
            print(f"{name:16s} {execs:>10,d} executions  {status}", flush=True)
            if rc != 0:
                failed += 1
                print(err[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
