"""The Docker SDK stays behind the DockerHost interface: no module outside pipeline_steps/adapters/ imports
`docker` (at module level or inside a function), a raw client (docker_host.connect) or the SDK
implementation (docker_sdk); inside adapters/, only the Docker adapter (docker_sdk.py, docker_host.py)
imports docker or makes a raw client (the prober and nginx's container runner use DockerHost too).
Everything else goes through adapters.docker_host (open_host / opened) and
the DockerHost methods, so the fakes (adapters.factory) stand in for every engine call."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline_steps"
ADAPTERS = PACKAGE / "adapters"

# Modules allowed to import docker although outside adapters/, each with its reason. Empty: keep it so.
EXCEPTIONS: dict[str, str] = {}
# Inside adapters/, the Docker adapter itself: SdkDockerHost and the connection/port-check helpers it uses.
DOCKER_ADAPTER = {"pipeline_steps/adapters/docker_sdk.py", "pipeline_steps/adapters/docker_host.py"}


def docker_imports(path: Path) -> list[str]:
    """`line: import ...` for every import of docker or docker.* anywhere in the module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{node.lineno}: {name}" for name in names if name.partition(".")[0] == "docker"]
    return found


def raw_clients(path: Path) -> list[str]:
    """Imports of a raw SDK client (docker_host.connect) or of the SDK implementation (docker_sdk)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline_steps.adapters.docker_host":
            found += [f"{node.lineno}: connect" for alias in node.names if alias.name == "connect"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("docker_sdk"):
            found.append(f"{node.lineno}: {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "pipeline_steps.adapters":
            found += [f"{node.lineno}: docker_sdk" for alias in node.names if alias.name == "docker_sdk"]
    return found


def test_the_scan_sees_module_and_function_level_imports(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("import os\nfrom docker import errors\n\ndef f():\n    import docker.errors\n"
                       "    from dockerfile_parse import x\n")
    assert docker_imports(planted) == ["2: docker", "5: docker.errors"]
    planted.write_text("def f():\n    from pipeline_steps.adapters.docker_host import connect, open_host\n"
                       "    from pipeline_steps.adapters.docker_sdk import SdkDockerHost\n")
    assert raw_clients(planted) == ["2: connect", "3: pipeline_steps.adapters.docker_sdk"]


def test_no_module_outside_the_adapters_imports_docker() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if ADAPTERS in path.parents:
            continue
        rel = str(path.relative_to(PACKAGE.parent))
        found = docker_imports(path) + raw_clients(path)
        if found and rel not in EXCEPTIONS:
            offenders[rel] = found
    assert not offenders, f"the Docker SDK outside pipeline_steps/adapters (use DockerHost): {offenders}"
    assert all((PACKAGE.parent / rel).is_file() for rel in EXCEPTIONS), "a stale exception"


def test_inside_the_adapters_only_the_docker_adapter_imports_docker() -> None:
    offenders = {}
    for path in sorted(ADAPTERS.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        found = docker_imports(path) + [f for f in raw_clients(path) if f.endswith(": connect")]
        if found and rel not in DOCKER_ADAPTER:
            offenders[rel] = found
    assert not offenders, f"the Docker SDK outside the Docker adapter (use DockerHost): {offenders}"
