"""The served API described as OpenAPI 3.1 (GET /openapi.json), with the server's limits in its schemas."""

from __future__ import annotations

from typing import Any

from .config import ServeConfig


def openapi_schema(config: ServeConfig, info: dict[str, Any]) -> dict[str, Any]:
    """The API as OpenAPI 3.1, with this server's limits in the schemas."""
    error = {"$ref": "#/components/schemas/Error"}

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    labels = [str(x) for x in info.get("labels", [])]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"ftexport-runtime: {info.get('name', 'model')}",
            "version": str(info.get("runtime_version", "0")),
            "description": "Text classification with an ftexport bundle. Requests are micro-batched; "
            "a full queue answers 503 (retry later).",
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Label and scores for each text, in order",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                    },
                    "responses": {
                        "200": answer("one prediction per text", {"$ref": "#/components/schemas/PredictResponse"}),
                        "400": answer("the body is not UTF-8 JSON", error),
                        "413": answer("the body is larger than the limits allow", error),
                        "422": answer("the JSON does not follow the schema or passes a limit", error),
                        "503": answer("the queue is full or the server is shutting down; retry later", error),
                    },
                }
            },
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
                "PredictRequest": {
                    "type": "object",
                    "required": ["texts"],
                    "additionalProperties": False,
                    "properties": {
                        "texts": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": config.max_request_items,
                            "items": {"type": "string", "maxLength": config.max_text_chars},
                        }
                    },
                },
                "Prediction": {
                    "type": "object",
                    "required": ["label", "score", "scores"],
                    "properties": {
                        "label": {"type": "string", **({"enum": labels} if labels else {})},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["predictions"],
                    "properties": {"predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }
