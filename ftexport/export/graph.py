"""ONNX files of a bundle: the file names every stage agrees on, and reading a graph's inputs
and outputs (a truncated or corrupt file is a one-line error)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import BundleError

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


def onnx_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise BundleError(f"{path}: not a readable ONNX file ({str(e)[:150]}); it may be truncated, re-export it") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


@contextlib.contextmanager
def quiet_exporters() -> Iterator[io.StringIO]:
    """Optimum and torch.onnx print pages of warnings; keep them unless something fails."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
