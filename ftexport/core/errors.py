"""Errors. User errors print one line and exit 2; a failed gate exits 1; anything else is a bug."""

from ftexport_runtime.errors import BackendUnavailable, BundleError, FtexportError, PredictError


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), cut to
    `limit` characters: what a one-line error quotes from a library's exception."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


class RecipeError(FtexportError):
    """A recipe field is unknown, has the wrong type, or names a file that is not there."""


class DataError(FtexportError):
    """A data file is missing, empty, lacks a column, or holds a label outside the label set."""


class ModelError(FtexportError):
    """A model path is not a model, or a model cannot be used for the task."""


class GateFailed(FtexportError):
    """A parity or merge check did not meet its threshold."""

    exit_code = 1

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report  # the parity report, when there is one, for the CLI to print


__all__ = [
    "BackendUnavailable",
    "BundleError",
    "DataError",
    "FtexportError",
    "GateFailed",
    "ModelError",
    "PredictError",
    "RecipeError",
    "first_line",
]
