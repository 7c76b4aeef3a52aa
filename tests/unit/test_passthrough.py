"""`ps aux` must keep working: arguments that are not ours go to the system's ps."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_steps.cli import COMMANDS, system_ps, wants_system_ps

VENV_BIN = Path(sys.executable).parent
OUR_PS = VENV_BIN / "ps"
OUR_LONG = VENV_BIN / "pipeline-steps"
SYSTEM_PS = next((p for p in ("/usr/bin/ps", "/bin/ps") if os.access(p, os.X_OK)), None)
needs_procps = pytest.mark.skipif(SYSTEM_PS is None, reason="procps (system ps) is not installed")


@pytest.mark.parametrize("argv", [["aux"], ["-ef"], ["-p", "1"], ["ax", "-o", "pid,cmd"], [],
                                  ["--no-headers"], ["-e"], ["deploy-everything"]])
def test_foreign_arguments_go_to_the_system_ps(argv: list[str]) -> None:
    assert wants_system_ps(argv)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"], ["-v", "build"], ["--json", "push"],
                                  ["--config", "x.yaml", "build"], ["--config=x.yaml", "build"],
                                  ["--dry-run", "build"], *[[name] for name in COMMANDS]])
def test_our_commands_and_options_stay_ours(argv: list[str]) -> None:
    assert not wants_system_ps(argv)


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_system_ps_skips_our_own_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    shutil.copy2(OUR_PS, ours / "ps")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _script(theirs / "ps", "#!/bin/sh\necho system ps\n")
    monkeypatch.setenv("PATH", os.pathsep.join([str(ours), str(theirs)]))
    assert system_ps() == str(theirs / "ps")
    monkeypatch.setenv("PATH", str(ours))
    assert system_ps() is None


def run(exe: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path or os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"])}
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@needs_procps
@pytest.mark.parametrize("args", [["aux"], ["-ef"]])
def test_installed_ps_script_passes_through(args: list[str]) -> None:
    assert SYSTEM_PS is not None
    ours = run(OUR_PS, *args)
    system = subprocess.run([SYSTEM_PS, *args], capture_output=True, text=True, check=False)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines()[0] == system.stdout.splitlines()[0]  # same header: the real ps
    assert "PID" in ours.stdout.splitlines()[0]


@needs_procps
def test_ps_dash_p_one() -> None:
    done = run(OUR_PS, "-p", "1", "-o", "pid=")
    assert done.returncode == 0 and done.stdout.strip() == "1"


@needs_procps
def test_found_through_path_first_does_not_loop() -> None:
    # the venv's ps is first on PATH, exactly as in an activated venv or CI image
    done = subprocess.run(["ps", "-p", str(os.getpid()), "-o", "pid="], capture_output=True, text=True,
                          timeout=30, check=False,
                          env={**os.environ, "PATH": os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"])})
    assert done.returncode == 0 and done.stdout.strip() == str(os.getpid())


def test_pipeline_steps_name_never_passes_through() -> None:
    done = run(OUR_LONG, "aux")
    assert done.returncode == 2
    assert "No such command 'aux'" in done.stderr
    assert "PID" not in done.stdout


def test_no_system_ps_on_path_is_a_clear_usage_error() -> None:
    done = run(OUR_PS, "aux", path=str(VENV_BIN))
    assert done.returncode == 2
    assert "not a pipeline-steps command and no system ps was found" in done.stderr
    assert "Traceback" not in done.stderr


def test_our_options_are_not_passed_through() -> None:
    done = run(OUR_PS, "--version")
    assert done.returncode == 0 and "pipeline-steps" in done.stdout
