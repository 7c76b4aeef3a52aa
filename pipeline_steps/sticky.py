"""Sticky canaries and segment routing in the nginx include (issue 13), with nginx's own modules.

For a stable/canary service whose ps.yaml sets `canary.sticky` or `canary.segments`, ps writes next to
the service's weighted upstream `<up>` (which stays, unchanged, the one place the weights live):

    map $cookie_ps_uid $ps_<up>__key { '' $request_id; default $cookie_ps_uid; }          # the key
    map $cookie_ps_uid $ps_<up>__set_cookie { '' 'ps_uid=$request_id; Path=/; ...'; default ''; }
    split_clients $ps_<up>__key $ps_<up>__split { 10% <up>__canary; * <up>__stable; }
    map $http_x_canary $ps_<up> { always <up>__canary; default $ps_<up>__seg1; }          # segments
    map $cookie_internal $ps_<up>__seg1 { 1 <up>__canary; default $ps_<up>__split; }
    upstream <up>__stable { server <stable> max_fails=0; server <canary> max_fails=0 backup; keepalive 32; }
    upstream <up>__canary { server <canary> max_fails=0; server <stable> max_fails=0 backup; keepalive 32; }

and the user's location says `proxy_pass http://$ps_<up>;` (plus `add_header Set-Cookie
$ps_<up>__set_cookie;` for a cookie key). split_clients hashes the key with MurmurHash2 and compares it
with cumulative ranges: the canary range is [0, P %) of the hash space, so a key on the canary at 10 % is
on it at 40 % and 70 %, 0 % puts every key on stable, and every router with the same include decides the
same for a key, with no shared state. A request without the cookie is split by `$request_id`, and the
cookie set on its answer is that same `$request_id`: its next requests land on the same slot.

The split percent comes from the weighted upstream (its canary share, to 0.01 %); a slot at the minimum
weight is idle and gets no keys (it stays reachable as the other slot's backup and through segments).
Without sticky, segments fall back to `<up>` itself (per-request weights). Without either, nothing is
written and stale blocks are removed, so the include of a user who never enables it does not change.
Everything goes through crossplane directives, never text or regular expressions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline_steps.config import CanaryPolicy, Config, Host, Service, StickyKey
from pipeline_steps.errors import BadInput
from pipeline_steps.upstreams import (
    PASSIVE_CHECK,
    ServerLine,
    Upstream,
    UpstreamFile,
    slot_address,
    slot_weights,
)

Directive = dict[str, Any]
COOKIE_MAX_AGE = 30 * 24 * 3600  # a rollout is days at most; the pin outlives it
SLOTS = ("stable", "canary")


def enabled(policy: CanaryPolicy) -> bool:
    """True when ps writes the sticky/segment blocks (sticky or segments configured)."""
    return policy.sticky is not None or bool(policy.segments)


def describe_mode(policy: CanaryPolicy) -> str:
    """`per request`, `sticky by cookie ps_uid`, plus `; segments: header X-Canary=always -> canary`."""
    mode = f"sticky by {policy.sticky.describe()}" if policy.sticky else "per request"
    if policy.segments:
        mode += "; segments: " + ", ".join(s.describe() for s in policy.segments)
    return mode


# ---------------------------------------------------------------- names


def variable(upstream: str, part: str = "") -> str:
    """`$ps_<up>` (what proxy_pass uses) or `$ps_<up>__<part>`."""
    return f"$ps_{upstream}" + (f"__{part}" if part else "")


def slot_upstream(upstream: str, slot: str) -> str:
    """`<up>__stable` / `<up>__canary`."""
    return f"{upstream}__{slot}"


def key_source(key: StickyKey) -> str:
    """The nginx variable holding a user's key."""
    if key.kind == "cookie":
        return f"$cookie_{key.name}"
    if key.kind == "header":
        return "$http_" + str(key.name).lower().replace("-", "_")
    return "$remote_addr"


def segment_source(source: str, name: str) -> str:
    return f"$cookie_{name}" if source == "cookie" else "$http_" + name.lower().replace("-", "_")


def location_lines(config: Config, service: Service) -> list[str]:
    """The lines a user's location needs for this service (proxy_pass, and the cookie for new users)."""
    if not enabled(config.canary) or not service.pair("canary"):
        return [f"proxy_pass http://{service.upstream};"]
    lines = [f"proxy_pass http://{variable(service.upstream)};"]
    if config.canary.sticky is not None and config.canary.sticky.kind == "cookie":
        lines.append(f"add_header Set-Cookie {variable(service.upstream, 'set_cookie')};")
    return lines


# ---------------------------------------------------------------- the split


def split_percent(stable: int, canary: int, min_stable: int = 0, min_canary: int = 0) -> float:
    """The canary's share of keys in percent (0.01 steps), from the summed slot weights.

    A slot at (or below) its minimum weight is idle: 0 % (or 100 %) of the keys.
    """
    total = stable + canary
    if total <= 0 or canary <= min_canary:
        return 0.0
    if stable <= min_stable:
        return 100.0
    return min(100.0, max(0.0, math.floor(10000 * canary / total + 0.5) / 100))


def percent_arg(percent: float) -> str:
    """`10%`, `12.5%`, `0.33%` (split_clients reads two decimals)."""
    return f"{percent:.2f}".rstrip("0").rstrip(".") + "%"


def split_block(upstream: str, percent: float, target: str) -> Directive:
    """split_clients over the key into `target`. 0 % has no canary line (nginx reads `0%` as `*`),
    100 % only `* <up>__canary`."""
    canary, stable = slot_upstream(upstream, "canary"), slot_upstream(upstream, "stable")
    if percent >= 100:
        lines = [["*", canary]]
    elif percent <= 0:
        lines = [["*", stable]]
    else:
        lines = [[percent_arg(percent), canary], ["*", stable]]
    return {"directive": "split_clients", "args": [variable(upstream, "key"), target],
            "block": [{"directive": a, "args": [b]} for a, b in lines]}


def read_split(file: UpstreamFile, upstream: str) -> float | None:
    """The canary percent of the live split_clients block of `upstream` (None: no sticky split)."""
    for d in file.directives:
        if d.get("directive") == "split_clients" and (d.get("args") or [])[1:2] in \
                ([variable(upstream)], [variable(upstream, "split")]):
            for line in d.get("block") or []:
                if (line.get("args") or [None])[0] == slot_upstream(upstream, "canary"):
                    head = str(line["directive"])
                    return 100.0 if head == "*" else float(head.rstrip("%"))
            return 0.0
    return None


# ---------------------------------------------------------------- the blocks


def _map(source: str, target: str, entries: list[tuple[str, str]]) -> Directive:
    return {"directive": "map", "args": [source, target],
            "block": [{"directive": k, "args": [v]} for k, v in entries]}


def slot_upstreams(service: Service, hosts: list[Host], keepalive: int) -> list[Upstream]:
    """`<up>__stable` and `<up>__canary`: the slot on every host, the other slot as `backup` (round
    robin allows backup), so a key's slot that refuses or fails is retried on the other one."""
    out: list[Upstream] = []
    others = [{"directive": "keepalive", "args": [str(keepalive)]}] if keepalive > 0 else []
    for slot in SLOTS:
        other = "canary" if slot == "stable" else "stable"
        servers = [ServerLine(slot_address(h, service.slots[slot]), params=PASSIVE_CHECK) for h in hosts]
        servers += [ServerLine(slot_address(h, service.slots[other]), backup=True, params=PASSIVE_CHECK)
                    for h in hosts]
        out.append(Upstream(slot_upstream(service.upstream, slot), servers, list(others)))
    return out


def blocks(config: Config, service: Service, percent: float) -> list[Directive]:
    """Every directive ps writes for one service's sticky split and segments (in file order)."""
    up, policy = service.upstream, config.canary
    keepalive = config.router.keepalive if config.router else 32
    out: list[Directive] = []
    fallback = up  # without sticky: the weighted upstream, split per request
    if policy.sticky is not None:
        source = key_source(policy.sticky)
        key_entries = [("default", source)] if policy.sticky.kind == "ip" else \
            [("", "$request_id"), ("default", source)]
        out.append(_map(source, variable(up, "key"), key_entries))
        if policy.sticky.kind == "cookie":
            cookie = (f"{policy.sticky.name}=$request_id; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; "
                      "SameSite=Lax")
            out.append(_map(source, variable(up, "set_cookie"), [("", cookie), ("default", "")]))
        fallback = variable(up, "split") if policy.segments else variable(up)
        out.append(split_block(up, percent, fallback))
    for i, seg in enumerate(policy.segments):
        nxt = variable(up, f"seg{i + 1}") if i + 1 < len(policy.segments) else fallback
        target = slot_upstream(up, seg.to)
        out.append(_map(segment_source(seg.source, seg.name), variable(up, f"seg{i}" if i else ""),
                        [*((v, target) for v in seg.values), ("default", nxt)]))
    if policy.sticky is None and not policy.segments:
        return []
    out.extend(u.to_directive() for u in slot_upstreams(service, list(config.hosts_of(service)), keepalive))
    return out


def _owned(directive: Directive, upstream: str) -> bool:
    """True for a directive this module writes for `upstream`."""
    name, args = directive.get("directive"), directive.get("args") or []
    if name == "upstream":
        return bool(args) and args[0] in {slot_upstream(upstream, s) for s in SLOTS}
    if name in ("map", "split_clients") and len(args) >= 2:
        target = str(args[1])
        return target == variable(upstream) or target.startswith(variable(upstream) + "__")
    return False


def apply(config: Config, file: UpstreamFile) -> bool:
    """Rewrite the sticky/segment blocks of every stable/canary service in `file` from its weighted
    upstream there; True when the file changed. Called by every writer of the include before it
    renders (set-weights, rollback, promote, router init), so one reload carries weights and split."""
    before = [dict(d) for d in file.directives]
    upstreams = file.upstreams()
    for service in config.services.values():
        if not service.pair("canary"):
            continue
        file.directives = [d for d in file.directives if not _owned(d, service.upstream)]
        main = upstreams.get(service.upstream)
        if not enabled(config.canary) or main is None:
            continue
        if "__" in service.upstream:
            raise BadInput(f"service {service.name}: upstream {service.upstream!r} contains '__', which "
                           "ps keeps for the sticky split's names; set services.<s>.upstream")
        w = slot_weights(main, service, config.hosts_of(service))
        hosts = max(1, len(config.hosts_of(service)))
        minimum = config.canary.min_weight * hosts
        percent = split_percent(w.get("stable", 0), w.get("canary", 0), minimum, minimum)
        at = next(i for i, d in enumerate(file.directives)
                  if d.get("directive") == "upstream" and (d.get("args") or [None])[0] == service.upstream)
        file.directives[at + 1:at + 1] = blocks(config, service, percent)
    return file.directives != before


@dataclass(frozen=True)
class Mode:
    """How one service's traffic is split, as `ps traffic status` shows it."""

    mode: str  # per request | sticky by cookie ps_uid[; segments: ...]
    sticky: str | None  # cookie ps_uid | header X-User | client ip
    keys_percent: float | None  # the canary's share of keys in the live include (None: no split there)
    segments: list[str]


def live_mode(config: Config, service: Service, file: UpstreamFile) -> Mode:
    """The service's mode from ps.yaml and its live split percent from the include."""
    policy = config.canary
    sticky = policy.sticky.describe() if policy.sticky and service.pair("canary") else None
    segments = [s.describe() for s in policy.segments] if service.pair("canary") else []
    mode = describe_mode(policy) if service.pair("canary") else "per request"
    return Mode(mode, sticky, read_split(file, service.upstream) if sticky else None, segments)


# ---------------------------------------------------------------- nginx's decision, in Python


def murmur2(data: bytes) -> int:
    """nginx's ngx_murmur_hash2 (what split_clients hashes the key with)."""
    m, h, n, i = 0x5BD1E995, len(data) & 0xFFFFFFFF, len(data), 0
    while n >= 4:
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
        i, n = i + 4, n - 4
    if n == 3:
        h ^= data[i + 2] << 16
    if n >= 2:
        h ^= data[i + 1] << 8
    if n >= 1:
        h = ((h ^ data[i]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def decide(key: str, percent: float) -> str:
    """The slot split_clients gives `key` at `percent` % canary: the canary range is [0, P) of the
    hash space (nginx: percent * 100 * 0xffffffff / 10000), so the decision is monotonic in P."""
    if percent >= 100:
        return "canary"
    part = int(round(percent * 100))
    if part <= 0:
        return "stable"
    return "canary" if murmur2(key.encode()) < part * 0xFFFFFFFF // 10000 else "stable"


# ---------------------------------------------------------------- the probe, by keys

REALIP_HINT = ("for a sticky split by ip the probe sends X-Forwarded-For, which nginx uses only with "
               "`set_real_ip_from <probe address>; real_ip_header X-Forwarded-For;`: from one machine "
               "every request has the same address otherwise")


def measure_keys(service: str, run: Any, slot_of: Callable[[Any], tuple[str | None, str]], percent: float,
                 confidence: float = 0.99) -> tuple[dict[str, Any], list[str]]:
    """Judge a keyed probe (adapters/key_probe.KeyedRun): each key's slot is that of its first valid
    answer; a key whose answers name two slots, any invalid answer, or a key on another slot than
    split_clients gives it at `percent` (`decide`, nginx's own hash: exact, so a right split never fails
    by chance) is a problem. The share's `confidence` binomial interval is reported, not judged."""
    from pipeline_steps.weights import binomial_interval

    counts: dict[str, int] = {}
    invalid: dict[str, int] = {}
    split_keys: list[str] = []
    misplaced: list[tuple[str, str, str]] = []  # key, the slot it reached, the slot the split gives it
    for item in run.keys:
        slots: list[str] = []
        for answer in item.answers:
            slot, reason = slot_of(answer)
            if slot is None:
                invalid[reason] = invalid.get(reason, 0) + 1
            else:
                slots.append(slot)
        if not slots:
            continue
        if len(set(slots)) > 1:
            split_keys.append(item.key)
        counts[slots[0]] = counts.get(slots[0], 0) + 1
        want = decide(item.key, percent)
        if slots[0] != want:
            misplaced.append((item.key, slots[0], want))
    valid = sum(counts.values())
    hits = counts.get("canary", 0)
    p = percent / 100
    low, high = binomial_interval(valid, p, confidence)
    measured: dict[str, Any] = {
        "url": run.url, "by": "keys", "key": run.key, "keys": run.wanted, "answered": len(run.keys),
        "requests": sum(len(k.answers) for k in run.keys),
        "valid": valid, "counts": counts, "invalid": invalid, "slot": "canary",
        "share": hits / valid if valid else 0.0, "expected_share": p,
        "interval": [low / valid, high / valid] if valid else [0.0, 0.0], "confidence": confidence,
        "keys_on_both_slots": len(split_keys), "examples": split_keys[:5],
        "keys_off_their_slot": len(misplaced), "off_examples": [list(m) for m in misplaced[:5]],
        "timed_out": run.timed_out, "stopped": run.stopped}
    problems: list[str] = []
    for reason, count in sorted(invalid.items(), key=lambda kv: -kv[1]):
        problems.append(f"{service}: {count} answers of the keyed probe did not count ({reason})")
    if split_keys:
        problems.append(f"{service}: {len(split_keys)} of {len(run.keys)} keys reached both slots "
                        f"(e.g. {split_keys[0]}): the split is not sticky")
    if run.timed_out or run.stopped:
        ended = "ran out of time" if run.timed_out else "was stopped"
        problems.append(f"{service}: keyed probe of {run.url} {ended} after {len(run.keys)} of "
                        f"{run.wanted} keys")
    if valid == 0:
        problems.append(f"{service}: no valid answer from {run.url}: nothing measured")
    elif misplaced:
        key, got, want = misplaced[0]
        line = (f"{service}: {len(misplaced)} of {valid} keys reached another slot than the live split "
                f"({percent:g} %) gives them, e.g. {key} on {got}, split_clients says {want} (canary got "
                f"{hits} keys, {100 * hits / valid:.1f} %)")
        problems.append(line + (f"; {REALIP_HINT}" if run.key == "client ip" else ""))
    return measured, problems
