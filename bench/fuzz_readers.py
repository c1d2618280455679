"""Fuzz the readers of untrusted input at scale and write the counts to docs/fuzz.md.

    python bench/fuzz_readers.py [--examples 5000]

Runs tests/io/test_fuzz.py (hypothesis) with ``--examples`` inputs per test instead of CI's
150: mutated and random safetensors files, mutated .pt files, random option values for
every job's config, random YAML files and random transition plans. Every input must be
read or refused with geopath's one-line usage error; any other exception fails the run
(exit 1) and is reported by pytest with the input that caused it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, docs_dir  # noqa: E402 (bench/ is on sys.path when run as a script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--docs", default=str(ROOT / "docs"), type=docs_dir)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "tried.json"
        env = {**os.environ, "GEOPATH_FUZZ_EXAMPLES": str(args.examples), "GEOPATH_FUZZ_REPORT": str(report)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/io/test_fuzz.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        tried = json.loads(report.read_text()) if report.exists() else {}
    ok = proc.returncode == 0
    lines = ["# Fuzzing the input readers", "",
             f"Produced by `python bench/fuzz_readers.py --examples {args.examples}` on "
             f"{platform.machine()}, Python {platform.python_version()} ({seconds:.0f} s). Property: every input is read or",
             "refused with geopath's one-line usage error (exit code 2); no other exception, no hang.", "",
             "| reader | inputs tried | result |", "|---|---:|---|"]
    for name, n in sorted(tried.items()):
        lines.append(f"| {name} | {n:,} | {'no crash' if ok else 'see below'} |")
    lines += ["", f"Total: {sum(tried.values()):,} inputs, {'no crash' if ok else 'FAILURES'}.", "",
              "Inputs: valid small checkpoints with bit flips, truncations, replaced or spliced JSON headers and lying",
              "header lengths; random bytes; `.pt` files cut, flipped and padded; random values (nulls, NaN, ±inf, huge",
              "integers, nested lists and maps, unknown keys) for every field of every job's options; random text and",
              "bytes as YAML; random transition plans. The same tests run in CI with 150 inputs each."]
    if not ok:
        lines += ["", "```", proc.stdout[-4000:], "```"]
    Path(args.docs, "fuzz.md").write_text("\n".join(lines) + "\n")
    print(f"fuzz_readers: {sum(tried.values()):,} inputs, {'no crash' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
