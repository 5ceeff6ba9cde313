"""The request schemas in /openapi.json.

The generation routes read their raw body and validate it with the protocol's own pydantic models
(`CompletionRequest.parse`), so that every failure gets OpenAI's error shape and a message naming the
field; FastAPI therefore sees no body parameter and would describe none. `declare_request_bodies` adds
each route's request model (its JSON schema, in pydantic's validation mode) to the document, so client
generators and OpenAPI viewers see the same contract the server enforces.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


def declare_request_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Make app.openapi() declare `bodies[path]` as the JSON request body of `POST path`."""
    _, top = models_json_schema([(model, "validation") for model in bodies.values()], ref_template=REF)
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's document, cached on app.openapi_schema; completed here once
            schema.setdefault("components", {}).setdefault("schemas", {}).update(top["$defs"])
            for path, model in bodies.items():
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
                }
        return app.openapi_schema

    app.openapi = openapi
