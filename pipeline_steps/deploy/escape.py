"""Escaping for the report's HTML and SVG: one rule for every text that goes into the page."""

from __future__ import annotations

import html

from pipeline_steps.secrets import mask

_NOT_XML = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000),
                              0xFFFE, 0xFFFF]}


def esc(text: object) -> str:
    """Text made safe for HTML and XML alike: secrets masked, invalid characters dropped, markup escaped."""
    return html.escape(mask(str(text)).translate(_NOT_XML), quote=True)
