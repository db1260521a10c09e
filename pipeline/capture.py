"""Console output of native libraries kept out of the console.

COLMAP (through pycolmap) and other native code write to the process's stdout and stderr file
descriptors directly, past Python's ``sys.stdout``. In a Ray worker those descriptors are
forwarded to the driver's console, where such lines (with Ray's colour codes) land between
progress lines or after the run's summary. Redirecting the descriptors while a task runs keeps
them in a log file instead. Only for worker processes: in a driver it would hide the console.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

_STDOUT, _STDERR = 1, 2


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail the task
            pass


@contextlib.contextmanager
def redirect_output(path: str | os.PathLike) -> Iterator[None]:
    """Stdout and stderr of this process (file descriptors 1 and 2) appended to ``path``
    while the block runs, then restored."""
    _flush()
    target = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = [os.dup(_STDOUT), os.dup(_STDERR)]
    try:
        os.dup2(target, _STDOUT)
        os.dup2(target, _STDERR)
        yield
    finally:
        _flush()
        os.dup2(saved[0], _STDOUT)
        os.dup2(saved[1], _STDERR)
        for fd in (*saved, target):
            os.close(fd)


@dataclass
class Captured:
    """What a ``captured_output`` block printed (filled in when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Stdout and stderr of this process while the block runs, as text (for a task whose
    result travels back to the driver, which logs it where it belongs)."""
    fd, name = tempfile.mkstemp(prefix=".output-", suffix=".log")
    os.close(fd)
    out = Captured()
    try:
        with redirect_output(name):
            yield out
    finally:
        with open(name, encoding="utf-8", errors="replace") as fh:
            out.text = fh.read()
        os.unlink(name)
