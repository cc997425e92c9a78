"""feature-extraction: one sentence embedding per text (a float32 vector).

The bundle's graph does the pooling: its single output "sentence_embedding" is [batch,
dimension], already pooled over the tokens (mean, cls or max, as the manifest's `embedding`
section says) and L2-normalized when `embedding.normalize` is true. The head checks that
section, batches and truncates texts as every encoder does, and serves them:

    Predictor.embed(texts) -> np.ndarray [n, dimension], float32
    ftexport-runtime embed BUNDLE TEXT... [--file F] [--json]
    POST /v1/embeddings   the OpenAI embeddings API: {"input": str | [str], "model",
                          "encoding_format": "float" | "base64", "dimensions", "user"}
                          -> {"object": "list", "data": [{"object": "embedding", "index",
                          "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}

so OpenAI's clients (`client.embeddings.create(model=..., input=...)`) work against `serve`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError, PredictError
from .base import ApiError, Command, Route, add_texts_arguments, answer, check_fields, check_text_items, json_body, json_type, load_json
from .base import read_texts as texts_of

OUTPUT = "sentence_embedding"
POOLINGS = ("mean", "cls", "max")

# ---- the manifest ---------------------------------------------------------------------------


def check_embedding(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The manifest's `embedding` object {"dimension", "pooling", "normalize"}; one line per bad field."""
    spec = data.get("embedding")
    if not isinstance(spec, dict):
        raise BundleError(
            f"{where}: a feature-extraction bundle needs an 'embedding' object "
            '{"dimension": int, "pooling": "mean" | "cls" | "max", "normalize": bool}; re-export it'
        )
    dim = spec.get("dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise BundleError(f"{where}: field 'embedding.dimension' must be a positive integer, got {dim!r}")
    if spec.get("pooling") not in POOLINGS:
        raise BundleError(f"{where}: field 'embedding.pooling' must be one of {', '.join(POOLINGS)}, got {spec.get('pooling')!r}")
    if not isinstance(spec.get("normalize"), bool):
        raise BundleError(f"{where}: field 'embedding.normalize' must be true or false, got {spec.get('normalize')!r}")
    return dict(spec)


# ---- the command ----------------------------------------------------------------------------

SHOWN = 4  # values of each embedding the plain output shows


def format_embedding(text: str, vector: np.ndarray) -> str:
    """One line of `ftexport-runtime embed`: the dimension, the first values, the text."""
    head = ", ".join(f"{x:.4f}" for x in vector[:SHOWN])
    return f"dim={len(vector)}  [{head}{', ...' if len(vector) > SHOWN else ''} ]  {text}"


def _arguments(p: Any) -> None:
    add_texts_arguments(p, "embed")
    p.add_argument("--json", action="store_true", help='print JSON: [{"text": ..., "embedding": [...]}, ...]')


def _run(args: Any, load: Callable[[], Any]) -> int:
    texts = texts_of(args)
    vectors = load().embed(texts)
    if args.json:
        print(json.dumps([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)]))
    else:
        for t, v in zip(texts, vectors):
            print(format_embedding(t, v))
    return 0


EMBED = Command("embed", "print the sentence embedding of each text (a feature-extraction bundle)", _arguments, _run)


# ---- POST /v1/embeddings (OpenAI's shape) ---------------------------------------------------

FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
FORMATS = ("float", "base64")


def openai_error(status: int, message: str, param: str | None) -> dict[str, Any]:
    """An error as OpenAI's API writes it, which its clients parse."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


@dataclass
class EmbeddingsRequest:
    texts: list[str]
    model: str | None
    encoding_format: str


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) or isinstance(value, list) and bool(value) and all(map(_is_token_ids, value))
    )


def parse_embeddings(body: bytes, config: Any, dimension: int) -> EmbeddingsRequest:
    """Check a /v1/embeddings body against the API and the limits; ApiError names what is wrong."""
    data = check_fields(load_json(body, '{"input": ["..."]}'), FIELDS, '{"input": ...}')
    if "input" not in data:
        raise ApiError(422, 'request body has no "input" field; send {"input": "..."} or {"input": ["...", ...]}', "input")
    texts = data["input"]
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, list):
        raise ApiError(422, f'"input" must be a string or an array of strings, got {json_type(texts)}', "input")
    if not texts:
        raise ApiError(422, '"input" is empty; send at least one string', "input")
    if _is_token_ids(texts) or any(_is_token_ids(t) for t in texts):
        raise ApiError(422, '"input" holds token ids; this server tokenizes text itself: send strings', "input")
    texts = check_text_items(texts, "input", config)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f'"model" must be a string, got {json_type(model)}', "model")
    fmt = data.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in FORMATS:
        raise ApiError(422, f'"encoding_format" must be "float" or "base64", got {json.dumps(fmt)[:80]}', "encoding_format")
    dims = data.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != dimension):
        raise ApiError(
            422,
            f'"dimensions" is {json.dumps(dims)[:40]}, but this model makes {dimension}-dimensional embeddings and does not shorten them; '
            f"leave it out or send {dimension}",
            "dimensions",
        )
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(422, f'"user" must be a string, got {json_type(user)}', "user")
    return EmbeddingsRequest(texts, model, fmt)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as JSON numbers, or as OpenAI's base64: the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def _batch(predictor: Any, texts: list[str], batch_size: int) -> list[Any]:
    vectors, counts = predictor.embed(texts, batch_size=batch_size, return_token_counts=True)
    return list(zip(vectors, counts))


async def _handle(request: Any, api: Any) -> Any:
    name = str(api.info.get("name", "model"))
    req = parse_embeddings(await api.read_body(request), api.config, int(api.info["embedding"]["dimension"]))
    answers = await api.batch(req.texts)
    tokens = sum(int(n) for _, n in answers)
    headers = None
    if req.model is not None and req.model != name:  # answered all the same, by the one model this server has
        note = re.sub(r"[^\x20-\x7e]", "?", f"model {req.model!r} is not served here; answered by {name!r}")[:300]
        headers = {"X-Ftexport-Warning": note}
    return api.json(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)} for i, (v, _) in enumerate(answers)
            ],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=headers,
    )


def _openapi(config: Any, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    dimension = int(info.get("embedding", {}).get("dimension", 0)) or None
    error = {"$ref": "#/components/schemas/OpenAIError"}
    text = {"type": "string", "maxLength": config.max_text_chars}
    operation = {
        "operationId": "createEmbedding",
        "summary": "Sentence embeddings of the input texts, in OpenAI's embeddings API shape",
        "requestBody": json_body("EmbeddingsRequest"),
        "responses": {
            "200": answer("one embedding per input text, in order", {"$ref": "#/components/schemas/EmbeddingsResponse"}),
            "400": answer("the body is not UTF-8 JSON", error),
            "413": answer("the body is larger than the limits allow", error),
            "422": answer("the JSON does not follow the schema or passes a limit", error),
            "503": answer("the queue is full or the server is shutting down; retry later", error),
        },
    }
    schemas = {
        "EmbeddingsRequest": {
            "type": "object",
            "required": ["input"],
            "additionalProperties": False,
            "properties": {
                "input": {
                    "oneOf": [text, {"type": "array", "minItems": 1, "maxItems": config.max_request_items, "items": text}],
                    "description": "a text or an array of texts (token id arrays are refused: the server tokenizes)",
                },
                "model": {"type": "string", "description": "accepted and answered by this server's one model"},
                "encoding_format": {"type": "string", "enum": list(FORMATS), "default": "float"},
                "dimensions": {"type": "integer", **({"const": dimension} if dimension else {})},
                "user": {"type": "string"},
            },
        },
        "Embedding": {
            "type": "object",
            "required": ["object", "index", "embedding"],
            "properties": {
                "object": {"const": "embedding"},
                "index": {"type": "integer", "minimum": 0},
                "embedding": {
                    "oneOf": [
                        {
                            "type": "array",
                            "items": {"type": "number"},
                            **({"minItems": dimension, "maxItems": dimension} if dimension else {}),
                        },
                        {"type": "string", "contentEncoding": "base64", "description": "little-endian float32"},
                    ]
                },
            },
        },
        "EmbeddingsResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Embedding"}},
                "model": {"type": "string"},
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "total_tokens"],
                    "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                },
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
    }
    return operation, schemas


EMBEDDINGS_ROUTE = Route("POST", "/v1/embeddings", _handle, _openapi, batch=_batch, error=openai_error, summary="makes sentence embeddings")


# ---- the head -------------------------------------------------------------------------------


class EmbedHead:
    """The head of feature-extraction bundles: embed() answers one vector per text."""

    name = "feature-extraction"
    encoder = True  # the model maps tokenizer encodings to [batch, dimension]: encode, run and logits apply
    serves = True  # POST /v1/embeddings
    hint = "use embed()"
    does = "makes sentence embeddings"  # for the refusals: "predict(): this bundle makes sentence embeddings (...)"
    command = "embed"
    commands = (EMBED,)
    routes = (EMBEDDINGS_ROUTE,)

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]:
        """No labels; the single output is the pooled embedding; the `embedding` section."""
        if data.get("labels") != []:
            raise BundleError(f"{where}: field 'labels' must be [] for a feature-extraction bundle (it makes embeddings, not labels)")
        if data.get("outputs") != [OUTPUT]:
            raise BundleError(f"{where}: field 'outputs' must be [{OUTPUT!r}] (the pooled embedding), got {data.get('outputs')!r:.100}")
        return {"embedding": check_embedding(data, where)}

    @staticmethod
    def describe(manifest: Any) -> list[str]:
        """The lines `ftexport-runtime info` prints for such a bundle."""
        e = manifest.embedding or {}
        return [f"embedding {e.get('dimension')} dims, {e.get('pooling')} pooling{', L2-normalized' if e.get('normalize') else ''}"]

    @classmethod
    def refuse(cls, method: str, head: Any) -> str:
        """The error for calling embed() on a bundle of another task."""
        return f"{method}(): this bundle's task is {head.name}; {head.hint}"

    def __init__(self, predictor: Any):
        spec = predictor.manifest.embedding or {}
        self.dimension = int(spec["dimension"])
        self.pooling = spec["pooling"]
        self.normalize = bool(spec["normalize"])
        session = getattr(predictor, "session", None)
        if session is not None:  # the ONNX graph's output says its shape up front
            out = session.get_outputs()[0]
            shape = list(out.shape)
            where = predictor.bundle.path_of(predictor.variant.file)
            if out.name != OUTPUT or len(shape) != 2:
                raise BundleError(
                    f"{where}: the model's first output is {out.name} {shape}, not {OUTPUT} [batch, dimension]; "
                    "a feature-extraction bundle holds the pooled sentence embedding, re-export it"
                )
            if isinstance(shape[1], int) and shape[1] != self.dimension:
                raise BundleError(
                    f"{where}: the model makes {shape[1]}-dimensional embeddings but embedding.dimension says {self.dimension}"
                )

    def info(self) -> dict[str, Any]:
        """What Predictor.metadata() adds for such a bundle."""
        return {"embedding": {"dimension": self.dimension, "pooling": self.pooling, "normalize": self.normalize}}

    def embed(
        self, p: Any, texts: Sequence[str], batch_size: int | None = None, return_token_counts: bool = False
    ) -> np.ndarray | tuple[np.ndarray, list[int]]:
        size = p.max_batch if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise PredictError(f"embed(): batch_size must be a positive integer, got {batch_size!r}")
        texts = p._check_texts(texts, "embed")
        parts: list[np.ndarray] = []
        counts: list[int] = []
        for i in range(0, len(texts), size):
            encs = p.tokenizer.encode_batch(texts[i : i + size])
            out = p.run(p._feeds(encs))
            if out.ndim != 2 or out.shape != (len(encs), self.dimension):
                raise BundleError(
                    f"{p.bundle.root}: the model answered shape {list(out.shape)} for {len(encs)} texts, "
                    f"not [{len(encs)}, {self.dimension}] (embedding.dimension); re-export the bundle"
                )
            parts.append(out)
            counts.extend(int(sum(e.attention_mask)) for e in encs)
        vectors = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
        return (vectors, counts) if return_token_counts else vectors
