"""The `ps` command: global options, lazily loaded steps, exit codes, and the system-`ps` pass-through."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

import click

from pipeline_steps import __version__
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import EXIT_USAGE, PsError
from pipeline_steps.secrets import mask, register_environment

# name -> (where the command lives, its one-line summary for `ps --help`). Modules are imported only
# when their command runs, so `ps --help` never loads docker, gitlab, requests or crossplane.
# tests/unit/test_cli.py keeps each summary equal to the first line of the command's docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("pipeline_steps.cli.config:group",
               "Check ps.yaml and show the effective configuration."),
    "init": ("pipeline_steps.cli.init:command",
             "Write a ps.yaml from a docker-compose.yml and name what it could not carry over."),
    "context": ("pipeline_steps.cli.context:command",
                "Show the CI context: commit, BUILD_ID, branch, author and links."),
    "build": ("pipeline_steps.cli.build:command",
              "Build service images tagged <registry>/<app>/<service>:<BUILD_ID>."),
    "push": ("pipeline_steps.cli.push:command",
             "Push the built images to the registry (REGISTRY_USER / REGISTRY_PASSWORD or docker login)."),
    "health-gate": ("pipeline_steps.cli.health_gate:command",
                    "Wait until every target is healthy (exit 0), or give up with the last reason (exit 1)."),
    "mattermost-notify": ("pipeline_steps.cli.mattermost_notify:command",
                          "Post a deploy notification to Mattermost (a failure warns and exits 0 unless "
                          "--fail-on-error)."),
    "deploy-env": ("pipeline_steps.cli.deploy_env:command",
                   "Run the service image in SLOT on every configured host."),
    "status": ("pipeline_steps.cli.status:command",
               "Show every slot on every host; exit 1 when hosts run different BUILD_IDs for a slot."),
    "set-weights": ("pipeline_steps.cli.set_weights:command",
                    "Set the stable/canary weights in the nginx upstreams and reload nginx safely."),
    "switch": ("pipeline_steps.cli.switch:command",
               "Send the traffic to COLOR; the other color stays as nginx backup."),
    "verify-weights": ("pipeline_steps.cli.verify_weights:command",
                       "Prove the live nginx weights (and measured split) match the expectation; exit 1 "
                       "if not."),
    "traffic": ("pipeline_steps.cli.traffic:group", "How nginx splits traffic between the slots."),
    "router": ("pipeline_steps.cli.router:group", "Write the first nginx include (router init)."),
    "deploy": ("pipeline_steps.cli.deploy:command",
               "Run a deployment type: stable, canary-manual, canary-auto, promote-canary, rollback, "
               "blue-green."),
    "pipeline": ("pipeline_steps.cli.pipeline:group",  # issue 15 (ci helper)
                 "A CI pipeline's stages as one deploy: lease the lock, record, notify once."),
    "lock": ("pipeline_steps.cli.lock:group",
             "The deploy lock: one deployment per app at a time, across CI agents."),
    "run": ("pipeline_steps.cli.run:command",
            "Run a one-off job in a new container of a service's image."),
    "history": ("pipeline_steps.cli.history:command",
                "Show the recorded deployment actions (time, type, BUILD_IDs, weights, result, who)."),
    "webhook": ("pipeline_steps.cli.webhook:group",
                "Receive GitLab push events and start a canary-auto deploy."),
    "gitlab-status": ("pipeline_steps.cli.gitlab_status:command",
                      "Set a GitLab commit status (GITLAB_URL, GITLAB_TOKEN from the environment)."),
}

GLOBAL_OPTIONS = {"--config", "--json", "--dry-run", "-v", "--verbose", "--version", "--help", "-h"}

EXIT_CODES_HELP = """\b
Exit codes:
  0  done
  1  the step ran and its check said no
  2  bad usage, config or input
  3  a needed system is unreachable (Docker engine, registry, nginx, webhook endpoint)

Any step option can also come from PS_<STEP>_<OPTION>, e.g. PS_HEALTH_GATE_RETRIES=30.
A first argument that is not a ps command (`ps aux`, `ps -ef`) runs the system's ps."""


def _available(name: str) -> bool:
    module = COMMANDS[name][0].partition(":")[0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    """Imports a step's module only when that step is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `ps --help`, without importing every step."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit))
                for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module_name, _, attr = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return with_json_option(command)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PsError as exc:
            exc.output = ctx.find_object(Output)
            raise


@click.group(cls=LazyGroup, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", default="ps.yaml", envvar="PS_CONFIG", show_default=True,
              metavar="FILE", help="Configuration file (env PS_CONFIG).")
@click.option("--json", "json_mode", is_flag=True,
              help="One JSON object per step on stdout; human lines on stderr.")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("-v", "--verbose", is_flag=True, help="More detail; tracebacks on internal errors.")
@click.version_option(__version__, "--version", prog_name="ps (pipeline-steps)")
@click.pass_context
def cli(ctx: click.Context, config_path: str, json_mode: bool, dry_run: bool, verbose: bool) -> None:
    """pipeline-steps: small, idempotent deployment steps for Jenkins, GitLab CI and by hand."""
    ctx.obj = Output(json_mode=json_mode, verbose=verbose, dry_run=dry_run, config_path=config_path)


def _json_after_the_step(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        out = ctx.find_object(Output)
        if out is not None:
            out.json_mode = True


def with_json_option(command: click.Command) -> click.Command:
    """Give `command` (and a group's subcommands) a `--json` that works like `ps --json`.

    Users type `ps history --json` as often as `ps --json history`; both mean the same."""
    if not any("--json" in getattr(param, "opts", ()) for param in command.params):
        command.params.append(click.Option(
            ["--json", "json_after"], is_flag=True, expose_value=False, callback=_json_after_the_step,
            help="Same as ps --json: one JSON object on stdout, human lines on stderr."))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_json_option(sub)
    return command


def _our_own(path: str) -> bool:
    """True for an executable that is this toolkit's entry point (so pass-through never loops)."""
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.realpath(path) == me:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
    except OSError:
        return True
    return b"pipeline_steps" in head


def system_ps() -> str | None:
    """The next `ps` on PATH that is not ours."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", "ps")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and not _our_own(candidate):
            return candidate
    return None


def wants_system_ps(argv: Sequence[str]) -> bool:
    """True when the first argument is neither one of our commands nor a global option."""
    if not argv:
        return True
    first = argv[0]
    if first in COMMANDS or first.split("=", 1)[0] in GLOBAL_OPTIONS:
        return False
    return True


def _pass_through(argv: Sequence[str]) -> None:
    target = system_ps()
    if target is None:
        click.echo(f"ps: {argv[0] if argv else ''!r} is not a pipeline-steps command and no system ps "
                   "was found on PATH (see ps --help)", err=True)
        sys.exit(EXIT_USAGE)
    os.execv(target, ["ps", *argv])


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `ps` and `pipeline-steps`."""
    args = list(sys.argv[1:] if argv is None else argv)
    invoked_as = os.path.basename(sys.argv[0]) if sys.argv else "ps"
    if invoked_as == "ps" and wants_system_ps(args):
        _pass_through(args)
    register_environment(os.environ)
    verbose = "-v" in args or "--verbose" in args
    _mask_stray_output(verbose)
    try:
        code = cli.main(args=args, prog_name="ps", standalone_mode=False, auto_envvar_prefix="PS")
        sys.exit(code if isinstance(code, int) else 0)
    except PsError as exc:
        if verbose:
            _print_traceback(exc)
        _emit_failure(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ps: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(mask(usage_line(exc)), err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:  # e.g. a FileError: a file given on the command line
        click.echo(mask(f"ps: {_one_line(exc.format_message())}"), err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("ps: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the promise is one line, never a traceback (unless -v)
        if verbose:
            _print_traceback(exc)
        click.echo(mask(f"ps: internal error: {type(exc).__name__}: {exc} (run with -v for details)"),
                   err=True)
        sys.exit(1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def usage_line(exc: click.UsageError) -> str:
    """A click usage error as the one `ps:` line: the message, then where to read more.

    `ps: No such option '--frobnicate' (try 'ps set-weights --help')`"""
    line = f"ps: {_one_line(exc.format_message()).rstrip('.')}"
    ctx = exc.ctx
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        line += f" (try '{ctx.command_path} --help')"
    return line


def _mask_stray_output(verbose: bool) -> None:
    """Python warnings and uncaught exceptions of threads print through the same masking too."""
    import threading
    import warnings

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: object = None, line: str | None = None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        click.echo(mask(text), err=True, nl=False)

    def thread_failed(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            if verbose:
                _print_traceback(args.exc_value)
            name = args.thread.name if args.thread else "?"
            click.echo(mask(f"ps: internal error in thread {name}: {type(args.exc_value).__name__}: "
                            f"{args.exc_value}"), err=True)

    warnings.showwarning = show_warning
    threading.excepthook = thread_failed


def _print_traceback(exc: BaseException) -> None:
    """The traceback of `exc` on stderr, through the same masking as every other line."""
    import traceback

    click.echo(mask("".join(traceback.format_exception(exc))), err=True, nl=False)


def _emit_failure(exc: PsError) -> None:
    from pipeline_steps.errors import ConfigError

    if isinstance(exc, ConfigError) and exc.result is None:
        exc.result = {"problems": exc.problems}
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        for problem in exc.problems:  # every problem with its path, one per line
            click.echo(mask(f"ps: {exc.source}: {problem}"), err=True)
    else:
        click.echo(mask(f"ps: {exc.message}"), err=True)
    out = exc.output
    if isinstance(out, Output) and out.json_mode and exc.result is not None:
        import json

        from pipeline_steps.secrets import mask_obj

        record = {"ok": False, "exit_code": exc.exit_code, "error": exc.message, **exc.result}
        click.echo(json.dumps(mask_obj(record), default=str))


def run() -> None:
    """Console-script entry: main(), then exit without the interpreter's teardown.

    Finalising an interpreter that has loaded docker, requests and urllib3 takes ~50 ms, and a step's
    exit is on the pipeline's critical path (health-gate lets the next stage go the moment it exits).
    Every step closes what it opened itself; only the standard streams need a flush.
    """
    code: int
    try:
        main()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            click.echo(str(exc.code), err=True)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

