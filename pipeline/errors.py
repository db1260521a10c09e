"""The exceptions domain code raises: ``ClipError`` for one clip (and the failure kinds),
``ConfigError`` for a setting or dataset location that cannot work, ``StorageError`` for storage
that fails while a command runs.

They live here, not in the engine's ``pipeline/stage.py`` / ``pipeline/config.py``, so the
domain subpackages (formats, sfm, depth, geometry, scale, synthetic) can report a bad clip or a
bad dataset root without importing the engine; the engine modules re-export them.
"""

from __future__ import annotations

from typing import Literal

#: failure kinds: bad data (cached) / anything unexpected (retried)
INPUT, ERROR = "input", "error"
FailureKind = Literal["input", "error"]


class ConfigError(ValueError):
    """A user-facing configuration problem: printed as one line, no traceback."""


class StorageError(RuntimeError):
    """The work dir's storage failed under a running command (an object store outage, a lost
    run lock): printed as one line, exit 1, since work may already have been done. ``details``
    are clauses added on the way out (where the run log was kept)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.details: list[str] = []

    def __str__(self) -> str:
        return "; ".join([str(self.args[0]), *self.details])


class ClipError(Exception):
    """An expected, per-clip problem (bad input, too few points...): message is the reason.

    ``kind`` is ``input`` by default: the failure is a property of the data and is cached.
    """

    def __init__(self, clip_id: str, reason: str, kind: FailureKind = INPUT):
        super().__init__(f"clip {clip_id}: {reason}")
        self.clip_id = clip_id
        self.reason = reason
        self.kind = kind
