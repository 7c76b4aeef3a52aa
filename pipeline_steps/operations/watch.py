"""The post-deploy watch's figures of slot containers on their hosts (`docker stats` and `docker logs`).

`WatchSampler.figures(service, slot, since)` answers one `SlotFigures` per host: CPU (between this
sample and the container's previous one, or the engine's own pre/cpu delta), memory against its
limit, and the lines matching `watch.error_pattern` written after the later of the container's start
and `since` (Docker's own timestamps, so a line written before never counts, whatever `--since`
rounds to). Lines are read incrementally: each call asks only for what came after the last line seen.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline_steps.adapters.interfaces import ContainerStats, EngineError
from pipeline_steps.analysis.watch import SlotFigures
from pipeline_steps.config import Config, Service
from pipeline_steps.timestamps import parse_log_timestamp, parse_state_time

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import DockerHost


@dataclass
class _Count:
    """The error lines of one container counted since `mark` (ns), up to the last line seen."""

    mark: int
    last: int
    lines: int = 0


class WatchSampler:
    """The figures of `config`'s slot containers; keeps each container's last sample and line count."""

    def __init__(self, config: Config) -> None:
        self.config = config
        pattern = config.watch.error_pattern
        self.pattern = re.compile(pattern) if pattern else None
        self.samples: dict[tuple[str, str], ContainerStats] = {}
        self.counts: dict[tuple[str, str, int], _Count] = {}

    def figures(self, service: Service, slot: str, since: float) -> list[SlotFigures]:
        """One SlotFigures per host running `slot` of `service`; `since`: seconds since the epoch."""
        from pipeline_steps.adapters import slots
        from pipeline_steps.adapters.docker_host import opened

        name = slots.container_name(self.config.app, service.name, slot)
        found = []
        for host in self.config.hosts_of(service):
            with opened(host, timeout=20) as engine:
                container = engine.container(name)
                if container is None or not container.running:
                    continue
                try:
                    stats = engine.stats(container.id)
                except EngineError:  # stopped between the two calls: the health checks say so
                    continue
                key = (host.name, container.id)
                cpu = stats.cpu_percent_since(self.samples.get(key))
                self.samples[key] = stats
                lines, minutes = None, 0.0
                if self.pattern is not None:
                    started = parse_state_time((container.attrs.get("State") or {}).get("StartedAt")) or 0
                    mark = max(started, int(since * 1e9))
                    lines = self._count(engine, container.id, host.name, mark)
                    minutes = max(0.0, time.time() - mark / 1e9) / 60.0
                found.append(SlotFigures(slot=slot, host=host.name, container=name, cpu_percent=cpu,
                                         memory_percent=stats.memory_percent, memory_bytes=stats.memory_usage,
                                         error_lines=lines, minutes=round(minutes, 4)))
        return found

    def _count(self, engine: DockerHost, container: str, host: str, mark: int) -> int:
        """Matching lines written after `mark` (ns), reading only what came after the last one seen."""
        count = self.counts.setdefault((host, container, mark), _Count(mark=mark, last=mark))
        text = engine.logs(container, since=count.last // 1_000_000_000, timestamps=True)
        assert self.pattern is not None
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            at = parse_log_timestamp(stamp)
            if at is None or at <= count.last:
                continue
            count.last = at
            if self.pattern.search(message):
                count.lines += 1
        return count.lines
