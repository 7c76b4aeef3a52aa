"""hosts[].tls in ps.yaml: files relative to ps.yaml, each there and readable, the key private; the
plain-TCP warning; the SDK TLS settings ps builds from it (no engine needed)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.config import HostTls, load_config
from pipeline_steps.config.objects import Config, Host
from pipeline_steps.errors import EXIT_USAGE, BadInput, ConfigError

MINIMAL: dict[str, Any] = {
    "app": "shop",
    "registry": "127.0.0.1:5000",
    "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}}},
}


@pytest.fixture(autouse=True)
def _no_docker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """ca.pem, cert.pem and key.pem (0600) in tmp_path/certs (their content is not read at load)."""
    d = tmp_path / "certs"
    d.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (d / name).write_text("-----BEGIN CERTIFICATE-----\n")
    (d / "key.pem").chmod(0o600)
    return d


def write(tmp_path: Path, hosts: list[dict[str, Any]]) -> Path:
    raw = copy.deepcopy(MINIMAL)
    raw["hosts"] = hosts
    path = tmp_path / "ps.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.problems


TLS = {"ca": "certs/ca.pem", "cert": "certs/cert.pem", "key": "certs/key.pem"}


def test_tls_files_resolve_against_the_config_file(tmp_path: Path, certs: Path) -> None:
    config = load_config(write(tmp_path, [{"name": "two", "docker": "tcp://10.0.0.5:2376", "tls": TLS}]))
    assert config.hosts[0].tls == HostTls(ca=str(certs / "ca.pem"), cert=str(certs / "cert.pem"),
                                          key=str(certs / "key.pem"), verify=True)
    assert config.warnings() == []  # TLS that verifies: no warning


def test_no_tls_is_none_and_defaults_stay(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, [{"name": "one"}]))
    assert config.hosts[0].tls is None and config.hosts[0].docker is None


def test_missing_file_is_a_problem_naming_the_key(tmp_path: Path, certs: Path) -> None:
    (certs / "cert.pem").unlink()
    found = problems(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376", "tls": TLS}]))
    assert found == [f"hosts[0].tls.cert: not found: {certs / 'cert.pem'}"]


def test_a_directory_is_not_a_file(tmp_path: Path, certs: Path) -> None:
    found = problems(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376", "tls": {**TLS, "ca": "certs"}}]))
    assert found == [f"hosts[0].tls.ca: must be a file: {certs}"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_open_to_others_is_refused_like_ssh(tmp_path: Path, certs: Path, mode: int) -> None:
    (certs / "key.pem").chmod(mode)
    found = problems(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376", "tls": TLS}]))
    assert len(found) == 1 and found[0].startswith("hosts[0].tls.key: is open to group or others")
    assert f"mode {mode:04o}" in found[0] and f"chmod 600 {certs / 'key.pem'}" in found[0]


def test_key_0400_is_fine_and_the_certs_may_be_public(tmp_path: Path, certs: Path) -> None:
    (certs / "key.pem").chmod(0o400)
    (certs / "cert.pem").chmod(0o644)
    assert load_config(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376", "tls": TLS}])).hosts[0].tls


def test_verify_needs_a_ca_and_cert_goes_with_key(tmp_path: Path, certs: Path) -> None:
    found = problems(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376", "tls": {"cert": TLS["cert"]}}]))
    assert [p.split(":")[0] for p in found] == ["hosts[0].tls.ca", "hosts[0].tls.key"]
    assert "required while verify is true" in found[0] and "cert and key go together" in found[1]


def test_tls_only_for_tcp_endpoints(tmp_path: Path, certs: Path) -> None:
    found = problems(write(tmp_path, [{"name": "a", "docker": "ssh://me@10.0.0.5", "tls": TLS},
                                      {"name": "b", "tls": TLS}]))
    assert [p.split(":")[0] for p in found] == ["hosts[0].tls", "hosts[1].tls"]
    assert "only for a tcp://" in found[0] and "needs docker: tcp://" in found[1]


def test_unknown_tls_key_and_wrong_types(tmp_path: Path, certs: Path) -> None:
    found = problems(write(tmp_path, [{"docker": "tcp://10.0.0.5:2376",
                                       "tls": {**TLS, "verify": "sometimes", "password": "x"}}]))
    assert sorted(found) == [
        "hosts[0].tls.password: unknown key (known: ca, cert, key, verify)",
        "hosts[0].tls.verify: input should be a valid boolean, unable to interpret input"]


# ---------------------------------------------------------------- the plain-TCP warning


@pytest.mark.parametrize(("docker", "warned"), [
    ("tcp://10.0.0.5:2375", True), ("tcp://docker.example.com:2375", True), ("tcp://[fe80::1]:2375", True),
    ("tcp://127.0.0.1:2375", False), ("tcp://127.31.4.9:2375", False), ("tcp://localhost:2375", False),
    ("tcp://[::1]:2375", False), ("unix:///var/run/docker.sock", False), ("ssh://me@10.0.0.5", False),
])
def test_plain_tcp_off_loopback_warns(docker: str, warned: bool) -> None:
    line = Host(name="two", docker=docker).warning()
    assert (line is not None) == warned
    if line:
        assert line.startswith(f"host two ({docker}) is plain TCP without TLS")
        assert "tls: {ca, cert, key}" in line


def test_docker_tls_env_silences_the_warning_as_for_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(name="two", docker="tcp://10.0.0.5:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    assert host.warning() is None
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "")
    monkeypatch.setenv("DOCKER_CERT_PATH", "/somewhere")
    assert "without DOCKER_TLS_VERIFY" in (host.warning() or "")


def test_default_host_takes_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2375")
    config = Config(app="a", registry="r", services={}, hosts=(Host(name="local"),))
    assert config.warnings() == [Host(name="local", docker="tcp://10.0.0.5:2375").warning()]


def test_tls_without_verify_warns() -> None:
    host = Host(name="two", docker="tcp://10.0.0.5:2376", tls=HostTls(cert="c", key="k", verify=False))
    assert "tls.verify is false" in (host.warning() or "")


# ---------------------------------------------------------------- the SDK's TLS settings


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    """Real PEM files: a CA, a client certificate and key (testbed.tls_engine, `cryptography`)."""
    from testbed.tls_engine import make_pki

    return make_pki(tmp_path / "pki", "127.0.0.1")


def _host(pki: Any, **changes: Any) -> Host:
    tls = {"ca": str(pki.ca), "cert": str(pki.cert), "key": str(pki.key), **changes}
    return Host(name="two", docker="tcp://127.0.0.1:2376", tls=HostTls(**tls))


def test_tls_config_from_the_host(pki: Any) -> None:
    from pipeline_steps.adapters.docker_host import tls_config

    got = tls_config(_host(pki))
    assert got.verify is True and got.ca_cert == str(pki.ca) and got.cert == (str(pki.cert), str(pki.key))
    assert tls_config(Host(name="two", docker="tcp://127.0.0.1:2375")) is None  # plain TCP
    assert tls_config(Host(name="one", docker="unix:///x.sock", tls=_host(pki).tls)) is None


def test_tls_config_from_docker_cert_path(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_steps.adapters.docker_host import tls_config

    certs = pki.ca.parent  # ca.pem, cert.pem, key.pem: docker's names
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    got = tls_config(Host(name="two", docker="tcp://127.0.0.1:2376"))
    assert got.verify is True and got.ca_cert == str(certs / "ca.pem")
    assert got.cert == (str(certs / "cert.pem"), str(certs / "key.pem"))
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    assert tls_config(Host(name="local")).ca_cert == str(certs / "ca.pem")  # the default host too


def test_docker_cert_path_without_files_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_steps.adapters.docker_host import tls_config

    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "none"))
    with pytest.raises(BadInput) as info:
        tls_config(Host(name="two", docker="tcp://127.0.0.1:2376"))
    assert info.value.message == (
        f"host two: DOCKER_CERT_PATH ({tmp_path / 'none'}) cannot be used: ca.pem, cert.pem, key.pem missing "
        "there (docker's names: ca.pem, cert.pem, key.pem)")
    assert os.environ["DOCKER_TLS_VERIFY"] == "1"


def test_files_that_are_not_pem_are_bad_input(pki: Any, tmp_path: Path) -> None:
    from pipeline_steps.adapters.docker_host import tls_config

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for changes in ({"ca": str(junk)}, {"cert": str(junk)}, {"key": str(pki.other_key)}):  # last: not its key
        with pytest.raises(BadInput) as info:
            tls_config(_host(pki, **changes))
        assert info.value.message.startswith("host two: its TLS files do not load (")
        assert "PRIVATE KEY" not in info.value.message


def test_a_key_with_a_passphrase_is_refused_never_asked_for(pki: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from pipeline_steps.adapters.docker_host import tls_config

    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(BadInput) as info:
        tls_config(_host(pki, key=str(locked)))
    assert info.value.message == (f"host two: the TLS key {locked} has a passphrase: ps cannot ask for it; "
                                  "give a key without one (mode 0600)")
