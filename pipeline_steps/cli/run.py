"""`ps run SERVICE [--host H] -- CMD...`: a one-off job in a new container of the service's image."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import BUILD_ID, Duration
from pipeline_steps.errors import BadInput, PsError


class JobExit(PsError):
    """The job ran and exited non-zero (or timed out): ps exits with the job's own code (124 on timeout)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


@click.command("run")
@click.argument("service_name", metavar="SERVICE")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
@click.option("--host", "host_name", metavar="NAME", help="The host it runs on (default: the first).")
@click.option("--build-id", type=BUILD_ID, metavar="ID",
              help="The image's BUILD_ID (default: the CI context's).")
@click.option("--timeout", type=Duration(), default="10m", show_default=True, help="Killed after this long.")
@pass_output
def command(out: Output, service_name: str, cmd: tuple[str, ...], host_name: str | None,
            build_id: str | None, timeout: float) -> None:
    """Run a one-off job in a new container of a service's image.

    CMD runs once in a new container of SERVICE's image with its env, networks, volumes and limits; its
    output is streamed, its exit code passed through (124 on --timeout), the container removed afterwards.
    """
    from pipeline_steps.operations.run_job import job_host, run_job

    config = load(out)
    service = config.service(service_name)
    host = job_host(config, host_name, service)
    if build_id is None:
        from pipeline_steps.context import detect

        build_id = detect().build_id
    if out.dry_run:
        out.say(f"would run {' '.join(cmd)} in {config.image_ref(service, build_id)} on host {host.name}")
        return
    if not cmd:
        raise BadInput("no command to run (give it after --)")
    result = run_job(config, service, build_id, cmd, host=host, timeout=timeout, on_output=out.say)
    report(out, "run", asdict(result))
    if not result.ok:
        raise JobExit(result.summary, 124 if result.exit_code is None else result.exit_code)
    out.say(result.summary)
