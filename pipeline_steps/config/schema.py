"""The JSON Schema of ps.yaml, generated from the models (`ps config schema` prints it).

pipeline_steps/schema/ps.schema.json is this output, committed for editors; a test keeps them equal.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from pipeline_steps.config.models import PsFile

SCHEMA_ID = "https://pipeline-steps.dev/schema/ps.schema.json"


class _Generator(GenerateJsonSchema):
    """Draft 2020-12 with ps's header; titles pydantic derives from field names are left out."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def dict_schema(self, schema: Any) -> Any:
        """Mapping keys with a pattern: every key must match (pydantic would let others through)."""
        js = super().dict_schema(schema)
        patterns = js.pop("patternProperties", None)
        if patterns:
            (pattern, values), = patterns.items()
            js["propertyNames"] = {**js.get("propertyNames", {}), "pattern": pattern}
            js["additionalProperties"] = values
        return js


def json_schema() -> dict[str, Any]:
    """The schema as data."""
    body = PsFile.model_json_schema(mode="validation", schema_generator=_Generator)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **body}


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
