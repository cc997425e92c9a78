"""Errors the runtime raises for bad input.

Each carries a one-line message that names what is wrong and how to fix it. The toolchain
(`ftexport`) reuses them so one `except` at the CLI edge covers both packages.
"""


class FtexportError(Exception):
    """Bad input from the user (file, field, value). CLIs print the message and exit 2."""

    exit_code = 2


class BundleError(FtexportError):
    """A bundle is missing, malformed, tampered with or escapes its directory."""


class PredictError(FtexportError):
    """Bad input to `Predictor.predict` (empty batch, wrong type, too many texts)."""


class BackendUnavailable(FtexportError):
    """The requested execution backend cannot run here, or ONNX Runtime fell back to CPU."""


def check_unicode(text: str, what: str) -> None:
    """Refuse a string UTF-8 cannot encode: tokenizers raises a bare TypeError on a lone
    surrogate ("\\ud800"), which Python strings can hold (from surrogateescape or a JSON
    "\\ud800"). `what` names the text in the message, e.g. "predict(): text #3"."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PredictError(
            f"{what} is not valid Unicode (a lone surrogate {text[e.start]!a} at position {e.start}); "
            "decode input with errors='replace' or drop such characters"
        ) from None
