"""`predict`: the command and the HTTP route of the heads that answer each text with a label
(text-classification) or its entities (token-classification).

    ftexport-runtime predict BUNDLE TEXT... [--file F] [--json]
    POST /v1/predict   {"texts": ["...", ...]} -> {"predictions": [answer.as_dict(), ...]}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .base import (
    ApiError,
    Command,
    Route,
    add_texts_arguments,
    answer,
    check_fields,
    check_text_items,
    json_body,
    json_type,
    load_json,
    read_texts,
)
from .base import request_schema_error as common_answers


def parse_texts(body: bytes, config: Any) -> list[str]:
    """Check a /v1/predict body against the API and the limits; ApiError names what is wrong."""
    data = check_fields(load_json(body, '{"texts": ["..."]}'), ["texts"], '{"texts": [...]}')
    if "texts" not in data:
        raise ApiError(422, 'request body has no "texts" field; send {"texts": ["..."]}')
    texts = data["texts"]
    if isinstance(texts, str):
        raise ApiError(422, '"texts" must be an array of strings, got a single string; wrap it in [...]')
    if not isinstance(texts, list):
        raise ApiError(422, f'"texts" must be an array of strings, got {json_type(texts)}')
    if not texts:
        raise ApiError(422, '"texts" is empty; send at least one string')
    return check_text_items(texts, "texts", config)


# ---- the command ------------------------------------------------------------------------------


def _arguments(p: Any) -> None:
    add_texts_arguments(p, "classify")
    p.add_argument("--json", action="store_true", help="print JSON")


def _run(args: Any, load: Callable[[], Any]) -> int:
    texts = read_texts(args)
    predictor = load()
    preds = predictor.predict(texts)
    if args.json:
        print(json.dumps([dict(text=t, **p.as_dict()) for t, p in zip(texts, preds)], indent=2))
    else:
        for t, p in zip(texts, preds):  # the task's head says how an answer reads as text
            print(predictor.head.format_text(t, p))
    return 0


PREDICT = Command("predict", "print label and score for each text (entities for an NER bundle)", _arguments, _run)


# ---- the route --------------------------------------------------------------------------------


def _batch(predictor: Any, texts: list[str], batch_size: int) -> list[Any]:
    return [p.as_dict() for p in predictor.predict_batch(texts, batch_size=batch_size)]


async def _handle(request: Any, api: Any) -> Any:
    texts = parse_texts(await api.read_body(request), api.config)
    return api.json({"predictions": await api.batch(texts)})


def predict_route(answer_name: str, answer_schema: Callable[[dict[str, Any]], dict[str, Any]], summary: str) -> Route:
    """POST /v1/predict answering each text with `answer_schema(info)` (component `answer_name`)."""

    def openapi(config: Any, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        operation = {
            "operationId": "predict",
            "summary": summary,
            "requestBody": json_body("PredictRequest"),
            "responses": {"200": answer("one answer per text", {"$ref": "#/components/schemas/PredictResponse"}), **common_answers()},
        }
        schemas = {
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
            answer_name: answer_schema(info),
            "PredictResponse": {
                "type": "object",
                "required": ["predictions"],
                "properties": {"predictions": {"type": "array", "items": {"$ref": f"#/components/schemas/{answer_name}"}}},
            },
        }
        return operation, schemas

    return Route("POST", "/v1/predict", _handle, openapi, batch=_batch, summary=summary)
