"""How long the command line takes to answer: `finesearch --help`, a subcommand's help, `--version` and a typo.

    python bench/bench_cli.py [--repeats 10]

Each is a fresh process of the installed console script (what a user waits for), timed end to end; the
figures are medians. Heavy modules (torch, open_clip, FastAPI) are imported only by the commands that need
them, so none of these should wait for them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    exe = shutil.which("finesearch") or str(Path(sys.executable).with_name("finesearch"))
    cases = {"finesearch --help": ["--help"], "finesearch index images --help": ["index", "images", "--help"],
             "finesearch --version": ["--version"], "finesearch serv (typo)": ["serv"]}
    print(f"{'command':34s} median s ({a.repeats} runs)")
    for name, argv in cases.items():
        print(f"{name:34s} {timed([exe, *argv], a.repeats):.3f}")
    print(f"{'python -c pass (interpreter floor)':34s} {timed([sys.executable, '-c', 'pass'], a.repeats):.3f}")


if __name__ == "__main__":
    main()
