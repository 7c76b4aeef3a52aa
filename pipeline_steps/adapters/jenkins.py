"""Jenkins through its remote API: trigger a parameterised job (`buildWithParameters`).

Connection failures become Unreachable (exit 3); a refusal (401/403/404, any 4xx/5xx) CheckFailed (exit 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from pipeline_steps.errors import CheckFailed, Unreachable


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
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    url = trigger_url(base_url, job)
    data = dict(params)
    if job_token:
        data["token"] = job_token
    auth = (user, api_token) if user and api_token else None

    @retry(retry=retry_if_exception_type(requests.ConnectionError), stop=stop_after_attempt(attempts),
           wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
    def post() -> requests.Response:
        return requests.post(url, data=data, auth=auth, timeout=timeout, allow_redirects=False)

    try:
        response = post()
    except requests.RequestException as exc:
        raise Unreachable(f"Jenkins at {base_url} is unreachable: {type(exc).__name__}") from None
    if response.status_code in (401, 403):
        raise CheckFailed(f"Jenkins refused the trigger of job {job!r} ({response.status_code}): check the "
                          "user, API token and the job's trigger token")
    if response.status_code == 404:
        raise CheckFailed(f"Jenkins has no job {job!r} (404 at {job_path(job)})")
    if not 200 <= response.status_code < 400:
        raise CheckFailed(f"Jenkins answered {response.status_code} to the trigger of job {job!r}")
    return QueuedBuild(status=response.status_code, queue_url=response.headers.get("Location"))
