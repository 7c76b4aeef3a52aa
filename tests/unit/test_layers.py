"""The package's layers (docs/ARCHITECTURE.md): no module imports a layer above its own.

Bottom to top: foundation < adapters < operations < deploy < webhook < cli. Every module under
pipeline_steps is parsed with `ast`; every import counts, at module level, under TYPE_CHECKING and
inside functions (the lazy imports that keep `ps --help` fast are edges too). Only cli/ imports click
or writes to the terminal (print, click.echo, sys.stdout/sys.stderr).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline_steps"

LAYERS = ("foundation", "adapters", "operations", "deploy", "webhook", "cli")
RANK = {name: number for number, name in enumerate(LAYERS)}

# Packages and modules outside foundation, by their dotted prefix (longest match wins).
PLACES = {
    "pipeline_steps.adapters": "adapters",
    # detect() reads the CI variables and the git checkout (adapters/git.py): a system outside ps.
    # Nothing in foundation imports it.
    "pipeline_steps.context": "adapters",
    "pipeline_steps.operations": "operations",
    "pipeline_steps.deploy": "deploy",
    # the receiver starts deploys (as `ps deploy` processes) and calls Jenkins/GitLab adapters
    "pipeline_steps.webhook": "webhook",
    "pipeline_steps.cli": "cli",
    "pipeline_steps.__main__": "cli",
}

# Terminal output outside cli/, each with its reason.
MAY_PRINT = {
    # a process of its own (`python -m pipeline_steps.webhook.runner RCFILE -- ARGV`) the webhook
    # starts: its one usage line on stderr is all it ever says, there is no Output in that process
    "pipeline_steps.webhook.runner",
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name under pipeline_steps."""
    best = ""
    for prefix in PLACES:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return PLACES[best] if best else "foundation"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, tree: ast.AST, is_package: bool) -> list[Edge]:
    """Every pipeline_steps import in `tree`, wherever it sits; `from X import y` counts X.y when y is a
    module of the package, else X."""
    edges: list[Edge] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = source.split(".") if is_package else source.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if _is_module(candidate) else base)
        edges.extend(Edge(source, t, node.lineno) for t in targets if t.split(".")[0] == "pipeline_steps")
    return edges


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def terminal_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that print: print(...), click.echo/secho(...), sys.stdout/sys.stderr.write(...)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        text = ast.unparse(node.func)
        if text in ("print", "click.echo", "click.secho", "echo", "secho") or text.startswith(
                ("sys.stdout.", "sys.stderr.")):
            found.append((node.lineno, text))
    return found


def click_imports(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
            lines.append(node.lineno)
        elif (isinstance(node, ast.ImportFrom) and not node.level
              and (node.module or "").split(".")[0] == "click"):
            lines.append(node.lineno)
    return lines


def parsed() -> list[tuple[str, Path, ast.AST]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        modules.append((module_name(path), path, ast.parse(path.read_text(encoding="utf-8"), str(path))))
    return modules


def upward(modules: list[tuple[str, Path, ast.AST]]) -> list[str]:
    """`a (layer) imports b (higher layer) at line n` for every upward edge."""
    bad = []
    for name, path, tree in modules:
        for edge in imports_of(name, tree, path.name == "__init__.py"):
            source, target = layer_of(edge.source), layer_of(edge.target)
            if RANK[target] > RANK[source]:
                bad.append(f"{edge.source} ({source}) imports {edge.target} ({target}) at line {edge.line}")
    return bad


def test_every_module_has_a_known_layer_and_the_folders_exist() -> None:
    modules = parsed()
    assert len(modules) > 50
    seen = {layer_of(name) for name, _path, _tree in modules}
    assert seen == set(LAYERS)
    assert not (PACKAGE / "steps").exists(), "steps/ is gone: operations/ and cli/ replace it"


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward(parsed()) == []


def test_only_cli_imports_click() -> None:
    bad = [f"{name}:{line}" for name, _path, tree in parsed() if layer_of(name) != "cli"
           for line in click_imports(tree)]
    assert bad == []


def test_only_cli_prints() -> None:
    bad = [f"{name}:{line} {call}" for name, _path, tree in parsed()
           if layer_of(name) != "cli" and name not in MAY_PRINT for line, call in terminal_writes(tree)]
    assert bad == []


def test_operations_never_take_the_clis_output() -> None:
    """An operation reports progress through pipeline_steps.progress, never through cli.output.Output."""
    bad = []
    for name, _path, tree in parsed():
        if layer_of(name) in ("cli",):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "Output":
                bad.append(f"{name}:{node.lineno}")
    assert bad == []


@pytest.mark.parametrize(("source", "planted", "where"), [
    ("pipeline_steps/operations/traffic.py", "from pipeline_steps.cli.output import Output\n",
     "module level"),
    ("pipeline_steps/adapters/slots.py",
     "def _x() -> None:\n    from pipeline_steps.operations import status  # noqa\n", "in a function"),
    ("pipeline_steps/errors.py",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline_steps.deploy.plan import Plan\n",
     "under TYPE_CHECKING"),
    ("pipeline_steps/deploy/ops.py", "from pipeline_steps import cli\n", "a package by from-import"),
])
def test_a_planted_upward_import_is_caught(source: str, planted: str, where: str) -> None:
    """The check can fail: one upward import added to a real module is reported."""
    modules = []
    for name, path, tree in parsed():
        if path == PACKAGE.parent / source:
            tree = ast.parse(path.read_text(encoding="utf-8") + "\n" + planted)
        modules.append((name, path, tree))
    found = upward(modules)
    assert len(found) == 1, (where, found)


def test_a_planted_print_and_click_import_are_caught() -> None:
    tree = ast.parse("import click\n\ndef f() -> None:\n    print('x')\n    click.echo('y')\n")
    assert click_imports(tree) == [1]
    assert [call for _line, call in terminal_writes(tree)] == ["print", "click.echo"]
