"""Canary judgement: how fast a bad canary is caught, and how often an equal one is rolled back.

Traffic through real nginx (on the run's loopback address) at 100 req/s with the canary at 10 %
(weights 900:100), two local backends per upstream, judged from nginx's own ps_json access log with the
default AnalysisPolicy (2 pp, 50 ms p99, confidence 0.99, min_requests 50) and a hold of 30 planned looks (one
per 100 requests, i.e. a 30 s pause looked at every second; alpha per test 0.01 / 30 / 2).
- detection: a canary answering 5 % random 500s against a stable with none (+5 pp), the same over a 1 %
  base rate on both (1 % vs 6 %), and one 100 ms slower (+100 ms p99), RUNS holds each, bounded at 3000
  requests / 30 s: seconds and requests from the step's start to "fail";
- false rollbacks: identical backends (1 % random 500s, latency 1 ms + exponential 10 ms on both); one
  live 40 s hold through nginx is recorded, then REPLAYS holds are replayed through the same judge (each
  look: 100 requests, each the canary's with probability 0.1, drawn with replacement from that slot's
  recorded lines), with the default policy, with both thresholds at 0 (only the tests guard), and with
  thresholds 0 and no correction for repeated looks (every look at the full alpha: what it prevents).
  Drawing each slot from its own recorded lines keeps any real difference between the two processes
  (and the chance difference of 400 recorded canary lines); "pooled" draws both slots from all lines,
  the exact null hypothesis, where the tests alone must keep false alarms <= alpha.
Writes bench/results/analysis.json. Run from the repo root: .venv/bin/python bench/analysis.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline_steps.analysis import AnalysisPolicy, Samples, StepAnalysis, judge  # noqa: E402
from testbed.backends import Look, start_backend, start_judged_site, watch  # noqa: E402
from testbed.bench import write_result  # noqa: E402
from testbed.load import LoadGenerator  # noqa: E402
from testbed.nginx import start_nginx  # noqa: E402

RATE = 100.0
CANARY_SHARE = 0.10
LOOKS = 30
EVERY = 100  # requests per look
MAX_REQUESTS = 3000
RUNS = 5
REPLAYS = 600
RECORD_SECONDS = 40
POLICY = AnalysisPolicy()


def live_hold(site: Any, upstream: str, requests: int, stop_on_fail: bool = True,
              looks: int = LOOKS) -> tuple[list[Look], Any]:
    with StepAnalysis([site.log], site.slot_map(), POLICY, looks, upstreams=[upstream]) as analysis:
        load = LoadGenerator(site.url(upstream), rate=RATE, max_seconds=requests / RATE + 1,
                             max_requests=requests, ok_status=range(200, 600)).start()
        try:
            seen = watch(analysis, load, upstream, every=EVERY, stop_on_fail=stop_on_fail,
                         deadline=requests / RATE + 30)
        finally:
            load.stop()
        window = analysis.window
        return seen, (window.side(upstream, "canary"), window.side(upstream, "stable"))


def detect(site: Any, upstream: str) -> dict[str, Any]:
    runs = []
    for _ in range(RUNS):
        looks, _ = live_hold(site, upstream, MAX_REQUESTS)
        last = looks[-1]
        runs.append({"detected": last.judgement.decision == "fail", "seconds": last.elapsed,
                     "requests": last.requests, "canary_requests": last.judgement.canary.requests,
                     "reason": last.judgement.reason})
        print(f"  {upstream}: {'fail' if runs[-1]['detected'] else 'NOT detected'} after "
              f"{last.elapsed:.1f}s, {last.requests} requests ({last.judgement.canary.requests} canary): "
              f"{last.judgement.reason}")
    detected = [r for r in runs if r["detected"]]
    return {"runs": runs, "detected": len(detected), "of": len(runs),
            "median_seconds": statistics.median(r["seconds"] for r in detected) if detected else None,
            "max_seconds": max(r["seconds"] for r in detected) if detected else None,
            "median_requests": statistics.median(r["requests"] for r in detected) if detected else None}


def replay(canary_pool: Samples, stable_pool: Samples, rng: random.Random, policy: AnalysisPolicy,
           corrected: bool = True) -> bool:
    """One hold replayed from recorded lines; True when any look fails (a false rollback)."""
    pools = {"canary": list(zip(canary_pool.statuses, canary_pool.latencies, strict=True)),
             "stable": list(zip(stable_pool.statuses, stable_pool.latencies, strict=True))}
    sides = {"canary": Samples(), "stable": Samples()}
    tests = 0
    for _ in range(LOOKS):
        for _ in range(EVERY):
            slot = "canary" if rng.random() < CANARY_SHARE else "stable"
            sides[slot].add(*rng.choice(pools[slot]))
        if min(len(s) for s in sides.values()) < POLICY.min_requests:
            continue  # a look that does not test spends no alpha (as StepAnalysis counts them)
        tests += 1
        look, looks = (tests, LOOKS) if corrected else (1, 1)
        if judge(sides["canary"], sides["stable"], policy, look=look, looks=looks).decision == "fail":
            return True
    return False


def main() -> int:
    backends = {"err": (start_backend("stable"), start_backend("canary", fail_rate=0.05)),
                "err_base": (start_backend("stable", fail_rate=0.01, seed=1),
                             start_backend("canary", fail_rate=0.06, seed=2)),
                "slow": (start_backend("stable"), start_backend("canary", delay=0.1)),
                "same": (start_backend("stable", fail_rate=0.01, delay=0.001, jitter=0.01, seed=3),
                         start_backend("canary", fail_rate=0.01, delay=0.001, jitter=0.01, seed=4))}
    site = start_judged_site(start_nginx, backends, CANARY_SHARE * 100)
    results: dict[str, Any] = {"rate": RATE, "canary_percent": CANARY_SHARE * 100, "looks": LOOKS,
                               "requests_per_look": EVERY, "policy": POLICY.__dict__}
    try:
        print("+5 pp 5xx canary:")
        results["errors_5pp"] = detect(site, "err")
        print("+5 pp over a 1 % base (stable 1 %, canary 6 %):")
        results["errors_5pp_over_1pct"] = detect(site, "err_base")
        print("+100 ms canary:")
        results["latency_100ms"] = detect(site, "slow")
        print(f"identical canary, live hold of {RECORD_SECONDS}s (recorded for the replays):")
        looks, (canary_pool, stable_pool) = live_hold(site, "same", int(RATE * RECORD_SECONDS),
                                                      stop_on_fail=False,
                                                      looks=int(RATE * RECORD_SECONDS) // EVERY + 5)
        live_false = any(lk.judgement.decision == "fail" for lk in looks[:LOOKS])
        print(f"  live: {looks[-1].judgement.decision}: {looks[-1].judgement.reason}")
    finally:
        site.nginx.stop()
        for pair in backends.values():
            for b in pair:
                b.stop()
    zero = replace(POLICY, max_error_rate_increase=0, max_p99_increase=0)
    pooled = Samples()
    pooled.extend(canary_pool)
    pooled.extend(stable_pool)
    variants = {"default policy": (POLICY, True, canary_pool, stable_pool),
                "thresholds 0": (zero, True, canary_pool, stable_pool),
                "thresholds 0, no correction": (zero, False, canary_pool, stable_pool),
                "pooled, thresholds 0": (zero, True, pooled, pooled),
                "pooled, thresholds 0, no correction": (zero, False, pooled, pooled)}
    started = time.monotonic()
    replays: dict[str, Any] = {}
    for name, (policy, corrected, canary_from, stable_from) in variants.items():
        rng = random.Random(1414)
        false = sum(replay(canary_from, stable_from, rng, policy, corrected) for _ in range(REPLAYS))
        replays[name] = {"false": false, "of": REPLAYS, "rate": false / REPLAYS}
        print(f"  replays, {name}: {false} false rollbacks of {REPLAYS} ({false / REPLAYS:.1%})")
    false = replays["default policy"]["false"]
    results["false_rollbacks"] = {"live_runs": 1, "live_false": int(live_false), "replays": replays,
                                  "recorded": {"canary": len(canary_pool), "stable": len(stable_pool)},
                                  "replay_seconds": round(time.monotonic() - started, 1)}
    results["measured_at"] = time.strftime("%Y-%m-%d")
    print(f"  recorded {len(canary_pool)} canary / {len(stable_pool)} stable lines")
    write_result("analysis", results)
    e, lat, base = results["errors_5pp"], results["latency_100ms"], results["errors_5pp_over_1pct"]
    print(f"RESULT analysis: +5 pp 5xx at 10 % caught in {e['detected']}/{e['of']} holds, median "
          f"{e['median_seconds']}s / {e['median_requests']} requests (max {e['max_seconds']}s); over a 1 % "
          f"base {base['detected']}/{base['of']}, median {base['median_seconds']}s; +100 ms "
          f"in {lat['detected']}/{lat['of']}, median {lat['median_seconds']}s / {lat['median_requests']} "
          f"requests; false rollbacks {false}/{REPLAYS} replayed + {int(live_false)}/1 live (thresholds 0: "
          f"{replays['thresholds 0']['false']}, uncorrected: "
          f"{replays['thresholds 0, no correction']['false']}; pooled "
          f"{replays['pooled, thresholds 0']['false']}, uncorrected "
          f"{replays['pooled, thresholds 0, no correction']['false']})")
    ok = (e["detected"] == e["of"] and (e["max_seconds"] or 99) <= 15 and lat["detected"] == lat["of"]
          and false / REPLAYS <= 0.01)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
