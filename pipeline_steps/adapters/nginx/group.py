"""RouterGroup: one traffic change on many routers, all or none (issue 12).

Phase 1 writes and tests (`nginx -t`) the new include on every router (each keeps its backup), phase 2
reloads every router (in parallel, bounded, each confirmed as NginxControl.reload does), phase 3 verifies
every router. A failure on any router in any phase puts every router back on its previous file (and
reloads it back when it had been reloaded); the error names the router that failed and the routers
restored. A kill between phases leaves each router on a file that passed `nginx -t`: the next change
reads the live files and rewrites every router to one state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline_steps.adapters.nginx.control import ApplyResult, Staged
from pipeline_steps.errors import CheckFailed, PsError

MAX_WORKERS = 8
_kill_after: int | None = None  # tests: every new group stops after this phase (use_kill_after)


def use_kill_after(phase: int | None) -> None:
    """Make every RouterGroup raise GroupKilled after `phase` (1: written+tested, 2: reloaded); None: off."""
    global _kill_after
    _kill_after = phase


class StagedRouter(Protocol):
    """What the group needs of a router: NginxControl and FakeRouter both have it."""

    path: Path

    def check_dir(self) -> None: ...
    def locked(self) -> AbstractContextManager[None]: ...
    def stage(self, text: str, *, dry_run: bool = False) -> Staged: ...
    def commit(self, staged: Staged) -> None: ...
    def restore(self, staged: Staged) -> str: ...
    def verify(self, text: str) -> str | None: ...
    def close(self) -> None: ...


class GroupKilled(BaseException):
    """Raised by a group told to stop after a phase (`kill_after`): a kill -9 between phases, for tests.
    A BaseException, so nothing restores on the way out, as with a real kill."""


@dataclass
class GroupResult:
    """Per router name, what its apply did; the time of the whole change."""

    results: dict[str, ApplyResult] = field(default_factory=dict)
    seconds: float = 0.0


def names_text(names: Sequence[str]) -> str:
    """`router1`, `router1 and router2`, `router1, router2 and router3`."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class RouterGroup:
    """Routers that change together. `members` are (name, router) in config order (router 1 first)."""

    def __init__(self, members: Sequence[tuple[str, StagedRouter]], *, workers: int = 4,
                 kill_after: int | None = None) -> None:
        self.members = list(members)
        self.workers = max(1, min(workers, MAX_WORKERS, len(self.members) or 1))
        self.kill_after = kill_after if kill_after is not None else _kill_after

    def apply(self, texts: Mapping[str, str], *, dry_run: bool = False) -> GroupResult:
        """Put texts[name] on each router in three phases (see the module); raises the first failure,
        named by its router, after every router is back on its previous file."""
        started = time.monotonic()
        for _, router in self.members:
            router.check_dir()
        staged: dict[str, Staged] = {}
        try:
            with ExitStack() as stack:
                for _, router in self.members:
                    stack.enter_context(router.locked())

                def stage(name: str, router: StagedRouter) -> None:
                    staged[name] = router.stage(texts[name], dry_run=dry_run)

                self._phase(stage, staged)
                self._killpoint(1)
                if not dry_run and any(s.written for s in staged.values()):
                    self._phase(lambda name, router: router.commit(staged[name]), staged)
                    self._killpoint(2)
                    self._phase(lambda name, router: self._verify(name, router, staged), staged,
                                parallel=False)
        finally:
            for _, router in self.members:
                router.close()
        return GroupResult(results={name: s.result for name, s in staged.items()},
                           seconds=round(time.monotonic() - started, 4))

    # ------------------------------------------------------------------ the phases

    @staticmethod
    def _verify(name: str, router: StagedRouter, staged: Mapping[str, Staged]) -> None:
        if staged[name].written:
            problem = router.verify(staged[name].text)
            if problem is not None:
                raise CheckFailed(f"the change did not hold: {problem}")

    def _phase(self, work: Callable[[str, StagedRouter], None], staged: dict[str, Staged], *,
               parallel: bool = True) -> None:
        """Run `work` on every router (in a bounded pool); on any failure undo all and raise it."""
        failures: dict[str, BaseException] = {}

        def one(member: tuple[str, StagedRouter]) -> None:
            name, router = member
            try:
                work(name, router)
            except Exception as exc:  # noqa: BLE001 - every failure undoes the whole change
                failures[name] = exc

        if parallel and self.workers > 1 and len(self.members) > 1:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ps-router") as pool:
                list(pool.map(one, self.members))
        else:
            for member in self.members:
                one(member)
        if failures:
            self._undo(staged, failures)

    def _undo(self, staged: dict[str, Staged], failures: dict[str, BaseException]) -> None:
        touched = [name for name, _ in self.members
                   if name in failures or (name in staged and staged[name].result.changed)]
        notes: list[str] = []
        for name, router in self.members:
            if name in staged:
                note = router.restore(staged[name])
                if note:
                    notes.append(f"{name}: {note}")
        first = next(name for name, _ in self.members if name in failures)
        exc = failures[first]
        if not isinstance(exc, PsError):
            raise exc
        others = [f"{n}: {_message(failures[n])}" for n, _ in self.members if n in failures and n != first]
        also = f" (also {'; '.join(others)})" if others else ""
        trouble = f"; {'; '.join(notes)}" if notes else ""
        exc.message = f"{first}: {exc.message}{also}; {names_text(touched)} restored{trouble}"
        exc.args = (exc.message,)
        raise exc

    def _killpoint(self, phase: int) -> None:
        if self.kill_after == phase:
            raise GroupKilled(f"stopped after phase {phase}")


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, PsError) else f"{type(exc).__name__}: {exc}"

