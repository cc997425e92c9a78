"""Progress lines for long work, on stderr, so stdout stays clean for --json output."""

from __future__ import annotations

import sys
import time

_start = time.monotonic()
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def quiet() -> bool:
    return _quiet


def _emit(prefix: str, msg: str) -> None:
    if not _quiet:
        elapsed = time.monotonic() - _start
        print(f"[{elapsed:6.1f}s] {prefix}{msg}", file=sys.stderr, flush=True)


def step(msg: str) -> None:
    """A stage or a large piece of work begins."""
    _emit("==> ", msg)


def info(msg: str) -> None:
    _emit("    ", msg)
