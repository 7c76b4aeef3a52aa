"""Slot containers: names, labels, env hashes, who holds a host port (from /proc, no psutil), and the
safe replace of a slot's container over any DockerHost (rename aside, start new, restore on failure)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline_steps.config import Host

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import ContainerInfo, DockerHost

LABEL_PREFIX = "pipeline-steps"
LABEL_APP = f"{LABEL_PREFIX}.app"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_SLOT = f"{LABEL_PREFIX}.slot"
LABEL_BUILD_ID = f"{LABEL_PREFIX}.build-id"
LABEL_DIGEST = f"{LABEL_PREFIX}.image-digest"
LABEL_DEPLOYED_AT = f"{LABEL_PREFIX}.deployed-at"
LABEL_DEPLOYED_BY = f"{LABEL_PREFIX}.deployed-by"
LABEL_ENV_HASH = f"{LABEL_PREFIX}.env-hash"
LABEL_RUN = f"{LABEL_PREFIX}.run"  # the run settings (RunSpec.as_label) the slot was made with


def container_name(app: str, service: str, slot: str) -> str:
    """`<app>-<service>-<slot>`."""
    return f"{app}-{service}-{slot}"


def aside_name(container: str) -> str:
    """Where the previous slot container waits while its replacement starts (renamed back on failure)."""
    return f"{container}-ps-previous"


def port_check_name(container: str) -> str:
    """The throw-away container of a slot's bind test."""
    return f"{container}-ps-portcheck"


def made_by_ps(labels: Mapping[str, str] | None, app: str) -> bool:
    """True when a container's labels say pipeline-steps made it for this app."""
    return (labels or {}).get(LABEL_APP) == app


def env_hash(env: Mapping[str, str]) -> str:
    """A stable hash of an environment (names and values), for idempotency labels."""
    digest = hashlib.sha256()
    for key in sorted(env):
        digest.update(key.encode() + b"\0" + env[key].encode() + b"\0")
    return "sha256:" + digest.hexdigest()[:32]


def is_local(host: Host) -> bool:
    """True when the host's engine runs on this machine (so /proc shows its published ports)."""
    return host.docker is None or host.docker.startswith("unix://")


def _proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped or addr)


def listening_inodes(address: str, port: int) -> list[int]:
    """Socket inodes listening on (address, port) or on a wildcard address with that port."""
    wildcard = {"0.0.0.0", "::"}
    inodes: list[int] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            hex_addr, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            local = _proc_address(hex_addr)
            if local == address or local in wildcard or address in wildcard:
                inodes.append(int(fields[9]))
    return inodes


def socket_owner(inode: int) -> tuple[int, str] | None:
    """(pid, command name) of a process holding socket `inode`."""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    with open(f"/proc/{entry.name}/comm", encoding="utf-8", errors="replace") as fh:
                        return int(entry.name), fh.read().strip()
            except OSError:
                continue
    return None


def port_holder(address: str, port: int) -> str | None:
    """A description of who listens on (address, port), or None when the port is free."""
    inodes = listening_inodes(address, port)
    if not inodes:
        return None
    for inode in inodes:
        owner = socket_owner(inode)
        if owner is not None:
            return f"process {owner[1]} (pid {owner[0]})"
    return "a process this user cannot see"


# ---------------------------------------------------------------- the safe replace (issue 9), any engine


@dataclass
class Swap:
    """One slot's replacement in progress: how far it went, so `restore_slot` can undo exactly that."""

    name: str
    previous: ContainerInfo | None
    was_running: bool = False  # the previous container ran (started again if the new one fails)
    aside: bool = False  # the previous container is renamed aside
    started: ContainerInfo | None = None  # the new container


def replace_slot(engine: DockerHost, swap: Swap, image: str, labels: Mapping[str, str],
                 run: Mapping[str, Any], stop_timeout: int = 0) -> ContainerInfo:
    """Previous container renamed aside and stopped, the new one created and started.

    Raises the engine's EngineError; `swap` then records what was done for `restore_slot`.
    """
    previous = swap.previous
    if previous is not None:
        swap.was_running = previous.running
        aside = aside_name(swap.name)
        if previous.name != aside:  # else it is already aside (an interrupted run)
            engine.remove(aside)  # an older one left behind
            engine.rename(previous.id, aside)
        swap.aside = True
        if swap.was_running:
            engine.stop(previous.id, timeout=stop_timeout)
    created = engine.create(swap.name, image, labels=labels, **run)
    swap.started = created
    swap.started = engine.start(created.id)
    return swap.started


def restore_slot(engine: DockerHost, swap: Swap) -> str:
    """Undo one swap: the new container removed, the previous one renamed back (and started if it ran)."""
    from pipeline_steps.adapters.interfaces import EngineError

    where, name, previous = f"host {engine.host.name}", swap.name, swap.previous
    try:
        if swap.started is not None:
            engine.remove(swap.started.id)
        else:  # created but its handle lost in the error
            current = engine.container(name)
            if current is not None and (previous is None or current.id != previous.id):
                engine.remove(current.id)
        if previous is None or not swap.aside:
            return ""
        engine.rename(previous.id, name)
        if swap.was_running:
            engine.start(previous.id)
            return f"{where}: previous {name} runs again"
        return f"{where}: previous {name} put back ({previous.status})"
    except EngineError as exc:
        return f"{where}: could not put back the previous {name}: {exc}"


def drop_previous(engine: DockerHost, swap: Swap) -> str | None:
    """Remove the previous container kept aside once the new one runs; a warning line if that failed."""
    from pipeline_steps.adapters.interfaces import EngineError

    if not swap.aside or swap.previous is None:
        return None
    try:
        engine.remove(swap.previous.id)
    except EngineError as exc:
        return (f"host {engine.host.name}: warning: could not remove the previous container "
                f"{aside_name(swap.name)}: {exc}")
    return None
