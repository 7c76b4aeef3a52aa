"""How fast does `ps --help` answer? (it runs at the top of every CI step)

Wall time of the installed console script `.venv/bin/ps --help` against the floor any click CLI pays,
`python -c "import click"` with the same interpreter, in the same run. The two are interleaved (baseline,
ps, baseline, ps, ...) so load from other work on the machine hits both alike; the figure is the ratio of
the medians. Goal: <= 1.5x.

Run from the repo root: .venv/bin/python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.bench import write_result  # noqa: E402

GOAL = 1.5


def wall(cmd: list[str]) -> float:
    """Seconds from start to exit of one run (output discarded; a failure aborts the bench)."""
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    ps = [str(bin_dir / "ps"), "--help"]
    baseline = [sys.executable, "-c", "import click"]
    for cmd in (baseline, ps):  # warm the page cache and the byte-code cache
        wall(cmd)
    base_times: list[float] = []
    ps_times: list[float] = []
    for _ in range(max(1, args.runs)):
        base_times.append(wall(baseline))
        ps_times.append(wall(ps))
    base_median = statistics.median(base_times)
    ps_median = statistics.median(ps_times)
    ratio = ps_median / base_median
    result = {
        "figure": "ps --help wall time / python -c 'import click' wall time (medians)",
        "runs": len(ps_times),
        "ps_help_median_s": round(ps_median, 4),
        "import_click_median_s": round(base_median, 4),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "met": ratio <= GOAL,
        "ps_help_s": [round(t, 4) for t in ps_times],
        "import_click_s": [round(t, 4) for t in base_times],
    }
    out = write_result("startup", result)
    print(f"startup: ps --help {ps_median * 1000:.0f} ms vs import click {base_median * 1000:.0f} ms "
          f"(medians of {len(ps_times)}): {ratio:.2f}x (goal <= {GOAL}x) "
          f"{'MET' if result['met'] else 'NOT MET'} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
