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
