"""One ``run`` at a time per work dir: a file lock on disk, a lease object on S3.

Two runs on one work dir would rewrite the same outputs and ledger entries under each other (an
entry could end up describing the other run's file), so a second run stops with one line.

- Local or shared filesystem: ``fcntl.flock`` on ``<work_dir>/.run.lock``, held for the run and
  released by the OS if the driver dies.
- S3 (``s3://``): a lease object ``<prefix>/.run.lock`` holding the owner, its host and an
  expiry. It is created with a conditional write (``If-None-Match: *``: S3 accepts it only when
  the key does not exist, atomically), renewed by a heartbeat thread every third of its lifetime
  with ``If-Match: <its own ETag>``, and deleted at the end. A lease whose expiry has passed (a
  driver killed with -9) is taken over with ``If-Match: <the stale ETag>``, so of two runs
  racing for a stale lease exactly one wins. If a heartbeat finds the lease gone or replaced,
  the run stops before its next stage. Expiries are compared with the contender's clock: node
  clocks must agree to well within ``storage.lock_ttl_s`` (NTP does that).
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
from typing import Any

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.errors import StorageError


def acquire(work_dir: Any, ttl_s: float) -> Any:
    """The lock of ``work_dir`` (an object with ``check()`` and ``close()``), or ``ConfigError``
    when another run holds it."""
    if storage.is_uri(work_dir):
        op = storage.path(work_dir)
        if op.scheme != "s3":
            raise ConfigError(f"paths.work_dir={work_dir}: a run lock on {op.scheme}:// is not "
                              "implemented; use s3:// or a shared filesystem for the work dir")
        return S3Lease(op / ".run.lock", ttl_s).acquire()
    return FileLock(storage.path(work_dir))


def _busy(work_dir: Any, who: str = "") -> ConfigError:
    return ConfigError(f"another `run` is using {work_dir}{who}: wait for it to finish (or stop "
                       "it), or choose another paths.work_dir")


class FileLock:
    """``flock`` on ``<work_dir>/.run.lock`` (a shared filesystem must support it: NFSv4 does)."""

    def __init__(self, work_dir: Any):
        self._fh = open(work_dir / ".run.lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise _busy(work_dir) from None

    def check(self) -> None:
        """A held flock cannot be lost."""

    def close(self) -> None:
        self._fh.close()  # releases the lock (the OS does the same if the driver is killed)


def _s3_client() -> Any:
    """boto3, for conditional writes (pyarrow.fs cannot send If-None-Match / If-Match), with the
    ``storage`` timeouts of every other request; endpoint, region and credentials come from the
    standard AWS environment."""
    import boto3
    from botocore.config import Config

    opts = storage.options()
    return boto3.client("s3", config=Config(connect_timeout=opts.connect_timeout_s,
                                            read_timeout=opts.request_timeout_s))


def _precondition_failed(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict")


class S3Lease:
    """A lease object with an expiry, created and renewed with conditional writes."""

    def __init__(self, key: Any, ttl_s: float):
        self.key = key
        self.ttl_s = float(ttl_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = _s3_client()

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s,
                           "ttl_s": self.ttl_s}).encode()

    def _put(self, **cond: str) -> str:
        resp = self._client.put_object(Bucket=self.key.bucket, Key=self.key.key,
                                       Body=self._body(), **cond)
        return resp["ETag"]

    def acquire(self) -> S3Lease:
        try:
            self._etag = self._put(IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001 - botocore ClientError
            if not _precondition_failed(exc):
                raise
            self._take_over_if_expired()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over_if_expired(self) -> None:
        try:
            obj = self._client.get_object(Bucket=self.key.bucket, Key=self.key.key)
        except Exception as exc:  # noqa: BLE001 - released between our two calls: retry once
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                self._etag = self._put(IfNoneMatch="*")
                return
            raise
        held = json.loads(obj["Body"].read() or b"{}")
        left = float(held.get("expires_at", 0)) - time.time()
        if left > 0:
            raise _busy(self.key.parent, f" (lease held by {held.get('owner')}, expires in "
                                         f"{left:.0f} s unless renewed)")
        try:  # stale: replace exactly that version; a racing contender makes this fail
            self._etag = self._put(IfMatch=obj["ETag"])
        except Exception as exc:  # noqa: BLE001
            if _precondition_failed(exc):
                raise _busy(self.key.parent) from None
            raise

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
