"""The nginx include file ps owns: one `upstream` per service, a server line per host per slot.

Read with crossplane (parsed standalone, in http context) and written with crossplane.build; never
with regular expressions. Directives ps does not own (comments, other blocks) are kept as found.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.config import SLOT_PAIRS, Config, Host, Service
from pipeline_steps.errors import BadInput
from pipeline_steps.weights import Weights

HEADER = (" Managed by pipeline-steps (ps set-weights / ps switch): upstream blocks of configured "
          "services are rewritten on every change.")
# nginx's passive check (max_fails / fail_timeout) is switched off on every server line ps writes.
# Why: the check is kept per worker (no `zone` here) and reset only by a reload, and a failed server is
# skipped for fail_timeout however soon it answers again. A slot restarted while the other serves would be
# kept out after it is healthy, and with ps's minimum weight of 1 an upstream whose big server blips while
# the small one is restarting (or empty) has every server marked failed: "no live upstreams", 502 for
# fail_timeout (issue 9: 11 s of 502 after a stable deploy). With max_fails=0 nginx never marks a server
# failed: a refused or failed attempt is retried on the other slot in the same request
# (proxy_next_upstream), the next request tries the server again, and its weight stays whole (nginx lowers
# effective weights only when max_fails > 0). Keeping traffic off a bad slot is ps's job (health checks,
# weights, backup). The cost: a host that drops packets costs proxy_connect_timeout per attempt sent there.
PASSIVE_CHECK = ("max_fails=0",)
Directive = dict[str, Any]


class MalformedUpstreams(BadInput):
    """The include file on disk does not parse (exit 2); nothing was changed."""


@dataclass
class ServerLine:
    """One `server ADDRESS [weight=N] [backup] [down] [other params];` line."""

    address: str
    weight: int | None = None
    backup: bool = False
    down: bool = False
    params: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: list[str]) -> ServerLine:
        """A server line from crossplane's args list."""
        if not args:
            raise ValueError("server line without an address")
        weight: int | None = None
        backup = down = False
        params: list[str] = []
        for arg in args[1:]:
            if arg.startswith("weight="):
                try:
                    weight = int(arg.partition("=")[2])
                except ValueError:
                    raise ValueError(f"server {args[0]}: weight is not a number: {arg!r}") from None
            elif arg == "backup":
                backup = True
            elif arg == "down":
                down = True
            else:
                params.append(arg)
        return cls(address=args[0], weight=weight, backup=backup, down=down, params=tuple(params))

    def args(self) -> list[str]:
        """crossplane args for this line (other params right after the address)."""
        out = [self.address, *self.params]
        if self.weight is not None:
            out.append(f"weight={self.weight}")
        if self.backup:
            out.append("backup")
        if self.down:
            out.append("down")
        return out

    @property
    def effective_weight(self) -> int:
        """nginx's weight for this server (default 1)."""
        return 1 if self.weight is None else self.weight

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0] if ":" in self.address else self.address

    @property
    def port(self) -> int | None:
        tail = self.address.rpartition(":")[2] if ":" in self.address else ""
        return int(tail) if tail.isdigit() else None


@dataclass
class Upstream:
    """One upstream block: its server lines and any other directives (keepalive, ...)."""

    name: str
    servers: list[ServerLine] = field(default_factory=list)
    others: list[Directive] = field(default_factory=list)

    @classmethod
    def from_directive(cls, directive: Directive) -> Upstream:
        name = directive["args"][0] if directive.get("args") else ""
        servers: list[ServerLine] = []
        others: list[Directive] = []
        for child in directive.get("block") or []:
            if child["directive"] == "server":
                servers.append(ServerLine.from_args(list(child["args"])))
            else:
                others.append(child)
        return cls(name=name, servers=servers, others=others)

    def to_directive(self) -> Directive:
        block: list[Directive] = [{"directive": "server", "args": s.args()} for s in self.servers]
        block.extend(self.others)
        return {"directive": "upstream", "args": [self.name], "block": block}


@dataclass
class UpstreamFile:
    """The parsed include file: a list of top-level crossplane directives."""

    path: Path
    directives: list[Directive] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UpstreamFile:
        """Parse `path`; MalformedUpstreams (exit 2) naming the file and crossplane's message."""
        import crossplane

        file = Path(path)
        payload = crossplane.parse(str(file), single=True, comments=True, check_ctx=False,
                                   check_args=False, catch_errors=True)
        errors = payload.get("errors") or []
        if payload.get("status") != "ok" or errors:
            first = errors[0].get("error", "does not parse") if errors else "does not parse"
            raise MalformedUpstreams(f"malformed nginx include file {file}: {first}; nothing was changed")
        configs = payload.get("config") or [{}]
        parsed = list(configs[0].get("parsed") or [])
        result = cls(path=file, directives=_strip_lines(parsed))
        try:
            result.upstreams()
        except ValueError as exc:
            raise MalformedUpstreams(f"malformed nginx include file {file}: {exc}; nothing was changed") \
                from None
        return result

    @classmethod
    def from_text(cls, text: str, path: str | os.PathLike[str] = "upstreams.conf") -> UpstreamFile:
        """Parse text (through a temporary file, as crossplane reads files); errors name `path`."""
        fd, tmp = tempfile.mkstemp(suffix=".conf", prefix="ps-upstreams-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            loaded = cls.load(tmp)
        except MalformedUpstreams as exc:
            exc.message = exc.message.replace(tmp, str(path))
            exc.args = (exc.message,)
            raise
        finally:
            os.unlink(tmp)
        loaded.path = Path(path)
        return loaded

    def upstreams(self) -> dict[str, Upstream]:
        """Every upstream block by name."""
        return {u.name: u for u in (Upstream.from_directive(d) for d in self.directives
                                    if d.get("directive") == "upstream")}

    def get(self, name: str) -> Upstream | None:
        return self.upstreams().get(name)

    def put(self, upstream: Upstream) -> None:
        """Replace the upstream of that name in place, or append it."""
        new = upstream.to_directive()
        for i, d in enumerate(self.directives):
            if d.get("directive") == "upstream" and d.get("args", [None])[0] == upstream.name:
                self.directives[i] = new
                return
        self.directives.append(new)

    def render(self) -> str:
        """The file text, as crossplane builds it (with ps's header comment first)."""
        import crossplane

        directives = list(self.directives)
        if not (directives and directives[0].get("directive") == "#"
                and directives[0].get("comment") == HEADER):
            directives.insert(0, {"directive": "#", "args": [], "comment": HEADER})
        counter = iter(range(1, 1_000_000))
        return str(crossplane.build(_numbered(directives, counter), indent=4, tabs=False,
                                    header=False)).lstrip() + "\n"


def _numbered(directives: list[Directive], counter: Iterator[int]) -> list[Directive]:
    """Copies with increasing line numbers, so crossplane puts every comment on its own line."""
    out: list[Directive] = []
    for d in directives:
        copy: Directive = {**d, "line": next(counter)}
        if "block" in d:
            copy["block"] = _numbered(d["block"], counter)
        out.append(copy)
    return out


def _strip_lines(directives: list[Directive]) -> list[Directive]:
    out: list[Directive] = []
    for d in directives:
        clean: Directive = {"directive": d["directive"], "args": list(d.get("args") or [])}
        if "comment" in d:
            clean["comment"] = d["comment"]
        if "block" in d:
            clean["block"] = _strip_lines(d["block"])
        out.append(clean)
    return out


# ---------------------------------------------------------------- services <-> upstreams


def slot_address(host: Host, port: int) -> str:
    return f"{host.address}:{port}"


def locate(service: Service, hosts: Iterable[Host], server: ServerLine) -> tuple[Host, str] | None:
    """The (host, slot) a server line points at, or None when it is not one of ours."""
    for host in hosts:
        for slot, port in service.slots.items():
            if server.address == slot_address(host, port):
                return host, slot
    return None


def _others(keepalive: int) -> list[Directive]:
    return [{"directive": "keepalive", "args": [str(keepalive)]}] if keepalive > 0 else []


def canary_upstream(service: Service, hosts: Iterable[Host], weights: Weights,
                    keepalive: int = 32) -> Upstream:
    """stable and canary server lines on every host with the given weights."""
    servers: list[ServerLine] = []
    for host in hosts:
        servers.append(ServerLine(slot_address(host, service.slots["stable"]), weight=weights.stable,
                                  params=PASSIVE_CHECK))
        servers.append(ServerLine(slot_address(host, service.slots["canary"]), weight=weights.canary,
                                  params=PASSIVE_CHECK))
    return Upstream(name=service.upstream, servers=servers, others=_others(keepalive))


def blue_green_upstream(service: Service, hosts: Iterable[Host], active: str,
                        keepalive: int = 32) -> Upstream:
    """The active color carries the traffic; the other color stays as `backup`.

    A request the active server fails (refused, 502/503/504) is retried on the backup in the same request.
    """
    if active not in SLOT_PAIRS["blue-green"]:
        raise BadInput(f"unknown color {active!r} (use blue or green)")
    servers: list[ServerLine] = []
    for host in hosts:
        for color in SLOT_PAIRS["blue-green"]:
            servers.append(ServerLine(slot_address(host, service.slots[color]), backup=color != active,
                                      params=PASSIVE_CHECK))
    return Upstream(name=service.upstream, servers=servers, others=_others(keepalive))


def default_upstream(config: Config, service: Service) -> Upstream:
    """The upstream of a first apply: 0 % canary, or blue active."""
    keepalive = config.router.keepalive if config.router else 32
    if service.pair("canary"):
        weights = Weights.from_percent(0, config.canary.scale, config.canary.min_weight)
        return canary_upstream(service, config.hosts_of(service), weights, keepalive)
    return blue_green_upstream(service, config.hosts_of(service), "blue", keepalive)


def initial_file(config: Config, path: str | os.PathLike[str]) -> UpstreamFile:
    """The include file made from config alone (no file on disk yet)."""
    file = UpstreamFile(path=Path(path))
    for service in config.services.values():
        if service.is_http:
            file.put(default_upstream(config, service))
    return file


def slot_weights(upstream: Upstream, service: Service, hosts: Iterable[Host]) -> dict[str, int]:
    """Summed weights per slot of the servers that take regular traffic (not backup, not down)."""
    hosts = list(hosts)
    totals: dict[str, int] = {}
    for server in upstream.servers:
        where = locate(service, hosts, server)
        if where is None or server.backup or server.down:
            continue
        totals[where[1]] = totals.get(where[1], 0) + server.effective_weight
    return totals


def slots_in(upstream: Upstream, service: Service, hosts: Iterable[Host]) -> dict[str, list[ServerLine]]:
    """Server lines per slot."""
    hosts = list(hosts)
    out: dict[str, list[ServerLine]] = {}
    for server in upstream.servers:
        where = locate(service, hosts, server)
        if where is not None:
            out.setdefault(where[1], []).append(server)
    return out


def active_color(upstream: Upstream, service: Service, hosts: Iterable[Host]) -> str | None:
    """The blue/green color whose servers are not backup (None when unclear)."""
    per_slot = slots_in(upstream, service, hosts)
    active = [c for c in SLOT_PAIRS["blue-green"]
              if per_slot.get(c) and all(not s.backup and not s.down for s in per_slot[c])]
    return active[0] if len(active) == 1 else None


def carries_traffic(upstream: Upstream | None, service: Service, host: Host, slot: str,
                    min_weight: int) -> bool:
    """True when `slot` on `host` takes regular traffic in this upstream.

    That is: a non-backup server line above the minimum weight, or the only kind of non-backup line
    (the active color of a blue/green pair).
    """
    if upstream is None or slot not in service.slots:
        return False
    mine = slot_address(host, service.slots[slot])
    live = [s for s in upstream.servers if not s.backup and not s.down]
    own = [s for s in live if s.address == mine]
    if not own:
        return False
    if any(s.effective_weight > min_weight for s in own):
        return True
    other_ports = {port for name, port in service.slots.items() if name != slot}
    return not any(s.port in other_ports for s in live)


# ---------------------------------------------------------------- other http-level directives (additive)


def last_upstream(value: str) -> str:
    """The server that gave the answer: the last address of `$upstream_addr`.

    nginx lists every server it tried, `a, b` after a retry and `a : b` after an internal redirect.
    """
    return value.split(",")[-1].split(" : ")[-1].strip()


def put_directive(file: UpstreamFile, directive: Directive) -> None:
    """Replace the top-level directive with the same name and first argument (e.g. `log_format ps_json`),
    or put it first, before the upstreams. Upstream blocks are not touched."""
    key = (directive["directive"], (directive.get("args") or [None])[0])
    for i, d in enumerate(file.directives):
        if (d.get("directive"), (d.get("args") or [None])[0]) == key:
            file.directives[i] = directive
            return
    file.directives.insert(0, directive)


def render_directives(directives: list[Directive]) -> str:
    """nginx text of directives, as crossplane builds it (e.g. the `access_log` line for a server)."""
    import crossplane

    return str(crossplane.build(directives, indent=4, tabs=False, header=False)) + "\n"
