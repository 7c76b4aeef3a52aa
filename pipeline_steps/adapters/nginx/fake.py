"""FakeRouter: the Router interface in memory (the include text, scripted test/reload/verify failures)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_steps.adapters.nginx.control import ApplyResult, InstallResult, NginxFailed, Staged
from pipeline_steps.errors import Unreachable


@dataclass
class FakeRouter:
    """An nginx that keeps its include in memory. Set `fail_test`/`fail_reload`/`fail_verify` to a message
    to make that step fail (the previous text comes back, as with the real one); `running=False` is a
    stopped nginx. `reloads` counts the reloads that took, `applied` lists every text put in place,
    `loaded` is the text nginx last loaded. The phases of a many-router change (stage, commit,
    restore) fail the same way: fail_test in stage, fail_reload in commit, fail_verify in verify;
    `fail_reload_back` makes the reload of a restored file fail too."""

    path: Path = field(default_factory=lambda: Path("/fake/ps-upstreams.conf"))
    text: str | None = None
    is_running: bool = True
    fail_test: str | None = None
    fail_reload: str | None = None
    fail_verify: str | None = None
    reloads: int = 0
    applied: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    loaded: str | None = None
    restores: int = 0
    fail_reload_back: str | None = None

    def __post_init__(self) -> None:
        if self.loaded is None:  # a fake started with a text runs with it
            self.loaded = self.text

    def read_text(self) -> str | None:
        return self.text

    def test(self) -> str | None:
        return self.fail_test

    def running(self) -> bool:
        return self.is_running

    def reload(self) -> tuple[list[int], list[int]]:
        if not self.is_running:
            raise Unreachable("nginx (fake) is not running")
        if self.fail_reload:
            raise NginxFailed(f"nginx could not apply the new config: {self.fail_reload}")
        self.reloads += 1
        self.loaded = self.text
        return [self.reloads], [self.reloads + 1]

    def verify(self, text: str) -> str | None:
        if self.fail_verify:
            return self.fail_verify
        if self.text != text:
            return f"{self.path} does not hold the expected text"
        if self.loaded != self.text:
            return f"{self.path} was written but nginx was not reloaded since (an interrupted change)"
        if not self.is_running:
            return "nginx (fake) is not running"
        return self.test()

    def close(self) -> None:
        """Nothing to release."""

    def _backup(self, old: str | None) -> str | None:
        if old is None:
            return None
        self.backups.append(old)
        return f"{self.path}.{len(self.backups)}.bak"

    def check_dir(self) -> None:
        """The fake's directory always exists."""

    @contextmanager
    def locked(self) -> Iterator[None]:
        yield

    def stage(self, text: str, *, dry_run: bool = False) -> Staged:
        old = self.text
        staged = Staged(old_text=old, text=text,
                        result=ApplyResult(path=str(self.path), changed=old != text, created=old is None))
        if dry_run:
            return staged
        # as the real one's marker: a text written but never loaded (killed between) is reloaded
        staged.was_pending = old is not None and self.loaded != old
        if not staged.result.changed and not staged.was_pending:
            return staged
        if not self.is_running:
            raise Unreachable(f"nginx (fake) is not running: nothing was changed; start nginx (`ps router "
                              f"init` writes {self.path.name} for a first start)")
        staged.result.changed = True
        if old != text:
            staged.result.backup = self._backup(old)
        self.text = text
        if self.fail_test:
            self.text = old
            raise NginxFailed(f"nginx -t rejected the change, previous file restored: {self.fail_test}")
        staged.written = True
        return staged

    def commit(self, staged: Staged) -> None:
        if not staged.written:
            return
        try:
            staged.result.workers_before, staged.result.workers_after = self.reload()
        except NginxFailed as exc:
            self.text = staged.old_text
            staged.written = False
            raise NginxFailed(f"{exc.message}; previous file restored") from None
        self.applied.append(staged.text)
        staged.result.reloaded = True

    def restore(self, staged: Staged) -> str:
        if not staged.written:
            return ""
        self.text = staged.old_text
        staged.written = False
        self.restores += 1
        if not staged.result.reloaded:
            return ""
        if self.fail_reload_back:
            return f"reloading the restored file failed: {self.fail_reload_back}"
        self.reloads += 1
        self.loaded = self.text
        staged.result.reloaded = False
        return ""

    def apply(self, text: str, *, dry_run: bool = False) -> ApplyResult:
        staged = self.stage(text, dry_run=dry_run)
        self.commit(staged)
        return staged.result

    def install(self, text: str, *, force: bool = False) -> InstallResult:
        old = self.text
        if old is not None and not force:
            return InstallResult(path=str(self.path), written=False, running=False, note="already there")
        if self.is_running:
            done = self.apply(text)
            return InstallResult(path=str(self.path), written=done.changed, running=True,
                                 reloaded=done.reloaded, tested=done.changed, backup=done.backup,
                                 note="" if done.changed else "already says so")
        if old == text:
            return InstallResult(path=str(self.path), written=False, running=False, note="already says so")
        if self.fail_test:
            what = "previous file restored" if old is not None else "file removed again"
            raise NginxFailed(f"nginx -t rejected {self.path}, {what}: {self.fail_test}")
        backup = self._backup(old)
        self.text = text
        self.applied.append(text)
        return InstallResult(path=str(self.path), written=True, running=False, tested=True, backup=backup)
