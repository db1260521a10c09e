"""The one exception domain code raises for a clip: ``ClipError`` (and the failure kinds).

It lives here, not in the engine's ``pipeline/stage.py``, so the domain subpackages (formats,
sfm, depth, geometry, scale, synthetic) can report a bad clip without importing the engine;
``pipeline.stage`` re-exports it for stages.
"""

from __future__ import annotations

from typing import Literal

#: failure kinds: bad data (cached) / anything unexpected (retried)
INPUT, ERROR = "input", "error"
FailureKind = Literal["input", "error"]


class ClipError(Exception):
    """An expected, per-clip problem (bad input, too few points...): message is the reason.

    ``kind`` is ``input`` by default: the failure is a property of the data and is cached.
    """

    def __init__(self, clip_id: str, reason: str, kind: FailureKind = INPUT):
        super().__init__(f"clip {clip_id}: {reason}")
        self.clip_id = clip_id
        self.reason = reason
        self.kind = kind
