"""What every bench/ script shares: where its figures go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json and return its path relative to the repo."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out.relative_to(RESULTS.parent.parent)
