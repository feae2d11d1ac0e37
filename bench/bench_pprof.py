"""Benchmark analysis.pprof against `go tool pprof -top` on the same profile, in one run.

Measures, each `--repeat` times, and prints medians and ratios:
  * go tool pprof -top over all functions (`-nodecount=100000 -nodefraction=0`), as a process;
  * read_profile + top_table in this process (the decoder and table alone);
  * the same in a fresh Python process, interpreter and pandas import included, which is
    what a command-line user waits for, like the go process.

Usage: python bench/bench_pprof.py [--repeat N] [PROFILE]
(default PROFILE: large.cpu from the shared reference data beside the repository).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = REPO_ROOT.parent / "shared" / "data" / "pprof" / "large.cpu"

sys.path.insert(0, str(REPO_ROOT))
from analysis.pprof import read_profile, top_table  # noqa: E402

PYTHON_SNIPPET = (
    "import sys; from analysis.pprof import read_profile, top_table; "
    "top_table(read_profile(sys.argv[1]))"
)


def time_call(function, repeat: int) -> list[float]:
    durations = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return durations


def run_quietly(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement")
    args = parser.parse_args(argv)

    go = shutil.which("go")
    if go is None:
        parser.error("`go` not found: install golang-go, the peer this benchmark compares with")
    profile = str(args.profile)

    go_top = [go, "tool", "pprof", "-top", "-nodecount=100000", "-nodefraction=0", profile]
    go_top_nosym = go_top[:3] + ["-symbolize=none"] + go_top[3:]
    ours_process = [sys.executable, "-c", PYTHON_SNIPPET, profile]

    table = top_table(read_profile(profile))
    print(f"profile: {profile} ({args.profile.stat().st_size:,} bytes, "
          f"{len(table):,} functions)")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, repeat={args.repeat}, medians in seconds")

    # Round robin, so that load from other processes hits every measurement alike.
    commands = {
        "go tool pprof -top (process)": lambda: run_quietly(go_top),
        "go tool pprof -top -symbolize=none (process)": lambda: run_quietly(go_top_nosym),
        "read_profile + top_table (in process)": lambda: top_table(read_profile(profile)),
        "read_profile + top_table (python process)": lambda: run_quietly(ours_process),
    }
    results: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, command in commands.items():
            results[name].extend(time_call(command, 1))

    baseline = statistics.median(results["go tool pprof -top (process)"])
    for name, durations in results.items():
        median = statistics.median(durations)
        print(f"  {name:48s} {median:7.3f} s   x{median / baseline:5.2f} of go tool pprof")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
