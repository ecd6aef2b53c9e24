"""GET /hub/api/gpulab/openapi.json: the gpulab REST API as an OpenAPI 3.1 document.

Served without a token: it says what the API accepts, as the docs do, and holds nothing
about any user, so clients and tools (code generators, schemathesis) read it as they are.
The document is ``openapi.yaml`` beside this module, kept by hand with the handlers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml
from jupyterhub.apihandlers.base import APIHandler

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@functools.cache
def openapi_document() -> dict:
    """The OpenAPI document of the gpulab API, read once."""
    return yaml.safe_load(DOCUMENT.read_text())


class OpenAPIHandler(APIHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(openapi_document()))


default_handlers = [(r"/api/gpulab/openapi.json", OpenAPIHandler)]
