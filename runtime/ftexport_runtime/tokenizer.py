"""The bundle's tokenizer: tokenizer.json read (and checked) from a bundle, set up to truncate
at the model's length and pad a batch, and the model inputs its encodings fill."""

from __future__ import annotations

from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from .bundle import Bundle
from .errors import BundleError

# The model inputs an encoder takes, each filled from one field of a tokenizers Encoding.
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(bundle: Bundle, max_length: int, verify: bool = False) -> Tokenizer:
    """The bundle's tokenizer.json (its sha256 checked as it is read, with `verify`),
    truncating at `max_length` and padding a batch to its longest text."""
    info = bundle.manifest.tokenizer
    path = bundle.path_of(info["file"])
    data = bundle.read(info["file"], verify)
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001  # tokenizers raises a bare Exception on a bad file
        raise BundleError(f"{path}: not a readable tokenizer.json ({str(e)[:200]})") from None
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=int(info.get("pad_id", 0)), pad_token=str(info.get("pad_token", "[PAD]")))
    return tok


def encoder_feeds(encodings: list[Encoding], input_types: dict[str, Any]) -> dict[str, np.ndarray]:
    """A padded batch of encodings as the arrays the model takes, in the dtypes it takes."""
    fields = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return {name: np.asarray(fields[name], dtype=dtype) for name, dtype in input_types.items()}
