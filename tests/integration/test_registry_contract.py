"""The Registry contract: the same assertions against FakeRegistry (+ FakeDockerHost) and the real registry
of the bed (RegistryClient, pushing through the real engine)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline_steps.adapters.docker_sdk import SdkDockerHost
from pipeline_steps.adapters.fakes import FakeDockerHost, FakeRegistry
from pipeline_steps.adapters.interfaces import DockerHost, EngineError, Registry
from pipeline_steps.adapters.registry import Credentials, RegistryAuthError, RegistryClient
from pipeline_steps.config import Host
from testbed.ports import unique


@dataclass
class Side:
    engine: DockerHost
    registry: Registry
    wrong: Registry  # the same registry with a wrong password
    repo: str  # <address>/<app>/web
    name: str  # <app>/web
    auth: dict[str, str] = field(default_factory=dict)  # the right user and password (an auth_config)


@pytest.fixture(params=["fake", "real"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    app = unique("rc")
    if request.param == "fake":
        address = "127.0.0.1:5999"
        reg = FakeRegistry(address, Credentials("ci", "right"))
        reg.users = {"ci": "right"}
        wrong = FakeRegistry(address, Credentials("ci", "wrong"))
        wrong.users, wrong.manifests = reg.users, reg.manifests
        engine = FakeDockerHost(Host("local"), reg)
        engine.add_image(f"{address}/{app}/web:b1")
        yield Side(engine, reg, wrong, f"{address}/{app}/web", f"{app}/web", {"username": "ci",
                                                                               "password": "right"})
        return
    bed: Any = request.getfixturevalue("registry")
    base = request.getfixturevalue("engine")
    image = request.getfixturevalue("sample_image")
    real = SdkDockerHost.open(Host("local", docker=base.base_url))
    repo = f"{bed.address}/{app}/web"
    found = real.image(image)
    assert found is not None
    real.tag(found.id, repo, "b1")
    try:
        right = RegistryClient(bed.address, Credentials(bed.user, bed.password), attempts=2, backoff=0.1)
        wrong = RegistryClient(bed.address, Credentials(bed.user, "wrong"))
        yield Side(real, right, wrong, repo, f"{app}/web", {"username": bed.user, "password": bed.password})
    finally:
        real.untag(f"{repo}:b1")
        real.close()


def test_a_pushed_tag_has_the_digest_the_push_reported(side: Side) -> None:
    assert side.registry.digest(side.name, "b1") is None
    assert not side.registry.exists(side.name, "b1")
    digest = side.registry.push(side.engine, side.repo, "b1")
    assert digest.startswith("sha256:")
    assert side.registry.digest(side.name, "b1") == digest and side.registry.exists(side.name, "b1")
    image = side.engine.image(f"{side.repo}:b1")
    assert image is not None and f"{side.repo}@{digest}" in image.repo_digests
    assert side.registry.push(side.engine, side.repo, "b1") == digest  # pushing again: the same manifest


def test_wrong_credentials_are_refused_naming_the_user(side: Side) -> None:
    with pytest.raises(RegistryAuthError, match="refused the credentials of user"):
        side.wrong.digest(side.name, "b1")


def test_the_engine_pulls_and_looks_up_a_pushed_tag_with_the_auth_given_only(side: Side) -> None:
    digest = side.registry.push(side.engine, side.repo, "b1")
    ref = f"{side.repo}:b1"
    assert side.engine.remote_digest(ref, side.auth) == digest
    for auth in (None, {**side.auth, "password": "wrong"}):
        with pytest.raises(EngineError):
            side.engine.remote_digest(ref, auth)
    side.engine.untag(ref)
    assert side.engine.image(ref) is None
    with pytest.raises(EngineError):
        side.engine.pull(ref, {**side.auth, "password": "wrong"})
    assert side.engine.image(ref) is None
    pulled = side.engine.pull(ref, side.auth)
    assert f"{side.repo}@{digest}" in pulled.repo_digests and side.engine.image(ref) == pulled
    with pytest.raises(EngineError, match="not found|unknown"):
        side.engine.pull(f"{side.repo}:none", side.auth)
