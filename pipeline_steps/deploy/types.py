"""The six deployment types, each a plan: an ordered list of steps (deploy/steps.py, deploy/holds.py).

`plan_for(run)` builds the list from the request and the config only (never from the live state), so
`--dry-run` prints exactly what a run executes; the decisions that depend on the live state are steps
of their own (ChooseOrder, StableServes, ChooseColor, KeptColor, ...). `preflight(run)` refuses bad
input before the lock, a notification or any change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline_steps.config import Service
from pipeline_steps.deploy.holds import (
    Hold,
    KeptColor,
    StartKept,
    StopOld,
    SwitchBack,
    ToStable,
    Watch,
    WatchBaseline,
    promote_watched,
)
from pipeline_steps.deploy.plan import Plan, Run, Step
from pipeline_steps.deploy.stack_steps import hooks, requires, workers
from pipeline_steps.deploy.steps import (
    CanaryBuilds,
    CanaryRuns,
    CanaryTrafficAway,
    ChooseColor,
    ChooseOrder,
    Deploy,
    Gate,
    PreviousBuild,
    Prune,
    StableServes,
    Switch,
    Verify,
    Weights,
    names,
)
from pipeline_steps.errors import BadInput

STABLE_FAILED = "the traffic stays on the canary of {names} (gated healthy); fix stable and run ps deploy " \
                "--type stable again"


def _all(services: list[Service]) -> Callable[[Run], list[Service]]:
    return lambda run: services


def through_canary(services: list[Service], build: str, intro: str = "",
                   pre: Sequence[Step] = (), pre_traffic: Sequence[Step] = ()) -> list[Step]:
    """Each service's build into stable while the other slot serves: never an upstream without a healthy
    server. The canary gets the build first and is gated (unless it serves while stable does not: then
    stable goes first), the traffic moves to it, stable is replaced and gated, the traffic comes back,
    verified. Both slots end on the build."""
    first: Callable[[Run], list[Service]] = lambda run: run.first  # noqa: E731
    later: Callable[[Run], list[Service]] = lambda run: run.later  # noqa: E731
    return [
        ChooseOrder(services, build, intro),
        *pre,
        CanaryTrafficAway(first),
        Deploy("canary", first, f"{build} into canary first", stage="canary gate"),
        Gate("canary", first, "gate it"),
        *pre_traffic,
        Weights(100, services, "traffic to the canary (100 %)", stage="traffic to the canary"),
        Deploy("stable", _all(services), f"{build} into stable", force=True),
        Gate("stable", _all(services), "gate stable (failure: traffic stays on the gated canary, exit 1)",
             failure=STABLE_FAILED, stage="stable gate"),
        Weights(0, services, "stable 100 % (canary keeps the minimum weight)",
                stage="traffic back to stable"),
        Verify(services, "verify", canary=0),
        Deploy("canary", later, f"{build} into the canary last where it served while stable did not",
               stage="canary gate"),
        Gate("canary", later, "gate it"),
    ]


def stable(run: Run) -> Plan:
    services = run.services("canary")
    build = run.build_id()
    run.builds = {s.name: build for s in services}
    intro = "deploying {build} into the stable slot of {names} through the canary slot (the stable slot " \
            "carries traffic)"
    steps = requires(run, services + run.workers())
    if services:
        steps += through_canary(services, build, intro, pre=hooks(run, "pre_deploy", services),
                                pre_traffic=hooks(run, "pre_traffic", services, rollback=True))
    moved = workers(run, build)
    steps += [*moved, Prune(services + run.workers()), *hooks(run, "post_deploy", services)]
    return Plan("stable", steps,
                message=lambda r: f"stable runs {build} with 100 % of the traffic")


def canary_start(run: Run, services: list[Service]) -> list[Step]:
    """The canary deployed and gated (failure: rollback), or with --traffic-only only checked."""
    pre_traffic = hooks(run, "pre_traffic", services, rollback=True)
    if run.request.traffic_only:  # issue 15: deploy and gate ran as earlier pipeline stages
        return [CanaryRuns(services), *pre_traffic]
    everyone = _all(services)
    return [
        *requires(run, services),
        StableServes(services),
        *hooks(run, "pre_deploy", services),
        CanaryTrafficAway(everyone),
        Deploy("canary", everyone, f"deploy {run.build_id()} into canary of {names(services)}",
               stage="canary gate", decide="deploying {build} into the canary slot of {names}"),
        # a canary that fails its gate never got traffic, but the rollback still proves stable has it all
        Gate("canary", everyone, "gate canary (failure: rollback to stable)", rollback=True),
        *pre_traffic,
    ]


def canary_manual(run: Run) -> Plan:
    weight = run.request.weight
    if weight is None:
        raise BadInput("canary-manual needs --weight PCT")
    services = run.services("canary")
    build = run.build_id()
    steps = [*canary_start(run, services),
             Weights(weight, services, f"canary {weight:g} %", stage=f"canary {weight:g} %"),
             Verify(services, "verify", canary=weight, rollback=True, measure=False)]
    if run.probing(services):  # the canary's health is checked while the probe runs
        steps.append(Hold(services, 0.0, None, weight, during="the probe"))
    steps += hooks(run, "post_deploy", services)
    return Plan("canary-manual", steps, recover="stable",
                message=lambda r: f"canary {build} carries {weight:g} %")


def canary_auto(run: Run) -> Plan:
    services = run.services("canary")
    build = run.build_id()
    policy = run.config.canary
    chosen = policy.steps
    if run.request.weight is not None:
        chosen = tuple(s for s in chosen if s.weight <= run.request.weight)
        if not chosen:
            raise BadInput(f"--weight {run.request.weight:g} is below the first canary step")
    steps = canary_start(run, services)
    for number, step in enumerate(chosen, 1):
        pause = policy.pause if step.pause is None else step.pause
        steps += [Weights(step.weight, services, f"canary {step.weight:g} %",
                          stage=f"canary {step.weight:g} %", step=(number, len(chosen), pause)),
                  Verify(services, "verify", canary=step.weight, rollback=True, measure=False),
                  Hold(services, pause, step.checks, step.weight, step=f"{number}/{len(chosen)}")]
    last = chosen[-1].weight
    steps += hooks(run, "post_deploy", services)
    return Plan("canary-auto", steps, recover="stable",
                message=lambda r: f"canary {build} holds {last} % after {len(chosen)} healthy steps; "
                                  "promote with `ps deploy --type promote-canary`")


def promote_canary(run: Run) -> Plan:
    services = run.services("canary")
    everyone = _all(services)
    baseline = WatchBaseline(services, "stable")
    watched = promote_watched(run)  # a watch: section with a duration: the promoted build is watched
    steps: list[Step] = [
        CanaryBuilds(services),
        *([baseline] if watched else []),
        Gate("canary", everyone, f"gate the canary of {names(services)}", stage="canary gate"),
        Weights(100, services, "traffic to the canary", stage="traffic to the canary",
                decide="moving traffic to the canary (it runs the build being promoted) while the stable "
                       "slot is replaced"),
        Deploy("stable", everyone, "deploy the canary's BUILD_ID into stable", force=True,
               decide="{names}: deploying the canary's {build} into stable"),
        Gate("stable", everyone, "gate stable (failure: traffic stays on the canary)", stage="stable gate",
             failure="the traffic stays on the canary (gated healthy); fix stable and promote again"),
        Weights(0, services, "stable 100 %"),
        Verify(services, "verify", canary=0),
        *([Watch(services, kind="promote", baseline=baseline)] if watched else []),
        *workers(run),
        Prune(services + run.workers()),
    ]
    return Plan("promote-canary", steps, message=lambda r: "promoted: stable and canary run " + ", ".join(
        f"{n} {b}" for n, b in r.builds.items()))


def rollback(run: Run) -> Plan:
    """Traffic back first (the live include only, no engine call), then with --to stable redeployed."""
    canary = run.services_or_empty("canary")
    steps: list[Step] = [ToStable(canary)] if canary else []
    for service in run.services_or_empty("blue-green"):
        steps += [KeptColor(service), StartKept(service), SwitchBack(service)]
    target = run.request.to
    if target:
        for service in canary:
            intro = "{names}: redeploying {build} into stable through the canary slot (canary first, " \
                    "traffic to it, then stable, traffic back)"
            steps += [PreviousBuild(service, target), *through_canary([service], target, intro)]
    return Plan("rollback", steps, notify_started_in_thread=True,
                message=lambda r: "traffic on stable"
                + (f", stable redeployed with {target}" if target else ""))


def blue_green(run: Run) -> Plan:
    services = run.services("blue-green")
    build = run.build_id()
    everyone = _all(services)
    baseline = WatchBaseline(services, "active")
    steps: list[Step] = [
        ChooseColor(services),
        *requires(run, services + run.workers()),
        *hooks(run, "pre_deploy", services),
        Deploy("target", everyone, f"deploy {build} into the inactive color of {names(services)}",
               stage="{slot} gate"),
        Gate("target", everyone, "gate it"),
        *hooks(run, "pre_traffic", services),
        *([baseline] if run.config.watch.enabled else []),
        Switch("target", services, "switch to it"),
        Verify(services, "verify", active="target", rollback=True, measure=False),
        Watch(services, baseline=baseline),
        StopOld(services),
        *workers(run, build),
        *hooks(run, "post_deploy", services),
    ]
    return Plan("blue-green", steps, recover="color")


PLANS: dict[str, Callable[[Run], Plan]] = {
    "stable": stable, "canary-manual": canary_manual, "canary-auto": canary_auto,
    "promote-canary": promote_canary, "rollback": rollback, "blue-green": blue_green,
}


def plan_for(run: Run) -> Plan:
    """The request's type as a plan (after preflight)."""
    preflight(run)
    return PLANS[run.request.type](run)


def preflight(run: Run) -> None:
    """Bad input is refused before the lock, a notification or any change."""
    request, config = run.request, run.config
    kind = {"blue-green": "blue-green", "rollback": None}.get(request.type, "canary")
    if kind is not None:
        chosen = run.services(kind)
        if not chosen and not (request.type == "stable" and run.workers()):
            what = "a canary" if kind == "canary" else "a blue/green"
            moving = ", ".join(s.name for s in run.workers())
            raise BadInput(f"{request.type} needs {what} service; workers ({moving}) move with ps deploy "
                           "--type stable or promote-canary")
    else:
        chosen = run.services_or_empty("canary") + run.services_or_empty("blue-green")
        if not chosen:
            raise BadInput("no service to roll back (none has a stable/canary or blue/green pair)")
    unmeasured = [s.name for s in chosen if not s.url]
    if config.canary.probe and unmeasured:
        raise BadInput(f"{config.source}: canary.probe is {config.canary.probe} but "
                       f"services.{unmeasured[0]}.url is not set (the probe measures the service's own "
                       "URL through nginx); set it or canary.probe: 0")
    if request.type in ("stable", "canary-manual", "canary-auto", "blue-green"):
        run.build_id()
    if request.type == "rollback" and request.to:
        canary = run.services_or_empty("canary")
        if not canary:
            raise BadInput("--to needs stable/canary services")
        if request.to != "previous":
            run.ops.check_image(request.to, canary)
