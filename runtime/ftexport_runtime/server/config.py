"""The settings of one server (batching and request limits) and the ONNX Runtime session
options a server runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from ..errors import FtexportError

MAX_WAIT_MS = 60_000  # a minute: longer is no batching window, a request left waiting


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits of one server. Every field is a `serve` option of the same name."""

    max_batch: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long a batch under max_batch waits for company
    queue_size: int = 256  # texts waiting; beyond it requests get 503
    max_text_chars: int = 10_000  # characters per text (the tokenizer truncates far sooner)
    max_request_items: int = 64  # texts per request
    batching: bool = True  # False: one request per model call, in arrival order
    # the serve options heads add for their routes (heads.base.ServeOption), e.g. max_new_tokens
    options: dict[str, int] = field(default_factory=dict)

    def check(self) -> ServeConfig:
        common = [(n, getattr(self, n)) for n in ("max_batch", "queue_size", "max_text_chars", "max_request_items")]
        for name, value in common + sorted(self.options.items()):
            if not isinstance(value, int) or value < 1:
                raise FtexportError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:  # also refuses nan and inf: a lone request would wait for ever
            raise FtexportError(f"--max-wait-ms must be from 0 to {MAX_WAIT_MS}, got {self.max_wait_ms}")
        if self.max_request_items > self.queue_size:
            raise FtexportError(
                f"--max-request-items {self.max_request_items} is over --queue-size {self.queue_size}: "
                "such a request could never be queued; raise --queue-size or lower --max-request-items"
            )
        return self

    def settings(self) -> dict[str, Any]:
        """Every setting by name (the head options beside the common ones), as /v1/metadata shows them."""
        common = {
            k: getattr(self, k) for k in ("max_batch", "max_wait_ms", "queue_size", "max_text_chars", "max_request_items", "batching")
        }
        return {**common, **self.options}

    @property
    def max_body_bytes(self) -> int:
        # 12 bytes per character is the JSON worst case (an escaped surrogate pair is 12 bytes
        # for 2 characters; \u00XX is 6 for 1), plus quotes, commas and the envelope.
        return self.max_request_items * (12 * self.max_text_chars + 4) + 4096


def serving_session_options() -> ort.SessionOptions:
    """ONNX Runtime options for a server: intra-op threads sleep between calls instead of
    spin-waiting, so the event loop (HTTP parsing, JSON) gets the cores back as soon as a
    batch is done. Spinning only pays when model calls follow each other with nothing between."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
