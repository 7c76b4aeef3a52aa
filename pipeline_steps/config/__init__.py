"""ps.yaml: the configuration objects, and loading and validating the file.

- objects.py: the frozen dataclasses the rest of ps uses (Config, Service, Host, ...) and every default;
  light to import, so step modules and `ps --help` never load pydantic or yaml.
- types.py, models.py: the file as pydantic models (value types, mappings, relations between fields),
  the one source of both validation and the JSON Schema (schema.py, `ps config schema`).
- loader.py: YAML without duplicate keys or deep nesting, every problem with its path, one ConfigError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline_steps.config.objects import (
    DEFAULT_CONFIG,
    DEFAULT_TIMEZONE,
    SLOT_NAMES,
    SLOT_PAIRS,
    AnalysisPolicy,
    BlueGreenPolicy,
    CanaryPolicy,
    CanaryStep,
    Config,
    DeployPolicy,
    HealthSpec,
    Host,
    HostTls,
    MattermostNotify,
    NginxRouter,
    Segment,
    Service,
    StickyKey,
)

__all__ = ["DEFAULT_CONFIG", "DEFAULT_TIMEZONE", "SLOT_NAMES", "SLOT_PAIRS", "AnalysisPolicy",
           "BlueGreenPolicy", "CanaryPolicy", "CanaryStep", "Config", "DeployPolicy", "HealthSpec", "Host",
           "HostTls", "MattermostNotify", "NginxRouter", "Segment", "Service", "StickyKey", "load_config",
           "parse_config"]


def parse_config(raw: Any, source: str = DEFAULT_CONFIG, base_dir: Path | None = None) -> Config:
    """Validate raw YAML data and build a Config; raise ConfigError listing every problem."""
    from pipeline_steps.config.loader import parse

    return parse(raw, source, base_dir)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate ps.yaml (default: $PS_CONFIG or ./ps.yaml)."""
    from pipeline_steps.config.loader import load

    return load(path)
