"""One logger for the engine: console lines (through tqdm on a terminal so bars stay intact),
``<work_dir>/logs/run.log`` for the whole run, per-shard files written by ``stage.execute``.

Progress bars are drawn only on a terminal; redirected output gets a plain line every
``log.progress_every_s`` seconds instead of cursor escapes.

A work dir on object storage cannot be appended to: the log is written to the node's temp dir
and uploaded (appended to the earlier runs' log) when the run ends (``flush_remote``); if that
upload fails the local file is kept and its path reported, so the log of a run that storage
broke is never lost.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOGGER_NAME = "metric_align"
log = logging.getLogger(LOGGER_NAME)


class _ConsoleHandler(logging.Handler):
    """Plain message lines on stdout; via ``tqdm.write`` so an active bar is redrawn below."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup(work_dir: Path | None, level: str = "INFO") -> None:
    """Console + run log file; idempotent (a second run in one process replaces both)."""
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.setLevel(level)
    log.propagate = False
    console = _ConsoleHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    _REMOTE.clear()
    if work_dir is not None:
        from pipeline import storage

        path = storage.path(work_dir) / "logs" / "run.log"
        if storage.is_uri(path):
            # a visible name: when the upload fails this file is what the user is pointed to
            local = storage.scratch_root() / f"metric-align-run-{time.time_ns()}-{os.getpid()}.log"
            _REMOTE.append((local, path))
            path = local
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


#: (local file, object) of a run log to upload at the end of the run
_REMOTE: list[tuple[Path, Any]] = []


def to_file(msg: str, exc_info: bool = True) -> None:
    """A record (with the current exception's traceback) for the run log only: the console
    shows one line for a failure, the file keeps the full story."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, (),
                            sys.exc_info() if exc_info else None)
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def flush_remote() -> Path | None:
    """Upload a run log kept locally for an object-storage work dir (after earlier runs' log).

    Never raises: the upload runs while a failure may be propagating, and storage that is down
    must not replace that failure's message nor lose the log. The local copy is removed once
    uploaded; when the upload fails it stays, and its path is returned for the user."""
    from pipeline.storage import append_object

    kept = None
    for local, target in _REMOTE:
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == local:
                log.removeHandler(h)
                h.close()
        try:
            append_object(target, local)
        except Exception as exc:  # noqa: BLE001 - OSError of pyarrow, or anything on the way
            kept = local
            log.debug("run log not uploaded to %s: %s", target, exc)
        else:
            local.unlink(missing_ok=True)
    _REMOTE.clear()
    return kept


def is_terminal() -> bool:
    return sys.stderr.isatty()


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: how long, for people."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress:
    """tqdm's interface for redirected output: one log line every ``every_s`` seconds (and one
    at the end) saying what, how far, the rate and the time left, with no cursor escapes."""

    def __init__(self, total: int, desc: str, unit: str, every_s: float,
                 emit: Any = None, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = initial
        self.postfix = ""
        self._emit = emit or log.info
        self._start_n = initial
        self._t0 = self._last = time.monotonic()

    def line(self) -> str:
        """``[desc] n/total unit (pct%), rate, time left (postfix)``."""
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        pct = 100 * self.n // self.total if self.total else 100
        text = f"[{self.desc}] {self.n}/{self.total} {self.unit} ({pct}%)"
        if self.n >= self.total:
            text += f", done in {_duration(elapsed)}"
        elif done > 0 and elapsed > 0:
            rate = done / elapsed
            speed = f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s each"
            text += f", {speed}, {_duration((self.total - self.n) / rate)} left"
        return text + self.postfix

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            self._emit(self.line())

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = " (" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")"

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str, enabled: bool = True,
             every_s: float = 30.0, emit: Any = None, initial: int = 0) -> Any:
    """A tqdm bar on a terminal, periodic plain lines otherwise, nothing when disabled."""
    if not enabled:
        return PlainProgress(total, desc, unit, float("inf"), emit=lambda _m: None,
                             initial=initial)
    if is_terminal():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial)
    return PlainProgress(total, desc, unit, every_s, emit=emit, initial=initial)


def progress_callback(desc: str, unit: str, enabled: bool, every_s: float,
                      start: str | None = None,
                      emit: Callable[[str], None] | None = None) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback for code that reports progress without holding a bar
    (domain code imports nothing from the engine): the bar is made on the first call, after
    ``start`` is said when given, advanced to ``done`` and closed at ``total``. Lines go to the
    run's log unless ``emit`` takes them (a command without a run log)."""
    state: dict[str, Any] = {}
    say = emit or log.info

    def on_progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            if start and enabled:
                say(start)
            bar = state["bar"] = progress(total, desc, unit, enabled, every_s, emit=emit)
        if done > bar.n:
            bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return on_progress
