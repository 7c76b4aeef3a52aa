"""Every `ps …` line of README.md parses with the real CLI: an option the README names must exist.

Lines come from shell code blocks and inline code spans, and the deployment-type table
(`canary-manual --weight PCT` is `ps deploy --type canary-manual --weight PCT`). They are synopses, so:
`[...]` is optional, `a|b` are alternatives, `X...` repeats, `…` elides, and an upper-case word (`PCT`,
`BUILD_ID`, `K=V`) is a placeholder filled with a valid sample for the parameter it belongs to. Every
variant (each optional group and each alternative on its own) is parsed with click, strictly.
"""

from __future__ import annotations

import io
import re
import shlex
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# `ps aux`-style lines go to the system's ps; only these first words are meant that way.
SYSTEM_PS_WORDS = {"aux", "ax", "-ef", "-e", "-p"}
ELIDED = "…"  # `ps deploy --type …`: some value
PLACEHOLDER = re.compile(r"\$?[A-Z][A-Z0-9_]*(=[A-Z][A-Z0-9_]*)?(\.[a-z]+)?")  # `PCT`, `"$DEPLOY_TYPE"`


@dataclass(frozen=True)
class ReadmeLine:
    """One `ps` line of the README and where it is."""

    line: int
    text: str

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.text}"


def _code_lines(text: str) -> list[ReadmeLine]:
    """`ps` lines of ```sh blocks (comments cut, `\\` continuations joined)."""
    found: list[ReadmeLine] = []
    in_block, lang, pending, start = False, "", "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block, lang = (not in_block), stripped[3:].strip()
            continue
        if not in_block or lang not in ("sh", "bash", "shell", ""):
            continue
        line = re.sub(r"\s+#.*$", "", raw).strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line == "ps" or line.startswith("ps "):
            found.append(ReadmeLine(start, line))
    return found


def _inline_lines(text: str) -> list[ReadmeLine]:
    """Inline code spans that are `ps` lines, and the deploy types of the table."""
    found: list[ReadmeLine] = []
    in_block = False
    in_types = False
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            continue
        if raw.startswith("#"):
            in_types = "Deployment types" in raw
        spans = re.findall(r"`([^`]+)`", raw)
        for span in spans:
            span = span.replace("\\|", "|")
            if span == "ps" or span.startswith("ps "):
                found.append(ReadmeLine(number, span))
        if in_types and raw.startswith("| `") and spans:
            found.append(ReadmeLine(number, "ps deploy --type " + spans[0].replace("\\|", "|")))
    return found


def readme_lines() -> list[ReadmeLine]:
    text = README.read_text(encoding="utf-8")
    lines = _code_lines(text) + _inline_lines(text)
    split: list[ReadmeLine] = []
    for item in lines:  # `ps lock status | ps lock release` are two lines
        for part in re.split(r"\s+\|\s+(?=ps\b)", item.text):
            split.append(ReadmeLine(item.line, part.strip()))
    return split


# ---------------------------------------------------------------- synopsis -> argument lists

Item = str | list[list["Item"]]  # a word, or an optional group of alternatives


def _tokens(text: str) -> list[str]:
    spaced = text.replace("]...", "]").replace("[", " [ ").replace("]", " ] ")  # `[--tag T]...` repeats
    words = shlex.split(spaced)
    for stop, word in enumerate(words):  # a shell redirection ends what ps parses (`ps config schema > f`)
        if word in (">", ">>", "2>", "&&", ";"):
            words = words[:stop]
            break
    return [ELIDED if t in ("…", "...") else t for t in words]


def _parse(tokens: list[str], pos: int = 0, closing: bool = False) -> tuple[list[list[Item]], int]:
    """Alternatives of sequences, up to a closing `]` when inside a group."""
    alternatives: list[list[Item]] = [[]]
    while pos < len(tokens):
        token = tokens[pos]
        if token == "[":
            group, pos = _parse(tokens, pos + 1, closing=True)
            alternatives[-1].append(group)
            continue
        if token == "]":
            assert closing, "unbalanced ]"
            return alternatives, pos + 1
        if token == "|" and closing:
            alternatives.append([])
        else:
            alternatives[-1].append(token.removesuffix("..."))
        pos += 1
    assert not closing, "unbalanced ["
    return alternatives, pos


def _expand(seq: list[Item]) -> list[list[str]]:
    """Argument lists for a sequence: the bare one, then each group alternative and each `a|b` word."""
    def base(items: list[Item]) -> list[str]:
        return [item.split("|")[0] if "|" in item and not item.startswith("-") else item
                for item in items if isinstance(item, str)]

    variants = [base(seq)]
    for index, item in enumerate(seq):
        if isinstance(item, str) and "|" in item and not item.startswith("-"):
            for word in item.split("|"):
                variants.append(base([*seq[:index], word, *seq[index + 1:]]))
        elif isinstance(item, list):
            for alternative in item:
                for inner in _expand(alternative):
                    head, tail = base(seq[:index]), base(seq[index + 1:])
                    variants.append([*head, *inner, *tail])
    return variants


def argument_lists(text: str) -> list[list[str]]:
    """Every variant of a synopsis line, `ps` dropped."""
    alternatives, _ = _parse(_tokens(text))
    assert len(alternatives) == 1
    result: list[list[str]] = []
    for variant in _expand(alternatives[0]):
        if variant and variant[0] == "ps":
            variant = variant[1:]
        if variant == [ELIDED]:
            variant = []
        if variant not in result:
            result.append(variant)
    return result


# ---------------------------------------------------------------- strict parsing with placeholders


def sample(param: click.Parameter) -> str:
    """A valid value for a placeholder of `param`."""
    from pipeline_steps.cli.types import HttpUrl, ImageTag, Percent

    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, ImageTag):
        return "0123456789ab"
    if isinstance(kind, Percent):
        return "10"
    if isinstance(kind, HttpUrl):
        return "https://ci.example.com/job/1/"
    if isinstance(kind, click.IntRange | click.FloatRange):
        low = kind.min if kind.min is not None else kind.max
        return str(low if low is not None else 1)
    if kind.name in ("integer", "float", "duration"):
        return "1"
    return "sample"


def _fill(args: list[str], params: list[click.Parameter], strict: bool) -> list[str]:
    """Placeholders (and an elided `…` value) replaced by samples of the parameter they belong to.

    Not strict (a group's own arguments): a placeholder of no group option is left for the step."""
    options = {name: p for p in params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}
    positional = [p for p in params if isinstance(p, click.Argument)]
    filled: list[str] = []
    for index, word in enumerate(args):
        if PLACEHOLDER.fullmatch(word) or word == ELIDED:
            before = options.get(args[index - 1]) if index else None
            owner: click.Parameter | None = before if before is not None and not before.is_flag else None
            if owner is None and word != ELIDED:
                owner = positional[0] if positional else None
            if owner is None and strict:
                if word == ELIDED:
                    continue
                raise click.UsageError(f"placeholder {word} belongs to no option or argument")
            elif owner is not None:
                word = sample(owner)
        filled.append(word)
    return filled


def parse(args: list[str]) -> click.Context:
    """Resolve `ps ARGS` through the real CLI with strict parsing, placeholders filled per parameter.

    A bare step name (`ps set-weights` mentioned in a sentence) only has to exist."""
    from pipeline_steps.cli import cli

    command: click.Command = cli
    ctx = cli.make_context("ps", _fill(args, cli.params, strict=False), resilient_parsing=False)
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            if command is cli:
                raise click.UsageError("no step named")
            return ctx
        name, sub, sub_args = command.resolve_command(ctx, rest)
        if sub is None or name is None:
            raise click.UsageError(f"no such step {rest[0]!r}")
        if not sub_args and not isinstance(sub, click.Group):
            return ctx
        strict = not isinstance(sub, click.Group)
        ctx = sub.make_context(name, _fill(sub_args, sub.params, strict), parent=ctx, resilient_parsing=False)
        command = sub
    return ctx


def check(args: list[str]) -> None:
    """Parse one argument list as `ps` would; UsageError when it would not be accepted."""
    from pipeline_steps.cli import wants_system_ps

    if not args:
        return  # plain `ps`: the system's ps
    if wants_system_ps(args):
        if args[0] not in SYSTEM_PS_WORDS:
            raise click.UsageError(f"{args[0]!r} is no ps step (it would run the system's ps)")
        return
    try:
        with redirect_stdout(io.StringIO()):
            parse(args)
    except click.exceptions.Exit as done:  # --help, --version
        if done.exit_code:
            raise click.UsageError(f"exit {done.exit_code}") from None


LINES = readme_lines()


def test_the_readme_has_its_ps_lines() -> None:
    texts = " ".join(line.text for line in LINES)
    for piece in ("ps history [--limit N] [--type T] [--json]", "ps deploy --type canary-manual --weight PCT",
                  "ps set-weights --canary 10", "ps mattermost-notify --status started|success", "ps aux"):
        assert piece in texts, piece
    assert len(LINES) >= 40


@pytest.mark.parametrize("line", LINES, ids=[line.id for line in LINES])
def test_readme_line_parses_with_the_real_cli(line: ReadmeLine) -> None:
    for args in argument_lists(line.text):
        try:
            check(args)
        except click.UsageError as exc:
            pytest.fail(f"README.md line {line.line}: `ps {shlex.join(args)}`: {exc.format_message()}")


@pytest.mark.parametrize("text", [
    "ps history --no-such-option", "ps history [--limit N] [--frobnicate]", "ps deploy --type T --weight x",
    "ps set-weights --canary 10.5", "ps no-such-step", "ps deploy-everything", "ps deploy --type nope",
    "ps lock status|frobnicate", "ps switch --to blue [--nope X]", "ps deploy --type rollback --to A:B",
])
def test_the_checker_refuses_what_ps_refuses(text: str) -> None:
    with pytest.raises(click.UsageError):
        for args in argument_lists(text):
            check(args)


def test_synopsis_variants() -> None:
    assert argument_lists("ps history [--limit N] [--type T] [--json]") == [
        ["history"], ["history", "--limit", "N"], ["history", "--type", "T"], ["history", "--json"]]
    assert argument_lists("ps set-weights --canary PCT [--service S | --all]") == [
        ["set-weights", "--canary", "PCT"], ["set-weights", "--canary", "PCT", "--service", "S"],
        ["set-weights", "--canary", "PCT", "--all"]]
    assert ["switch", "--to", "green"] in argument_lists("ps switch --to blue|green")
    check(["history", "--limit", "N", "--json"])
    check(["--json", "history", "--limit", "3"])
