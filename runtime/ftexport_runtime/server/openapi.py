"""The served API described as OpenAPI 3.1 (GET /openapi.json), with the server's limits in its
schemas: the common routes, and the routes of the bundle's head with the schemas they bring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..heads import get_head
from ..heads.base import Route, answer
from .config import ServeConfig


def openapi_schema(config: ServeConfig, info: dict[str, Any], routes: Sequence[Route] | None = None) -> dict[str, Any]:
    """The API as OpenAPI 3.1, with this server's limits in the schemas (`routes`: the head's,
    by default those of the head of info["task"])."""
    if routes is None:
        routes = get_head(str(info.get("task"))).routes
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for route in routes:
        operation, components = route.openapi(config, info)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
        schemas.update(components)
    offered = ", ".join(r.label for r in routes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"ftexport-runtime: {info.get('name', 'model')}",
            "version": str(info.get("runtime_version", "0")),
            "description": f"An ftexport bundle of task {info.get('task')} ({offered}). Requests wait in one bounded queue "
            "(texts are micro-batched); a full queue answers 503 (retry later).",
        },
        "paths": {
            **paths,
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and readiness",
                    "responses": {
                        "200": answer("serving", {"type": "object", "properties": {"status": {"const": "ok"}}}),
                        "503": answer("shutting down", {"type": "object", "properties": {"status": {"type": "string"}}}),
                    },
                }
            },
            "/v1/metadata": {
                "get": {
                    "operationId": "metadata",
                    "summary": "The model (task, labels, max_length, variant, backend) and the serving limits",
                    "responses": {"200": answer("metadata", {"type": "object"})},
                }
            },
            "/v1/stats": {
                "get": {
                    "operationId": "stats",
                    "summary": "Counters since start: requests, texts, batches, rejections; texts waiting",
                    "responses": {"200": answer("counters", {"type": "object"})},
                }
            },
        },
        "components": {
            "schemas": {
                **schemas,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }
