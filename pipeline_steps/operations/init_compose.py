"""`ps init --from-compose`: a ps.yaml from a docker-compose.yml, and what could not be carried over.

Services that compose builds (`build:`) become ps services: with a published port an HTTP service
(stable on that port, canary on the next free one), without one a worker (`deploy.replicas`), and one that
never restarts (`restart: "no"` / `on-failure`) a job. Image-only services (postgres, redis, kafka) are the
stack ps does not deploy: they keep running under compose, and the ps services join their networks and
`require` them by container name. The result is checked by the same loader as any ps.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps import compose
from pipeline_steps.errors import BadInput
from pipeline_steps.secrets import is_secret_name

CARRIED = {"build", "image", "ports", "environment", "networks", "volumes", "command", "entrypoint", "user",
           "working_dir", "extra_hosts", "ulimits", "stop_signal", "stop_grace_period", "logging", "labels",
           "healthcheck", "restart", "depends_on", "deploy", "container_name"}


@dataclass
class InitResult:
    """The ps.yaml as data, which compose service became what, and the notes on what was left out."""

    config: dict[str, Any]
    kinds: dict[str, str]  # compose service -> http | worker | job | stack (left to compose)
    notes: list[str] = field(default_factory=list)


def _duration(value: Any) -> str | None:
    """A compose duration (`1m30s`, `10s`, `500ms`) in ps.yaml's form (seconds or one unit)."""
    if value is None:
        return None
    import re

    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(us|ms|s|m|h)", str(value)):
        total += float(amount) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return f"{total:g}s"


def _kind(spec: dict[str, Any]) -> str:
    if "build" not in spec:
        return "stack"
    if any(published for published, _ in compose.ports(spec)):
        return "http"
    return "job" if str(spec.get("restart", "")) in ("no", "on-failure") else "worker"


def _build(spec: dict[str, Any], project: compose.ComposeProject, out_dir: Path) -> dict[str, str]:
    build = spec["build"]
    context = build if isinstance(build, str) else str(build.get("context", "."))
    path = (project.base_dir / context).resolve()
    try:
        rel = str(path.relative_to(out_dir.resolve()))
    except ValueError:
        rel = str(path)
    found = {"context": rel if rel != "" else "."}
    if isinstance(build, dict) and build.get("dockerfile"):
        found["dockerfile"] = str(build["dockerfile"])
    return found


def _run_settings(name: str, spec: dict[str, Any], project: compose.ComposeProject,
                  notes: list[str]) -> dict[str, Any]:
    run: dict[str, Any] = {}
    nets = compose.networks(spec) or ({"default": []} if "network_mode" not in spec else {})
    run["networks"] = [{"name": project.network_name(k), **({"aliases": a} if a else {})}
                       for k, a in nets.items()]
    vols = []
    for v in compose.volumes(spec):
        if v["type"] == "bind" and v["source"]:
            source = str((project.base_dir / str(v["source"]).replace("~", str(Path.home()), 1)).resolve())
        elif v["type"] == "volume" and v["source"]:
            source = project.volume_name(str(v["source"]))
        else:
            notes.append(f"{name}: volume {v['target']} ({v['type']}, anonymous) not carried over")
            continue
        vols.append(f"{source}:{v['target']}" + (":ro" if v["read_only"] else ""))
    if vols:
        run["volumes"] = vols
    for key, ps_key in (("command", "command"), ("entrypoint", "entrypoint"), ("user", "user"),
                        ("working_dir", "workdir"), ("stop_signal", "stop_signal")):
        if spec.get(key) is not None:
            run[ps_key] = spec[key]
    if spec.get("stop_grace_period"):
        run["stop_timeout"] = _duration(spec["stop_grace_period"])
    hosts = spec.get("extra_hosts")
    if hosts:
        pairs = hosts.items() if isinstance(hosts, dict) else (str(h).replace("=", ":", 1).split(":", 1)
                                                               for h in hosts)
        run["extra_hosts"] = {str(k): str(v) for k, v in pairs}
    if spec.get("ulimits"):
        run["ulimits"] = spec["ulimits"]
    if spec.get("logging", {}).get("driver"):
        run["log"] = {"driver": spec["logging"]["driver"],
                      "options": {k: str(v) for k, v in (spec["logging"].get("options") or {}).items()}}
    if spec.get("labels"):
        labels = spec["labels"]
        run["labels"] = dict(item.split("=", 1) for item in labels) if isinstance(labels, list) else labels
    if spec.get("restart") in ("no", "always", "unless-stopped", "on-failure"):
        run["restart"] = spec["restart"]
    limits = ((spec.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    for key in ("memory", "cpus", "pids"):
        if limits.get(key) is not None:
            run[key] = str(limits[key]).lower().removesuffix("b") if key == "memory" else limits[key]
    hc = spec.get("healthcheck")
    if hc:
        if hc.get("disable"):
            run["healthcheck"] = {"test": ["NONE"]}
        elif hc.get("test"):
            test = hc["test"] if isinstance(hc["test"], list) else ["CMD-SHELL", hc["test"]]
            run["healthcheck"] = {"test": test, **{k: _duration(hc[k]) for k in ("interval", "timeout",
                                                                                 "start_period") if k in hc},
                                  **({"retries": hc["retries"]} if "retries" in hc else {})}
    return run


def from_compose(path: str, *, app: str | None = None, registry: str = "registry.example.com:5000",
                 only: list[str] | None = None, out_dir: Path | None = None,
                 environ: dict[str, str] | None = None) -> InitResult:
    """The ps.yaml for compose file `path` (the services `only`, default all it builds)."""
    project = compose.load_compose(path, environ)
    out_dir = out_dir or Path.cwd()
    unknown = [s for s in only or [] if s not in project.services]
    if unknown:
        raise BadInput(f"--service {unknown[0]}: not in {path} (services: {', '.join(project.services)})")
    notes = [f"compose: {w}" for w in project.warnings]
    kinds = {name: _kind(spec) for name, spec in project.services.items()}
    chosen = [n for n in project.services if (not only or n in only) and kinds[n] != "stack"]
    if not chosen:
        raise BadInput(f"{path}: no service with `build:` to deploy (image-only services stay with compose)")
    taken = {p for spec in project.services.values() for p, _ in compose.ports(spec) if p}
    services: dict[str, Any] = {}
    for name in chosen:
        spec = project.services[name]
        svc: dict[str, Any] = {**_build(spec, project, out_dir), "kind": kinds[name]}
        published = [(p, t) for p, t in compose.ports(spec) if p]
        if kinds[name] == "http":
            stable, target = published[0]
            canary = stable + 1
            while canary in taken:
                canary += 1
            taken.add(canary)
            svc.update(port=target, slots={"stable": stable, "canary": canary})
            notes.append(f"{name}: HTTP on {target}, stable {stable} (compose's port), canary {canary}; "
                         "health.path /health assumed: set it to the app's health URL")
            notes += [f"{name}: port {p}:{t} not carried over (a slot has one port)"
                      for p, t in published[1:]]
        elif kinds[name] == "worker":
            svc["replicas"] = int((spec.get("deploy") or {}).get("replicas") or 1)
        env = compose.environment(spec)
        secret = sorted(k for k in env if is_secret_name(k) or env[k] is None)
        if secret:
            svc["env_from"] = secret
            notes.append(f"{name}: {', '.join(secret)} read from the CI job's environment (env_from), "
                         "values not copied")
        plain = {k: v for k, v in env.items() if k not in secret}
        if plain:
            svc["env"] = plain
        svc.update(_run_settings(name, spec, project, notes))
        deps = compose.depends_on(spec)
        if deps:
            svc["requires"] = [d if d in chosen else project.container_name(d) for d in deps]
        if spec.get("env_file"):
            notes.append(f"{name}: env_file not carried over (put its names in env_from, its values in CI)")
        left = sorted(set(spec) - CARRIED - {"env_file"})
        if left:
            notes.append(f"{name}: not carried over: {', '.join(left)}")
        services[name] = svc
    for name, kind in kinds.items():
        if kind == "stack" and (not only or name in only):
            notes.append(f"{name}: image {project.services[name].get('image', '?')} is not built here: it "
                         "keeps running under compose (ps services join its network and require it by name)")
    config = {"app": app or project.name.replace("_", "-"), "registry": registry, "services": services}
    if any(s["kind"] == "http" for s in services.values()):
        config["router"] = {"include": "/etc/nginx/conf.d/ps-upstreams.conf"}
        notes.append("router.include /etc/nginx/conf.d/ps-upstreams.conf assumed (ps router init writes it)")
    return InitResult(config, kinds, notes)
