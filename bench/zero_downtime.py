"""Zero dropped requests: a bounded 100 req/s load through nginx while deployment types run.

Phases, each with the same load through the same nginx on the run's loopback address:
- baseline: nothing changes;
- canary: `ps deploy` canary-auto (10/40/70), promote-canary, rollback;
- blue-green: `ps deploy --type blue-green` twice (a switch each), then rollback.
Figure: requests sent and failed during the deploys, and their p99 latency against the baseline's.
Writes bench/results/zero_downtime.json. Run from the repo root: .venv/bin/python bench/zero_downtime.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.bench import write_result  # noqa: E402
from testbed.deploy_bed import DeployBed, start_deploy_bed  # noqa: E402
from testbed.load import LoadGenerator, LoadReport  # noqa: E402

RATE = 100.0
BASELINE_SECONDS = 8.0


def deploy(bed: DeployBed, *args: str) -> None:
    done = bed.ps("deploy", *args, "--no-notify")
    if done.returncode != 0:
        raise SystemExit(f"ps deploy {' '.join(args)} failed: {done.stderr[-2000:]}")


def under_load(bed: DeployBed, service: str, runs: list[tuple[str, ...]]) -> LoadReport:
    with LoadGenerator(bed.url(service), rate=RATE, max_seconds=300, timeout=10) as load:
        for args in runs:
            deploy(bed, *args)
    return load.report()


def main() -> int:
    results: dict[str, Any] = {"rate": RATE}
    canary = start_deploy_bed({"web": "canary"})
    try:
        for build in ("a0a0a0000001", "b0b0b0000002"):
            canary.build(build)
        deploy(canary, "--type", "stable", "--build-id", "a0a0a0000001")
        baseline = LoadGenerator(canary.url("web"), rate=RATE, max_seconds=BASELINE_SECONDS,
                                 timeout=10).start().wait(timeout=BASELINE_SECONDS + 30)
        print(f"baseline (nothing changes): {baseline.summary()}")
        during = under_load(canary, "web", [("--type", "canary-auto", "--build-id", "b0b0b0000002"),
                                            ("--type", "promote-canary",), ("--type", "rollback",)])
        print(f"canary-auto + promote-canary + rollback: {during.summary()}")
    finally:
        canary.close()
    blue_green = start_deploy_bed({"web": "blue-green"})
    try:
        for build in ("a0a0a0000001", "b0b0b0000002"):
            blue_green.build(build)
        deploy(blue_green, "--type", "blue-green", "--build-id", "a0a0a0000001")
        switched = under_load(blue_green, "web", [("--type", "blue-green", "--build-id", "b0b0b0000002"),
                                                  ("--type", "blue-green", "--build-id", "a0a0a0000001"),
                                                  ("--type", "rollback",)])
        print(f"blue-green x2 + rollback: {switched.summary()}")
    finally:
        blue_green.close()
    sent = during.sent + switched.sent
    failed = during.failed + switched.failed
    p99 = max(during.latency_ms.get("p99", 0.0), switched.latency_ms.get("p99", 0.0))
    base_p99 = baseline.latency_ms.get("p99", 0.0)
    results.update({
        "sent": sent, "failed": failed, "baseline_sent": baseline.sent, "baseline_failed": baseline.failed,
        "p99_ms": p99, "baseline_p99_ms": base_p99,
        "p99_ratio": round(p99 / base_p99, 2) if base_p99 else None,
        "canary_phase": during.as_dict(), "blue_green_phase": switched.as_dict(),
        "baseline": baseline.as_dict(),
        "measured_at": time.strftime("%Y-%m-%d"),
    })
    write_result("zero_downtime", results)
    print(f"RESULT zero_downtime: {sent} requests at {RATE:g}/s during canary-auto, promote-canary, rollback "
          f"and blue-green: {failed} failed (baseline {baseline.sent} sent, {baseline.failed} failed); p99 "
          f"{p99:.0f} ms = {results['p99_ratio']}x the baseline's")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
