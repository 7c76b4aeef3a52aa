"""The report's judgement plots (canary.analysis): per step and service, error rate and p99 at each
look, canary against stable, as one self-contained SVG (split from report.py)."""

from __future__ import annotations

from typing import Any

from pipeline_steps.deploy.escape import esc

CANARY_COLOR, STABLE_COLOR = "#ff7f0e", "#1f77b4"

def judgement_svg(step: str, upstream: str, looks: list[dict[str, Any]], width: int = 900) -> str:
    """Two panels side by side: error rate (%) and p99 (ms) at each look, canary and stable."""
    panel_w, panel_h, left, top = (width - 3 * 60) // 2, 160, 60, 24
    t0 = looks[0]["t"]
    span = max(0.001, looks[-1]["t"] - t0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="judgement" width="{width}" '
             f'height="{top + panel_h + 40}" font-family="sans-serif" font-size="11" role="img" '
             f'aria-label="judgement {esc(upstream)} step {esc(step)}">',
             f"<title>{esc(upstream)} step {esc(step)}: error rate and p99, canary against stable</title>",
             '<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>']
    panels = (("error rate %", lambda side: None if side.get("error_rate") is None
               else 100.0 * float(side["error_rate"])), ("p99 ms", lambda side: side.get("p99_ms")))
    for i, (label, value) in enumerate(panels):
        x0 = left + i * (panel_w + 60)
        series = {name: [(lk["t"] - t0, value(lk[name])) for lk in looks if value(lk[name]) is not None]
                  for name in ("canary", "stable")}
        high = max([v for pts in series.values() for _, v in pts] + [0.001]) * 1.1
        parts.append(f'<rect x="{x0}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" '
                     'stroke="#bdbdbd"/>')
        parts.append(f'<text x="{x0}" y="{top - 8}">{esc(label)}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{top + 4}" text-anchor="end">{high:.3g}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{top + panel_h}" text-anchor="end">0</text>')
        parts.append(f'<text x="{x0 + panel_w}" y="{top + panel_h + 14}" text-anchor="end">'
                     f"{span:.1f}s</text>")
        for name, color in (("canary", CANARY_COLOR), ("stable", STABLE_COLOR)):
            pts = " ".join(f"{round(x0 + panel_w * t / span, 2)},{round(top + panel_h * (1 - v / high), 2)}"
                           for t, v in series[name])
            if pts:
                parts.append(f'<polyline class="{name}" data-metric="{esc(label)}" points="{pts}" '
                             f'fill="none" stroke="{color}" stroke-width="2">'
                             f"<title>{name} {esc(label)}</title></polyline>")
    y = top + panel_h + 32
    parts.append(f'<text x="{left}" y="{y}" fill="{CANARY_COLOR}">canary</text>'
                 f'<text x="{left + 60}" y="{y}" fill="{STABLE_COLOR}">stable</text>'
                 f'<text x="{left + 120}" y="{y}" fill="#616161">one point per look; x: seconds into the '
                 "hold</text>")
    parts.append("</svg>")
    return "\n".join(parts)
