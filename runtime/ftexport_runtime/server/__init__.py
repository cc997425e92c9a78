"""`ftexport-runtime serve`: one bundle behind an HTTP JSON API, with dynamic micro-batching.

The routes of the bundle's head (heads/: each head offers its own), e.g.
    POST /v1/predict     {"texts": ["...", ...]} -> {"predictions": [{"label", "score", "scores"}, ...]}
    POST /v1/embeddings  OpenAI's embeddings API (feature-extraction bundles)
    POST /v1/generate    a prompt or a conversation -> JSON, or server-sent events per token
and the common ones:
    GET  /healthz      200 {"status": "ok"} while serving
    GET  /v1/metadata  task, labels, max_length, variant, backend and the serving limits
    GET  /v1/stats     requests, texts, batches run, rejections, texts waiting
    GET  /openapi.json an OpenAPI 3 description of the above

Built on Starlette and uvicorn (the optional extra `ftexport-runtime[serve]`), so HTTP
parsing, keep-alive and graceful shutdown are theirs; this package adds the batcher and the
request checks. Only the core runtime is imported by `import ftexport_runtime`, never this.

Requests wait in one bounded queue (counted in texts). A single worker takes what is
queued, waits up to max_wait_ms for more while the batch is under max_batch texts, and runs
one Predictor call in a worker thread, so the event loop keeps accepting and answering
requests meanwhile. A full queue answers 503 at once rather than growing. There is no
endpoint that loads a model: the bundle is fixed when the server starts.
"""

from .app import Api, ApiError, bind, create_app, parse_texts, serve
from .batcher import MicroBatcher, QueueFull, ShuttingDown, Stats
from .config import ServeConfig, serving_session_options
from .openapi import openapi_schema

__all__ = [
    "Api",
    "ApiError",
    "MicroBatcher",
    "QueueFull",
    "ServeConfig",
    "ShuttingDown",
    "Stats",
    "bind",
    "create_app",
    "openapi_schema",
    "parse_texts",
    "serve",
    "serving_session_options",
]
