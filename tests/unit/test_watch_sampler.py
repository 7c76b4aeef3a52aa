"""The watch's figures over FakeDockerHost (operations/watch.py): error lines only after the later of
the container's start and the mark, read incrementally; CPU between two samples; memory against the
limit. And the SDK's stats document read by docker_sdk.stats_of (cgroup v2, with pre/cpu deltas)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from pipeline_steps.adapters import factory
from pipeline_steps.adapters.docker_sdk import stats_of
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.interfaces import ContainerStats
from pipeline_steps.config import Host, load_config
from pipeline_steps.operations.watch import WatchSampler


def _setup(tmp_path: Path) -> tuple[WatchSampler, FakeDockerHost]:
    raw = {"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path / "state"),
           "hosts": [{"name": "a", "docker": "tcp://fake-a:2375"}],
           "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}}},
           "router": {"include": str(tmp_path / "ups.conf")},
           "watch": {"error_pattern": "ERROR|Exception", "memory_max_percent": 80}}
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "ps.yaml")
    engine = FakeDockerHost(Host("a", docker="tcp://fake-a:2375"), FakeRegistry())
    return WatchSampler(config), engine


def test_only_lines_after_the_mark_and_the_start_count_once(tmp_path: Path) -> None:
    sampler, engine = _setup(tmp_path)
    web = sampler.config.service("web")
    c = engine.add_container("shop-web-canary", "127.0.0.1:5999/shop/web:b1")
    c.options["mem_limit"] = 64 << 20
    engine.usage["shop-web-canary"] = (10.0, 48 << 20)
    now = time.time()
    c.started_at = now - 60  # started a minute ago: a line before that is a previous run's
    c.log += [(now - 120, "ERROR of the previous run"), (now - 5, "ERROR before the mark"),
              (now - 0.5, "GET / 200"), (now - 0.4, "ERROR one"), (now - 0.3, "java.lang.Exception two")]
    with factory.installed(FakeAdapters({"a": engine}, FakeRegistry(), FakeNotifier())):
        first = sampler.figures(web, "canary", since=now - 1)
        assert [f.error_lines for f in first] == [2]
        assert first[0].memory_percent == 75.0 and first[0].cpu_percent is None  # one sample: no CPU yet
        again = sampler.figures(web, "canary", since=now - 1)
        assert again[0].error_lines == 2  # read incrementally: nothing counted twice
        engine.write_log("shop-web-canary", "ERROR three")
        assert sampler.figures(web, "canary", since=now - 1)[0].error_lines == 3
        # a mark before the start: the start bounds it (the previous run's line never counts)
        assert sampler.figures(web, "canary", since=now - 3600)[0].error_lines == 4
        # a stopped container is not watched (its health check says why)
        c.status = "exited"
        assert sampler.figures(web, "canary", since=now - 1) == []


def test_cpu_between_two_samples_is_of_the_limit() -> None:
    earlier = ContainerStats("c", read_at=100.0, cpu_usage=0, cpu_limit=0.5, memory_usage=1,
                             memory_limit=None)
    later = ContainerStats("c", read_at=102.0, cpu_usage=int(0.5e9), cpu_limit=0.5, memory_usage=1,
                           memory_limit=None)
    assert later.cpu_percent_since(earlier) == 50.0  # 0.25 CPU of a 0.5 CPU limit
    assert later.cpu_percent_since(None) is None and later.memory_percent is None


def test_stats_of_reads_the_engines_document() -> None:
    raw = {"read": "2026-12-01T10:00:02.000000000Z",
           "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}, "system_cpu_usage": 20_000_000_000,
                         "online_cpus": 2},
           "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 16_000_000_000},
           "memory_stats": {"usage": 60 << 20, "stats": {"inactive_file": 10 << 20}}}
    stats = stats_of("shop-web-canary", raw, {"NanoCpus": 1_000_000_000, "Memory": 100 << 20})
    assert stats.cpu_percent == 50.0  # 1 s of 4 s of system time on 2 CPUs, of a 1-CPU limit
    assert stats.memory_usage == 50 << 20 and stats.memory_percent == 50.0
    assert stats.read_at == 1796119202.0 and stats.cpu_limit == 1.0
    unlimited = stats_of("x", {"memory_stats": {"usage": 5}}, {})
    assert unlimited.memory_limit is None and unlimited.cpu_limit == 1.0 and unlimited.cpu_percent is None
