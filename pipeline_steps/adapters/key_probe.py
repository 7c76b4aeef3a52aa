"""The probe of a sticky split (issue 13): N distinct user keys through nginx, each sent `repeat` times.

A sticky split decides per key, not per request, so `ps verify-weights --probe N` measures it by keys:
the key goes where ps.yaml's `canary.sticky` says (a cookie, a header, or for `ip` an X-Forwarded-For
address, which only counts when nginx takes the client address from it through the realip module:
from one machine every request otherwise has the same address, one key).
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field

from pipeline_steps.adapters.traffic_probe import PROBE_TIMEOUT, Answer, Budget


@dataclass(frozen=True)
class KeyAnswers:
    """One key and the answers its requests got (in order)."""

    key: str
    answers: tuple[Answer, ...]


@dataclass
class KeyedRun:
    """The answers of one keyed probe, and whether it ended before sending all keys."""

    url: str
    wanted: int
    key: str  # cookie ps_uid | header X-User | client ip
    keys: list[KeyAnswers] = field(default_factory=list)
    timed_out: bool = False
    stopped: bool = False


def key_headers(kind: str, name: str | None, key: str) -> dict[str, str]:
    """The request headers that carry `key` as ps.yaml's sticky key."""
    if kind == "cookie":
        return {"Cookie": f"{name}={key}"}
    if kind == "header":
        return {str(name): key}
    return {"X-Forwarded-For": key}


SEED_ENV = "PS_PROBE_SEED"  # set: the keys of every probe come from this seed (a probe one can repeat)


def new_keys(kind: str, n: int, rng: random.Random | None = None) -> list[str]:
    """n distinct random keys: `psprobe-<hex>`, or for ip addresses in 10.0.0.0/8. Fresh ones each probe
    (so a split's false-alarm rate is the test's 1 - confidence), unless PS_PROBE_SEED fixes them."""
    seed = os.environ.get(SEED_ENV)
    rng = rng or (random.Random(f"{seed}:{kind}:{n}") if seed else random.SystemRandom())
    keys: set[str] = set()
    while len(keys) < n:
        if kind == "ip":
            keys.add(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        else:
            keys.add(f"psprobe-{rng.getrandbits(64):016x}")
    return sorted(keys)


def probe_keys(url: str, n: int, kind: str, name: str | None, *, repeat: int = 2,
               timeout: float = PROBE_TIMEOUT, deadline: float | None = None,
               stop: threading.Event | None = None, keys: list[str] | None = None) -> KeyedRun:
    """Send `repeat` GETs for each of n new keys (or the given `keys`) over one keep-alive session.

    Bounded: `timeout` per request, `deadline` seconds in all (default max(30, n * repeat / 4)); `stop`
    ends it early. Unreachable (exit 3) when the very first request gets no answer.
    """
    import requests

    chosen = keys if keys is not None else new_keys(kind, n)
    label = "client ip" if kind == "ip" else f"{kind} {name}"
    run = KeyedRun(url=url, wanted=len(chosen), key=label)
    total = deadline if deadline is not None else max(30.0, len(chosen) * repeat * 0.25)
    budget = Budget(total, timeout, stop)
    with requests.Session() as session:
        for key in chosen:
            if budget.stopped():
                run.stopped = True
                break
            answers: list[Answer] = []
            for _ in range(repeat):
                first = not run.keys and not answers
                answer = budget.get(session, url, key_headers(kind, name, key), first=first)
                if answer is None:
                    run.timed_out = True
                    break
                answers.append(answer)
            if run.timed_out:
                break
            run.keys.append(KeyAnswers(key, tuple(answers)))
    return run
