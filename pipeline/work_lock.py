"""One ``run`` at a time per work dir: a file lock on disk, a lease object on S3.

Two runs on one work dir would rewrite the same outputs and ledger entries under each other (an
entry could end up describing the other run's file), so a second run stops with one line.

- Local or shared filesystem: ``fcntl.flock`` on ``<work_dir>/.run.lock``, held for the run and
  released by the OS if the driver dies. The file also names its holder (host, pid, start) for
  ``status``; a clean end empties it, so a record without a flock is what a killed run left.
- S3 (``s3://``): a lease object ``<prefix>/.run.lock`` holding the owner, its host, pid, start
  and an expiry. It is created with a conditional write (``If-None-Match: *``: S3 accepts it
  only when the key does not exist, atomically), renewed by a heartbeat thread every third of
  its lifetime with ``If-Match: <its own ETag>``, and deleted at the end. A stale lease is taken
  over with ``If-Match: <the stale ETag>``, so of two runs racing for it exactly one wins. If a
  heartbeat finds the lease gone or replaced, the run stops before its next stage. Expiries are
  compared with the contender's clock: node clocks must agree to well within
  ``storage.lock_ttl_s`` (NTP does that).
- A lease is alive while it has not expired AND its holder is on another host (which this node
  cannot inspect) or is a running process of this host. A holder on this host whose pid is gone
  (a driver killed with -9) makes the lease stale at once: ``run`` takes it over with a log
  line, ``unlock`` removes it; otherwise both wait for the expiry. (A pid reused by an unrelated
  process after the kill keeps the lease until it expires: the safe side.)
- Other object stores (``gs://``) have no implementation here: ``run`` refuses such a work dir
  (they may still hold the dataset, which is only read).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.errors import ConfigError, StorageError


def acquire(work_dir: Any, ttl_s: float) -> Any:
    """The lock of ``work_dir`` (an object with ``check()``, ``close()`` and ``note``: what a
    take-over says, for the run log), or ``ConfigError`` when another run holds it."""
    if storage.is_uri(work_dir):
        return S3Lease(_lease_key(work_dir), ttl_s).acquire()
    return FileLock(storage.path(work_dir))


def _lease_key(work_dir: Any) -> Any:
    op = storage.path(work_dir)
    if op.scheme != "s3":
        raise ConfigError(f"paths.work_dir={work_dir}: a run lock on {op.scheme}:// is not "
                          "implemented; use s3:// or a shared filesystem for the work dir")
    return op / LOCK_NAME


def _busy(work_dir: Any, who: str = "") -> ConfigError:
    return ConfigError(f"another `run` is using {work_dir}{who}: wait for it to finish (or stop "
                       "it), or choose another paths.work_dir")


class LockHeld(RuntimeError):
    """``unlock`` refused: the holder is alive (one line, exit 1)."""


#: the lock's name in the work dir (a file for flock, an object for the S3 lease)
LOCK_NAME = ".run.lock"


# ---------------------------------------------------------------------- holders
@dataclass
class Holder:
    """Who holds (or last held) a work dir's run lock, as ``status`` and ``unlock`` see it."""

    where: str
    work_dir: str
    host: str
    pid: int | None
    started_at: float | None
    expires_at: float | None  # None for a flock: it lasts as long as its process
    alive: bool
    why: str  # why it counts as alive or stale

    def describe(self, now: float | None = None) -> str:
        """One line: holder, age, expiry and what to do about it."""
        now = time.time() if now is None else now
        who = f"{self.host} pid {self.pid}" if self.pid is not None else "an unknown process"
        age = f"age {now - self.started_at:.0f} s" if self.started_at else "age unknown"
        if self.expires_at is None:  # a flock
            expiry = "held until that process ends" if self.alive else "no longer held"
        elif self.expires_at > now:
            expiry = f"expires in {self.expires_at - now:.0f} s unless renewed"
        else:
            expiry = f"expired {now - self.expires_at:.0f} s ago"
        state = "held by" if self.alive else "stale, left by"
        text = f"run lock {self.where}: {state} {who}, {age}, {expiry} ({self.why})"
        if not self.alive:
            text += (f": `python -m pipeline unlock paths.work_dir={self.work_dir}` removes it, "
                     "the next `run` takes it over")
        return text


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process of this host (a zombie, killed but not yet reaped,
    counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:  # Linux: state is the field after "(comm)"
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _judge(host: str, pid: int | None, expires_at: float | None,
           now: float) -> tuple[bool, str]:
    """(alive, why) of a holder: unexpired AND (another host, or a running pid of this one)."""
    if expires_at is not None and expires_at <= now:
        return False, "its lease expired"
    if host != socket.gethostname():
        return True, "on another host: alive until its lease expires"
    if pid is None:
        return True, "its process is unknown"
    if _pid_running(pid):
        return True, "its process is running on this host"
    return False, "its process is gone from this host"


def _parse(body: dict[str, Any]) -> tuple[str, int | None, float | None]:
    """host, pid, start of a lock record (``owner`` is host:pid:token in every version)."""
    host, _, rest = str(body.get("owner", "")).partition(":")
    host = str(body.get("host") or host or "?")
    pid_text = body.get("pid", rest.partition(":")[0])
    try:
        pid = int(pid_text)
    except (TypeError, ValueError):
        pid = None
    started = body.get("started_at")
    return host, pid, float(started) if started is not None else None


def holder(work_dir: Any) -> Holder | None:
    """The run lock's holder, or None when no run holds it and none left a record."""
    if storage.is_uri(work_dir):
        if storage.path(work_dir).scheme != "s3":
            return None
        found = _read_lease(_s3_client(), _lease_key(work_dir))
        return found[0] if found else None
    return FileLock.holder(storage.path(work_dir))


def unlock(work_dir: Any) -> str:
    """Break a stale run lock; ``LockHeld`` while its holder is alive. Returns what was done."""
    if storage.is_uri(work_dir):
        return _unlock_lease(_lease_key(work_dir))
    return FileLock.unlock(storage.path(work_dir))


# ---------------------------------------------------------------------- local: flock
class FileLock:
    """``flock`` on ``<work_dir>/.run.lock`` (a shared filesystem must support it: NFSv4 does)."""

    def __init__(self, work_dir: Any):
        self.path = work_dir / LOCK_NAME
        self.note: str | None = None
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            found = FileLock.holder(work_dir)
            raise _busy(work_dir, f" ({found.describe()})" if found else "") from None
        self._fh.seek(0)
        left = _json_or_empty(self._fh.read())
        if left:
            host, pid, _ = _parse(left)
            self.note = (f"the previous run ({host} pid {pid}) ended without releasing the run "
                         f"lock {self.path} (killed?); taken over")
        self._fh.truncate(0)  # append mode: the record is written from the start
        self._fh.write(json.dumps(_record()))
        self._fh.flush()

    def check(self) -> None:
        """A held flock cannot be lost."""

    def close(self) -> None:
        """Empty the record (a clean end), then release (the OS releases if the driver dies)."""
        try:
            self._fh.truncate(0)
            self._fh.flush()
        except OSError:
            pass
        self._fh.close()

    @staticmethod
    def _held(path: Any) -> bool:
        """Whether some process holds the flock (probed without waiting, released at once).
        Opened for writing where allowed: NFS grants an exclusive lock only to such a handle.
        A probe that fails for another reason counts as held (the safe side for ``unlock``)."""
        try:
            fh = open(path, "r+")  # noqa: SIM115 - closed below
        except PermissionError:
            fh = open(path)  # noqa: SIM115
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False

    @staticmethod
    def holder(work_dir: Any) -> Holder | None:
        path = work_dir / LOCK_NAME
        try:
            held = FileLock._held(path)
            body = _json_or_empty(path.read_text())
        except FileNotFoundError:
            return None
        if not held and not body:
            return None
        host, pid, started = _parse(body)
        why = "the flock is held" if held else "no process holds its flock"
        return Holder(str(path), str(work_dir), host, pid, started, None, held, why)

    @staticmethod
    def unlock(work_dir: Any) -> str:
        found = FileLock.holder(work_dir)
        if found is None:
            return f"no run lock in {work_dir}: nothing to do"
        if found.alive:
            raise LockHeld(f"{found.describe()}: still held, not removed (stop that run first)")
        (work_dir / LOCK_NAME).unlink(missing_ok=True)
        return f"removed the stale run lock record {found.where} ({found.host} pid {found.pid})"


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _record(**extra: Any) -> dict[str, Any]:
    """Who takes the lock: this host and process, now."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), **extra}


# ---------------------------------------------------------------------- S3: lease object
def _s3_client() -> Any:
    """boto3, for conditional writes (pyarrow.fs cannot send If-None-Match / If-Match), with the
    ``storage`` timeouts of every other request; endpoint, region and credentials come from the
    standard AWS environment."""
    import boto3
    from botocore.config import Config

    opts = storage.options()
    return boto3.client("s3", config=Config(connect_timeout=opts.connect_timeout_s,
                                            read_timeout=opts.request_timeout_s))


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _precondition_failed(exc: Exception) -> bool:
    return _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _unreadable(key: Any, exc: Exception) -> StorageError:
    return StorageError(f"cannot use the run lock {key}: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}")


def _read_lease(client: Any, key: Any) -> tuple[Holder, str, dict[str, Any]] | None:
    """(holder, ETag, body) of the lease object, or None when there is none."""
    try:
        obj = client.get_object(Bucket=key.bucket, Key=key.key)
        text = obj["Body"].read().decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - botocore ClientError, connection errors
        if _error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise _unreadable(key, exc) from None
    body = _json_or_empty(text)
    host, pid, started = _parse(body)
    expires = float(body.get("expires_at", 0))
    alive, why = _judge(host, pid, expires, time.time())
    return (Holder(str(key), str(key.parent), host, pid, started, expires, alive, why),
            obj["ETag"], body)


def _unlock_lease(key: Any) -> str:
    client = _s3_client()
    found = _read_lease(client, key)
    if found is None:
        return f"no run lock at {key}: nothing to do"
    who, etag, _ = found
    if who.alive:
        raise LockHeld(f"{who.describe()}: still held, not removed (stop that run first, or wait "
                       "for its lease to expire)")
    try:  # exactly the version judged stale: a run that took it over meanwhile keeps it
        client.delete_object(Bucket=key.bucket, Key=key.key, IfMatch=etag)
    except Exception as exc:  # noqa: BLE001
        if _precondition_failed(exc):
            raise LockHeld(f"run lock {key} changed while being removed (a run took it over): "
                           "not removed") from None
        raise _unreadable(key, exc) from None
    return f"removed the stale run lock {key} ({who.host} pid {who.pid}: {who.why})"


class S3Lease:
    """A lease object with an expiry, created and renewed with conditional writes."""

    def __init__(self, key: Any, ttl_s: float):
        self.key = key
        self.ttl_s = float(ttl_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.note: str | None = None
        self._started = time.time()
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = _s3_client()

    def _body(self) -> bytes:
        return json.dumps(_record(owner=self.owner, started_at=self._started,
                                  expires_at=time.time() + self.ttl_s, ttl_s=self.ttl_s)).encode()

    def _put(self, **cond: str) -> str:
        resp = self._client.put_object(Bucket=self.key.bucket, Key=self.key.key,
                                       Body=self._body(), **cond)
        return resp["ETag"]

    def acquire(self) -> S3Lease:
        try:
            self._etag = self._put(IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001 - botocore ClientError, connection errors
            if not _precondition_failed(exc):
                raise _unreadable(self.key, exc) from None
            self._take_over_if_stale()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over_if_stale(self) -> None:
        found = _read_lease(self._client, self.key)
        if found is None:  # released between our two calls
            self._etag = self._put(IfNoneMatch="*")
            return
        who, etag, _ = found
        if who.alive:
            raise _busy(self.key.parent, f" ({who.describe()})")
        try:  # stale: replace exactly that version; a racing contender makes this fail
            self._etag = self._put(IfMatch=etag)
        except Exception as exc:  # noqa: BLE001
            if _precondition_failed(exc):
                raise _busy(self.key.parent) from None
            raise _unreadable(self.key, exc) from None
        self.note = f"took over the run lock {self.key} of {who.host} pid {who.pid}: {who.why}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._etag = self._put(IfMatch=self._etag or "")
            except Exception as exc:  # noqa: BLE001 - recorded, the run stops at its next check
                self._lost = f"{type(exc).__name__}: {exc}"
                return

    def check(self) -> None:
        """Raise when the lease was lost (another run took it over, or renewals failed)."""
        if self._lost:
            raise StorageError(f"lost the run lock {self.key}: {self._lost}; stopping so that two "
                               "runs never write the same work dir")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
        if self._lost is None and self._etag is not None:
            try:
                head = self._client.head_object(Bucket=self.key.bucket, Key=self.key.key)
                if head["ETag"] == self._etag:  # still ours
                    self._client.delete_object(Bucket=self.key.bucket, Key=self.key.key)
            except Exception:  # noqa: BLE001 - an unreleased lease simply expires
                pass
