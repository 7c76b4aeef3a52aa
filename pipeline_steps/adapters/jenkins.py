"""Jenkins through its remote API: trigger a parameterised job (`buildWithParameters`).

Connection failures become Unreachable (exit 3); a refusal (401/403/404, any 3xx/4xx/5xx) CheckFailed
(exit 1): only a 2xx is a trigger (a 302 to /login is Jenkins asking for a login, not a queued build).
`find_build` looks a delivery key up in the queue and the job's recent builds (the `PS_DELIVERY` parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pipeline_steps.errors import CheckFailed, unreachable


@dataclass(frozen=True)
class QueuedBuild:
    """What Jenkins answered to a trigger: the HTTP status and the queue item URL (Location)."""

    status: int
    queue_url: str | None


def job_path(job: str) -> str:
    """`folder/sub/name` -> `/job/folder/job/sub/job/name` (each part URL-quoted)."""
    parts = [p for p in job.strip("/").split("/") if p]
    if not parts:
        raise ValueError("empty Jenkins job name")
    return "".join(f"/job/{quote(p, safe='')}" for p in parts)


def trigger_url(base_url: str, job: str) -> str:
    """The buildWithParameters URL of `job` on the Jenkins at `base_url`."""
    return f"{base_url.rstrip('/')}{job_path(job)}/buildWithParameters"


def trigger_build(base_url: str, job: str, params: Mapping[str, str], *, job_token: str | None = None,
                  user: str | None = None, api_token: str | None = None, timeout: float = 10.0,
                  attempts: int = 3) -> QueuedBuild:
    """POST the parameters (and the job's remote-trigger token) as form data; no secret goes in the URL.

    Only failures to connect are retried (tenacity): a request that reached Jenkins is never repeated.
    """
    import requests
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    url = trigger_url(base_url, job)
    data = dict(params)
    if job_token:
        data["token"] = job_token
    auth = (user, api_token) if user and api_token else None

    def post() -> requests.Response:
        return requests.post(url, data=data, auth=auth, timeout=timeout, allow_redirects=False)

    retrying = Retrying(retry=retry_if_exception_type(requests.ConnectionError),
                        stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=2),
                        reraise=True)
    try:
        response = retrying(post)
    except requests.RequestException as exc:
        raise unreachable(f"Jenkins at {base_url}", exc) from None
    if response.status_code in (401, 403):
        raise CheckFailed(f"Jenkins refused the trigger of job {job!r} ({response.status_code}): check the "
                          "user, API token and the job's trigger token")
    if response.status_code == 404:
        raise CheckFailed(f"Jenkins has no job {job!r} (404 at {job_path(job)})")
    if 300 <= response.status_code < 400:
        where = response.headers.get("Location") or "?"
        raise CheckFailed(f"Jenkins answered {response.status_code} (redirect to {where}) to the trigger of "
                          f"job {job!r}: not triggered (a login page? check the user and API token)")
    if not 200 <= response.status_code < 300:
        raise CheckFailed(f"Jenkins answered {response.status_code} to the trigger of job {job!r}")
    return QueuedBuild(status=response.status_code, queue_url=response.headers.get("Location"))


def _has_parameter(actions: Any, name: str, value: str) -> bool:
    for action in actions if isinstance(actions, list) else []:
        for param in (action or {}).get("parameters") or []:
            if isinstance(param, dict) and param.get("name") == name and str(param.get("value")) == value:
                return True
    return False


def find_build(base_url: str, job: str, name: str, value: str, *, user: str | None = None,
               api_token: str | None = None, timeout: float = 10.0, depth: int = 50) -> str | None:
    """Where a build of `job` with parameter name=value is: its queue item or build URL; None if nowhere.

    Looks at the queue first (a trigger waits there through the quiet period), then the job's last `depth`
    builds. Failures to ask raise Unreachable / CheckFailed like a trigger does.
    """
    import requests

    auth = (user, api_token) if user and api_token else None
    base = base_url.rstrip("/")
    tree_params = "actions[parameters[name,value]]"
    try:
        queue = requests.get(f"{base}/queue/api/json",
                             params={"tree": f"items[id,url,task[name],{tree_params}]"},
                             auth=auth, timeout=timeout, allow_redirects=False)
        builds = requests.get(f"{base}{job_path(job)}/api/json",
                              params={"tree": f"builds[number,url,{tree_params}]{{0,{depth}}}"},
                              auth=auth, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise unreachable(f"Jenkins at {base_url}", exc) from None
    for answer in (queue, builds):
        if answer.status_code != 200:
            raise CheckFailed(f"Jenkins answered {answer.status_code} to a look-up of job {job!r}")
    try:
        items, done = queue.json().get("items") or [], builds.json().get("builds") or []
    except ValueError:
        raise CheckFailed(f"Jenkins answered a look-up of job {job!r} with something not JSON") from None
    for item in items:
        if isinstance(item, dict) and _has_parameter(item.get("actions"), name, value):
            return str(item.get("url") or f"queue item {item.get('id')}")
    for build in done:
        if isinstance(build, dict) and _has_parameter(build.get("actions"), name, value):
            return str(build.get("url") or f"build #{build.get('number')}")
    return None
