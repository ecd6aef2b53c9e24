"""GET /hub/api/gpulab/openapi.json: the gpulab REST API as an OpenAPI 3.1 document.

Served without a token: it says what the API accepts, as the docs do, and holds nothing
about any user, so clients and tools (code generators, schemathesis) read it as they are.
The document is ``openapi.yaml`` beside this module, kept by hand with the handlers,
except the schemas of the request bodies the hub checks with pydantic models (a job, a
sweep, a model deployment and its changes: ``BODIES``). Those are generated from the
models, between two marker lines under ``components.schemas``; each operation's request
body names its model's schema. Regenerate them, or check that they are current::

    .venv/bin/python -m gpulab.hub.api.openapi --write
    .venv/bin/python -m gpulab.hub.api.openapi --check
"""

from __future__ import annotations

import functools
import json
import sys
import textwrap
from pathlib import Path

import yaml
from jupyterhub.apihandlers.base import APIHandler
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gpulab.hub.generated import generator_cli
from gpulab.hub.workloads.model_spec import ModelBody, ModelChanges
from gpulab.hub.workloads.spec import JobBody
from gpulab.hub.workloads.sweeps import SweepBody

DOCUMENT = Path(__file__).with_name("openapi.yaml")
COMMAND = ".venv/bin/python -m gpulab.hub.api.openapi --write"
BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/gpulab/jobs"): JobBody,
    ("post", "/gpulab/sweeps"): SweepBody,
    ("post", "/gpulab/models"): ModelBody,
    ("patch", "/gpulab/models/{name}"): ModelChanges,
}
"""Each operation whose body a model checks, and the model."""
REF = "#/components/schemas/{model}"
BEGIN = (
    "    # -- generated from the request bodies' models in hub/workloads (spec.py, sweeps.py,\n"
    f"    # model_spec.py): edit those, then run {COMMAND}\n"
)
END = "    # -- end of the generated schemas\n"
GENERATED = "the generated schemas"


@functools.cache
def openapi_document() -> dict:
    """The OpenAPI document of the gpulab API, read once."""
    return yaml.safe_load(DOCUMENT.read_text())


class OpenAPIHandler(APIHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(openapi_document()))


default_handlers = [(r"/api/gpulab/openapi.json", OpenAPIHandler)]


# -- the request bodies' schemas, from their models ----------------------------------------


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema, as a hand would write it: no titles made up from names,
    and an object with a pattern for its keys refuses other keys, as its model does."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def dict_schema(self, schema) -> dict:
        out = super().dict_schema(schema)
        if "patternProperties" in out:
            ((pattern, values),) = out.pop("patternProperties").items()
            out["propertyNames"] = {"pattern": pattern, **out.get("propertyNames", {})}
            out["additionalProperties"] = values
        return out


def _tidy(node: object, names: bool = False) -> object:
    """``node`` without the models' titles, its descriptions on one line in Markdown.
    ``names``: ``node`` maps names to schemas (``properties``), not keywords."""
    if isinstance(node, list):
        return [_tidy(n) for n in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: _tidy(schema) for name, schema in node.items()}
    return {key: _tidy_keyword(key, value) for key, value in node.items() if key != "title"}


def _tidy_keyword(key: str, value: object) -> object:
    if key == "description" and isinstance(value, str):
        return " ".join(value.replace("``", "`").split())
    return _tidy(value, names=key in ("properties", "$defs"))


def body_schemas() -> dict[str, dict]:
    """The schemas of ``BODIES``' models and of the models they hold, by name."""
    models = [(model, "validation") for model in BODIES.values()]
    _, top = models_json_schema(models, ref_template=REF, schema_generator=_Schemas)
    return _tidy(top["$defs"], names=True)


def generated_block(schemas: dict[str, dict]) -> str:
    """The text between (and with) the marker lines: ``schemas`` as YAML."""
    text = yaml.safe_dump(
        schemas, sort_keys=False, default_flow_style=None, width=88, allow_unicode=True
    )
    return BEGIN + textwrap.indent(text, "    ") + END


def current_text(text: str) -> tuple[str, list[str]]:
    """The document ``text`` with its generated schemas made current, and what in it
    disagrees with the models: ``the generated schemas`` (stale), or an operation whose
    request body is not its model's schema (fixed by hand)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOCUMENT.name}: no generated schemas between marker lines")
    schemas = body_schemas()
    block = generated_block(schemas)
    problems = [] if text[start : end + len(END)] == block else [GENERATED]
    by_hand = yaml.safe_load(text[:start] + text[end + len(END) :])["components"]["schemas"]
    problems += [f"{n}: a schema by hand and a generated one" for n in by_hand if n in schemas]
    text = text[:start] + block + text[end + len(END) :]
    doc = yaml.safe_load(text)
    for (method, path), model in BODIES.items():
        op = doc["paths"].get(path, {}).get(method) or {}
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        if content.get("schema") != {"$ref": REF.format(model=model.__name__)}:
            problems.append(f"{method.upper()} {path}: its request body is not {model.__name__}")
    return text, problems


def stale_document(path: Path = DOCUMENT, write: bool = False) -> list[str]:
    """What in the document at ``path`` disagrees with the models (with ``write``, the
    generated schemas are written anew)."""
    text = path.read_text()
    current, problems = current_text(text)
    if write and current != text:
        path.write_text(current)
    return problems


def main(argv: list[str] | None = None) -> int:
    return generator_cli(
        argv,
        prog="python -m gpulab.hub.api.openapi",
        description=f"Generate the request bodies' schemas in {DOCUMENT.name} from their "
        "models; without an option, print them as JSON.",
        write_help="write them into the document",
        check_help="exit 1 when the document is stale",
        show=lambda: json.dumps(body_schemas(), indent=2),
        stale=lambda write: stale_document(write=write),
        command=COMMAND,
        fixable=lambda problem: problem == GENERATED,
    )


if __name__ == "__main__":
    sys.exit(main())
