"""canary-auto's time beyond its configured pauses, and rollback time from a failed check to stable.

Two services on one host, steps 10/40/70 with 1 s pauses. Figures:
- overhead = wall time of `ps deploy --type canary-auto` minus the configured pauses (goal <= 3 s);
- rollback = seconds from the failed canary check to traffic on stable (goal <= 0.5 s), against a raw
  `nginx -t && nginx -s reload` of the same config measured in the same run (the floor any tool pays);
- unhealthy -> stable with the probe on = seconds from the moment the canary turns unhealthy (`touch
  /tmp/unhealthy`, timed from the start of the docker exec) in the middle of a step whose live-split probe
  (canary.probe = 400) runs, to the include file carrying stable 100 % (goal <= check_interval + one
  reload, the reload as ps does it: the rollback figure); baseline: the same with the probe off.
Writes bench/results/canary.json. Run from the repo root: .venv/bin/python bench/canary.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.bench import write_result  # noqa: E402
from testbed.deploy_bed import DeployBed, start_deploy_bed  # noqa: E402
from testbed.load import LoadGenerator  # noqa: E402

RUNS = 3
PAUSES = 3 * 1.0
PROBE = 400
CHECK_INTERVAL = 0.2


def _web_weights(bed: DeployBed) -> list[int]:
    from pipeline_steps.upstreams import UpstreamFile

    ups = UpstreamFile.load(bed.nginx.include).upstreams()[f"{bed.app.replace('-', '_')}_web"]
    return [s.weight for s in ups.servers]


EXEC_SECONDS: list[float] = []


def unhealthy_to_stable(bed: DeployBed, build: str, probe: int) -> float:
    """One canary-auto whose web canary turns unhealthy during step 1: seconds until stable has it all,
    timed from the start of the `docker exec` that makes it unhealthy (an upper bound)."""
    bed.set_config("canary", probe=probe, pause="5s")
    stable = _web_weights(bed)
    proc = bed.popen("--json", "deploy", "--type", "canary-auto", "--build-id", build, "--no-notify")
    assert proc.stderr is not None
    for line in proc.stderr:
        if "verified: canary 10 % live in nginx" in line:
            break
    else:
        raise AssertionError("canary-auto never reached its first step")
    touched = time.monotonic()
    bed.client.containers.get(f"{bed.app}-web-canary").exec_run(["touch", "/tmp/unhealthy"])
    EXEC_SECONDS.append(time.monotonic() - touched)
    deadline = touched + 120
    while _web_weights(bed) != stable:
        if time.monotonic() > deadline:
            raise AssertionError("traffic never came back to stable")
    back = time.monotonic() - touched
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and '"rolled-back"' in out, err
    if probe:
        assert "during the probe" in out, out  # the probe really was running when it was caught
    return back


def raw_reload(bed_nginx_command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([*bed_nginx_command, "-t"], check=True, capture_output=True)
    subprocess.run([*bed_nginx_command, "-s", "reload"], check=True, capture_output=True)
    return time.monotonic() - start


def main() -> int:
    bed = start_deploy_bed({"web": "canary", "api": "canary"})
    try:
        bed.build("c0ffee000001")
        bed.build("c0ffee000002")
        for i in range(RUNS):  # unhealthy once it served 5 requests; a new build each run
            bed.build(f"bad00000000{i}", fail_after=5)
        done = bed.ps("deploy", "--type", "stable", "--build-id", "c0ffee000001", "--no-notify")
        assert done.returncode == 0, done.stderr
        overheads: list[float] = []
        for i in range(RUNS):
            build = "c0ffee000002" if i % 2 == 0 else "c0ffee000001"
            start = time.monotonic()
            done = bed.ps("deploy", "--type", "canary-auto", "--build-id", build, "--no-notify")
            total = time.monotonic() - start
            assert done.returncode == 0, done.stderr
            overheads.append(total - PAUSES)
        rollbacks: list[float] = []
        for i in range(RUNS):
            with LoadGenerator(bed.url("web"), rate=30, max_seconds=60, timeout=10):
                done = bed.ps("--json", "deploy", "--type", "canary-auto", "--build-id", f"bad00000000{i}",
                              "--no-notify")
            assert done.returncode == 1, done.stderr
            assert '"rolled-back"' in done.stdout, done.stderr
            rollbacks.append(float(json.loads(done.stdout.strip().splitlines()[-1])["rollback_seconds"]))
        raw = [raw_reload(bed.nginx.command()) for _ in range(5)]
        with_probe: list[float] = []
        without_probe: list[float] = []
        for _ in range(RUNS):  # alternate builds: the canary (flagged unhealthy) is replaced each run
            with LoadGenerator(bed.url("web"), rate=30, max_seconds=120, timeout=10):
                with_probe.append(unhealthy_to_stable(bed, "c0ffee000001", PROBE))
                without_probe.append(unhealthy_to_stable(bed, "c0ffee000002", 0))
    finally:
        bed.close()
    result = {
        "canary_auto_overhead_s": round(statistics.median(overheads), 3),
        "overhead_goal_s": 3.0,
        "rollback_s": round(statistics.median(rollbacks), 3),
        "rollback_goal_s": 0.5,
        "raw_reload_s": round(statistics.median(raw), 3),
        "rollback_vs_raw_reload": round(statistics.median(rollbacks) / statistics.median(raw), 2),
        "unhealthy_to_stable_probe_on_s": round(statistics.median(with_probe), 3),
        "unhealthy_to_stable_probe_off_s": round(statistics.median(without_probe), 3),
        "unhealthy_to_stable_max_probe_on_s": round(max(with_probe), 3),
        "unhealthy_to_stable_runs_s": {"probe_on": [round(x, 3) for x in with_probe],
                                       "probe_off": [round(x, 3) for x in without_probe]},
        "docker_exec_s": round(statistics.median(EXEC_SECONDS), 3),
        # check_interval + one reload as ps does it (the failed check -> stable figure above)
        "unhealthy_to_stable_goal_s": round(CHECK_INTERVAL + statistics.median(rollbacks), 3),
        "probe_requests": PROBE,
        "runs": RUNS,
    }
    write_result("canary", result)
    print(f"RESULT canary: canary-auto overhead beyond pauses {result['canary_auto_overhead_s']:.2f}s "
          f"(goal <= 3s, two services); rollback {result['rollback_s']:.3f}s from failed check to stable "
          f"(goal <= 0.5s) = {result['rollback_vs_raw_reload']}x a raw nginx -t && reload "
          f"({result['raw_reload_s']:.3f}s)")
    print(f"RESULT canary: unhealthy -> traffic on stable with the probe on ({PROBE} requests) "
          f"{result['unhealthy_to_stable_probe_on_s']:.3f}s median, max "
          f"{result['unhealthy_to_stable_max_probe_on_s']:.3f}s (goal <= check_interval + one reload = "
          f"{result['unhealthy_to_stable_goal_s']:.3f}s); probe off "
          f"{result['unhealthy_to_stable_probe_off_s']:.3f}s; both timed from the start of the docker exec "
          f"that makes it unhealthy ({result['docker_exec_s']:.3f}s median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
