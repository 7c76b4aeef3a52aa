"""The run report of one deployment: a JSON record and an HTML page with an SVG timeline.

`--report FILE` writes FILE (JSON) and FILE with the suffix .html beside it: canary weight per
service as a step line over time, health checks as green/red dots, step markers and a rollback
marker. Self-contained: no external assets, no JavaScript. Every text is escaped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.config.objects import DEFAULT_TIMEZONE

# characters XML 1.0 does not allow (C0 controls but tab/newline/return, surrogates, U+FFFE/U+FFFF)
from pipeline_steps.deploy.escape import esc
from pipeline_steps.deploy.report_judgement import judgement_svg
from pipeline_steps.errors import BadInput
from pipeline_steps.files import atomic_write
from pipeline_steps.secrets import mask, mask_obj

KINDS = ("weights", "health", "step", "rollback", "notify")
PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f")
OK_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"


@dataclass(frozen=True)
class ReportEvent:
    """Something that happened `t` seconds after the run started."""

    t: float
    kind: str
    message: str = ""
    weights: dict[str, float] | None = None  # service -> canary percent
    service: str | None = None
    ok: bool | None = None


@dataclass
class RunReport:
    """Collects the events of one run; `write(path)` saves the JSON and the HTML page."""

    app: str
    deploy_type: str
    timezone: str = DEFAULT_TIMEZONE
    build_ids: dict[str, str] = field(default_factory=dict)
    pipeline_url: str | None = None
    who: str | None = None
    clock: Callable[[], float] = time.monotonic
    events: list[ReportEvent] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    judgements: list[dict[str, Any]] = field(default_factory=list)  # canary.analysis: every look
    result: str | None = None
    message: str = ""
    started: str = ""
    finished: str | None = None
    duration: float | None = None
    hosts: list[str] = field(default_factory=list)  # where the run acted (issue 12)
    routers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from pipeline_steps.deploy.lock import now_iso

        self._t0 = self.clock()
        self.started = self.started or now_iso(self.timezone)

    # ---------------------------------------------------------------- collecting

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self._t0)

    def add(self, kind: str, message: str = "", *, weights: dict[str, float] | None = None,
            service: str | None = None, ok: bool | None = None, at: float | None = None) -> ReportEvent:
        """Record an event (kind: weights, health, step, rollback or notify)."""
        if kind not in KINDS:
            raise ValueError(f"unknown report event kind {kind!r} (known: {', '.join(KINDS)})")
        event = ReportEvent(t=round(self.elapsed() if at is None else max(0.0, at), 3), kind=kind,
                            message=message,
                            weights={k: float(v) for k, v in weights.items()} if weights else None,
                            service=service, ok=ok)
        self.events.append(event)
        return event

    def weights(self, percents: dict[str, float], message: str = "", at: float | None = None) -> ReportEvent:
        """Canary percent per service now in force."""
        for service, pct in percents.items():
            if not 0 <= float(pct) <= 100:
                raise ValueError(f"canary percent of {service} must be 0..100, not {pct}")
        return self.add("weights", message, weights=percents, at=at)

    def health(self, service: str, ok: bool, message: str = "", at: float | None = None) -> ReportEvent:
        return self.add("health", message, service=service, ok=ok, at=at)

    def step(self, message: str, at: float | None = None) -> ReportEvent:
        return self.add("step", message, at=at)

    def rollback(self, message: str, at: float | None = None) -> ReportEvent:
        return self.add("rollback", message, at=at)

    def notify(self, message: str, ok: bool = True, at: float | None = None) -> ReportEvent:
        return self.add("notify", message, ok=ok, at=at)

    def judgement(self, step: str, weight: float, judgement: dict[str, Any]) -> None:
        """One look of a judged hold (a Judgement as a dict): a point of the step's judgement plot."""
        self.judgements.append({"t": round(self.elapsed(), 3), "step": step, "weight": weight, **judgement})

    def finish(self, result: str, message: str = "") -> None:
        """Mark the run as ended (result: ok, failed, rolled-back, ...)."""
        from pipeline_steps.deploy.lock import now_iso

        self.result = result
        self.message = message
        self.finished = now_iso(self.timezone)
        self.duration = round(self.elapsed(), 3)

    # ---------------------------------------------------------------- views

    def span(self) -> float:
        """Seconds the timeline covers."""
        last = max((e.t for e in self.events), default=0.0)
        return max(self.duration or 0.0, last, 0.001)

    def services(self) -> list[str]:
        """Services in order of first appearance (weights or health)."""
        seen: dict[str, None] = {}
        for e in self.events:
            for name in (e.weights or {}):
                seen.setdefault(name, None)
            if e.service:
                seen.setdefault(e.service, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "app": self.app, "type": self.deploy_type, "result": self.result, "message": self.message,
            "started": self.started, "finished": self.finished, "duration": self.duration,
            "build_ids": self.build_ids, "pipeline_url": self.pipeline_url, "who": self.who,
            "hosts": self.hosts, "routers": self.routers, "events": [asdict(e) for e in self.events],
        }
        if self.extra:
            data["extra"] = self.extra
        if self.judgements:
            data["judgements"] = self.judgements
        masked: dict[str, Any] = mask_obj(data)
        return masked

    def timeline_text(self) -> str:
        """The events as aligned terminal lines."""
        lines = [f"{self.app} {self.deploy_type} started {self.started}"]
        for e in self.events:
            if e.kind == "weights" and e.weights:
                what = ", ".join(f"{s} {_pct(p)}% canary" for s, p in e.weights.items())
            elif e.kind == "health":
                what = f"{e.service or '?'} {'ok' if e.ok else 'FAIL'}"
            elif e.kind == "notify":
                what = "sent" if e.ok is not False else "FAILED"
            else:
                what = ""
            text = " - ".join(x for x in (what, e.message) if x)
            lines.append(f"  +{e.t:7.1f}s  {e.kind:<8}  {text}")
        if self.result is not None:
            lines.append(f"  +{self.duration or 0:7.1f}s  {'end':<8}  {self.result}"
                         + (f" - {self.message}" if self.message else ""))
        return mask("\n".join(lines))

    def svg(self, width: int = 900) -> str:
        """The timeline as a standalone, well-formed SVG document fragment."""
        return mask(_Timeline(self, width).render())

    def html(self) -> str:
        """A self-contained HTML page: summary, SVG timeline, event table."""
        e = esc
        title = f"{self.app} {self.deploy_type} - {self.result or 'running'}"
        link = self.pipeline_url or ""
        pipeline = (f'<a href="{e(link)}">{e(link)}</a>' if link.startswith(("https://", "http://"))
                    else e(link or "-"))
        builds = ", ".join(f"{e(k)}={e(v)}" for k, v in self.build_ids.items()) or "-"
        state = e(self.result or "running")
        summary = [("app", e(self.app)), ("type", e(self.deploy_type)),
                   ("result", f'<b class="r-{state}">{state}</b>'),
                   ("message", e(self.message or "-")), ("BUILD_IDs", builds),
                   ("hosts", e(", ".join(self.hosts) or "-")), ("routers", e(", ".join(self.routers) or "-")),
                   ("started", e(self.started)), ("finished", e(self.finished or "-")),
                   ("duration", e(f"{self.duration:.1f}s" if self.duration is not None else "-")),
                   ("who", e(self.who or "-")), ("pipeline", pipeline)]
        for key, value in self.extra.items():
            summary.append((e(str(key)), e(json.dumps(value, default=str)
                                         if not isinstance(value, str) else value)))
        rows = []
        for ev in self.events:
            detail = (", ".join(f"{e(s)} {_pct(p)}%" for s, p in (ev.weights or {}).items())
                      if ev.kind == "weights" else e(ev.service or ""))
            status = "" if ev.ok is None else ("ok" if ev.ok else "fail")
            rows.append(f'<tr class="k-{e(ev.kind)}"><td>+{ev.t:.1f}s</td><td>{e(ev.kind)}</td>'
                        f"<td>{detail}</td><td>{e(status)}</td><td>{e(ev.message)}</td></tr>")
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{e(title)}</h1>\n<dl>\n"
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>\n" for k, v in summary)
            + "</dl>\n<h2>Timeline</h2>\n"
            + self.svg() + "\n" + self.judgement_html() + "<h2>Events</h2>\n<table>\n"
            "<tr><th>time</th><th>kind</th><th>service / weights</th><th>status</th><th>message</th></tr>\n"
            + "\n".join(rows) + "\n</table>\n</body>\n</html>\n"
        )
        return mask(page)

    def judgement_html(self) -> str:
        """One plot per judged step and upstream: error rate and p99, canary against stable, per look."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for look in self.judgements:
            groups.setdefault((str(look["step"]), str(look.get("upstream", ""))), []).append(look)
        if not groups:
            return ""
        parts = ["<h2>Judgement</h2>\n"]
        for (step, upstream), looks in groups.items():
            last = looks[-1]
            parts.append(f"<h3>{esc(upstream)}, step {esc(step)} (canary {_pct(float(last['weight']))} %): "
                         f"{esc(last['decision'])}</h3>\n<p>{esc(last['reason'])}</p>\n")
            parts.append(mask(judgement_svg(step, upstream, looks)) + "\n")
        return "".join(parts)

    def write(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the JSON record to `path` and the HTML page beside it (same stem, .html)."""
        json_path = Path(path)
        html_path = json_path.with_suffix(".html")
        if html_path == json_path:
            raise BadInput(f"--report {json_path}: give the JSON file name (the .html page goes beside it)")
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(json_path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
            atomic_write(html_path, self.html())
        except OSError as exc:
            raise BadInput(f"cannot write report {json_path}: {exc.strerror or exc}") from None
        return json_path, html_path


def _pct(value: float) -> str:
    return f"{value:g}"


class _Timeline:
    """Lays out the SVG: weights plot on top, one health row per service below, markers across."""

    LEFT, RIGHT, TOP = 56, 170, 28
    PLOT_H = 200
    ROW_H = 16

    def __init__(self, report: RunReport, width: int) -> None:
        self.r = report
        self.width = max(width, self.LEFT + self.RIGHT + 100)
        self.services = report.services()
        self.span = report.span()
        self.plot_w = self.width - self.LEFT - self.RIGHT
        self.health_top = self.TOP + self.PLOT_H + 16
        self.axis_y = self.health_top + self.ROW_H * max(1, len(self.services)) + 4
        self.height = self.axis_y + 34

    def x(self, t: float) -> float:
        return round(self.LEFT + self.plot_w * min(max(t, 0.0), self.span) / self.span, 2)

    def y(self, pct: float) -> float:
        return round(self.TOP + self.PLOT_H * (1 - min(max(pct, 0.0), 100.0) / 100.0), 2)

    def color(self, service: str) -> str:
        return PALETTE[self.services.index(service) % len(PALETTE)]

    def render(self) -> str:
        e = esc
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                 f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif" font-size="11" '
                 f'role="img" aria-label="{e(self.r.app)} {e(self.r.deploy_type)} timeline">',
                 f"<title>{e(self.r.app)} {e(self.r.deploy_type)}: "
                 "canary weight and health over time</title>",
                 '<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>']
        parts += self._grid()
        parts += self._markers()
        parts += self._weight_lines()
        parts += self._health_dots()
        parts += self._legend()
        parts.append("</svg>")
        return "\n".join(parts)

    def _grid(self) -> list[str]:
        out = []
        right = self.LEFT + self.plot_w
        for pct in (0, 25, 50, 75, 100):
            y = self.y(pct)
            out.append(f'<line x1="{self.LEFT}" y1="{y}" x2="{right}" y2="{y}" stroke="#e0e0e0"/>')
            out.append(f'<text x="{self.LEFT - 6}" y="{y + 4}" text-anchor="end">{pct}%</text>')
        out.append(f'<text x="12" y="{self.TOP + self.PLOT_H / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {self.TOP + self.PLOT_H / 2})">canary weight</text>')
        out.append(f'<line x1="{self.LEFT}" y1="{self.axis_y}" x2="{right}" y2="{self.axis_y}" '
                   'stroke="#555"/>')
        ticks = 6
        for i in range(ticks + 1):
            t = self.span * i / ticks
            x = self.x(t)
            out.append(f'<line x1="{x}" y1="{self.axis_y}" x2="{x}" y2="{self.axis_y + 4}" stroke="#555"/>')
            out.append(f'<text x="{x}" y="{self.axis_y + 16}" text-anchor="middle">{t:.1f}s</text>')
        for i, service in enumerate(self.services):
            y = self.health_top + self.ROW_H * i + self.ROW_H / 2
            out.append(f'<text x="{self.LEFT - 6}" y="{y + 4}" text-anchor="end" fill="#555">health</text>'
                       if i == 0 else "")
            out.append(f'<line x1="{self.LEFT}" y1="{y}" x2="{right}" y2="{y}" stroke="#f0f0f0"/>')
            out.append(f'<text x="{right + 6}" y="{y + 4}" fill="{self.color(service)}">'
                       f"{esc(service)}</text>")
        return [line for line in out if line]

    def _weight_lines(self) -> list[str]:
        out = []
        for service in self.services:
            points: list[tuple[float, float]] = []
            last: float | None = None
            for ev in self.r.events:
                if ev.kind != "weights" or not ev.weights or service not in ev.weights:
                    continue
                pct = ev.weights[service]
                if last is not None:
                    points.append((self.x(ev.t), self.y(last)))
                points.append((self.x(ev.t), self.y(pct)))
                last = pct
            if not points:
                continue
            points.append((self.x(self.span), self.y(last if last is not None else 0.0)))
            text = " ".join(f"{px},{py}" for px, py in points)
            out.append(f'<polyline class="weights" data-service="{esc(service)}" points="{text}" '
                       f'fill="none" stroke="{self.color(service)}" stroke-width="2.5">'
                       f"<title>{esc(service)} canary weight</title></polyline>")
        return out

    def _health_dots(self) -> list[str]:
        out = []
        for ev in self.r.events:
            if ev.kind != "health":
                continue
            row = self.services.index(ev.service) if ev.service in self.services else 0
            y = self.health_top + self.ROW_H * row + self.ROW_H / 2
            color = OK_COLOR if ev.ok else FAIL_COLOR
            label = f"+{ev.t:.1f}s {ev.service or ''} {'ok' if ev.ok else 'FAIL'} {ev.message}".strip()
            out.append(f'<circle class="health {"ok" if ev.ok else "fail"}" cx="{self.x(ev.t)}" cy="{y}" '
                       f'r="4" fill="{color}"><title>{esc(label)}</title></circle>')
        return out

    def _markers(self) -> list[str]:
        out = []
        bottom = self.axis_y
        n = 0
        for ev in self.r.events:
            if ev.kind not in ("step", "rollback", "notify"):
                continue
            x = self.x(ev.t)
            label = esc(f"+{ev.t:.1f}s {ev.kind}: {ev.message}")
            if ev.kind == "rollback":
                out.append(f'<g class="rollback"><line x1="{x}" y1="{self.TOP - 14}" x2="{x}" y2="{bottom}" '
                           f'stroke="{FAIL_COLOR}" stroke-width="2"/>'
                           f'<text x="{x + 3}" y="{self.TOP - 4}" fill="{FAIL_COLOR}" font-weight="bold">'
                           f"rollback</text><title>{label}</title></g>")
            elif ev.kind == "notify":
                color = FAIL_COLOR if ev.ok is False else "#3949ab"
                triangle = f"{x - 4},{bottom} {x + 4},{bottom} {x},{bottom - 7}"
                out.append(f'<g class="notify"><polygon points="{triangle}" fill="{color}"/>'
                           f"<title>{label}</title></g>")
            else:
                n += 1
                out.append(f'<g class="step"><line x1="{x}" y1="{self.TOP - 14}" x2="{x}" y2="{bottom}" '
                           f'stroke="#9e9e9e" stroke-dasharray="4 3"/>'
                           f'<text x="{x + 2}" y="{self.TOP - 16 + 10}" fill="#616161">{n}</text>'
                           f"<title>{label}</title></g>")
        return out

    def _legend(self) -> list[str]:
        x = self.LEFT + self.plot_w + 16
        out = []
        y = self.TOP + 4
        for service in self.services:
            out.append(f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{self.color(service)}" '
                       f'stroke-width="2.5"/><text x="{x + 24}" y="{y + 4}">{esc(service)}</text>')
            y += 16
        for label, color in (("health ok", OK_COLOR), ("health fail", FAIL_COLOR)):
            out.append(f'<circle cx="{x + 9}" cy="{y}" r="4" fill="{color}"/>'
                       f'<text x="{x + 24}" y="{y + 4}">{label}</text>')
            y += 16
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="#9e9e9e" stroke-dasharray="4 3"/>'
                   f'<text x="{x + 24}" y="{y + 4}">step</text>')
        y += 16
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{FAIL_COLOR}" stroke-width="2"/>'
                   f'<text x="{x + 24}" y="{y + 4}">rollback</text>')
        return out


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #212121; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: bold; } dd { margin: 0; font-family: monospace; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
tr.k-rollback td { color: #c62828; font-weight: bold; }
.r-ok { color: #2e7d32; } .r-failed, .r-rolled-back { color: #c62828; }
"""
