"""One filesystem layer for every read and write: local paths and object-storage URIs.

``storage.path(p)`` is the single entry point. A local path (``work``, ``/data/re10k``) comes
back as a plain ``pathlib.Path``, so local behaviour is exactly what it always was. A URI
(``s3://bucket/prefix``, ``gs://bucket/prefix``) comes back as an ``ObjectPath``: the subset of
the ``pathlib`` interface this project uses (``/``, ``name``, ``exists``, ``glob``, ``open``,
``stat``...), implemented on ``pyarrow.fs``. Callers therefore keep writing
``storage.path(work_dir) / "ledger" / stage`` and work on both.

Why pyarrow.fs rather than fsspec/s3fs: pyarrow is already the Parquet engine of every stage,
Ray Data and pandas; its S3/GCS filesystems need no extra dependency, use the AWS SDK's standard
credential chain (environment variables, ``AWS_PROFILE`` and ``~/.aws`` files, instance
roles) and stream reads. The one thing it does not pick up by itself here is
``AWS_ENDPOINT_URL`` (S3-compatible servers), which ``filesystem_for`` passes explicitly; for
``gs://`` the same holds for ``STORAGE_EMULATOR_HOST`` (Google's convention for emulators).

Writes to object storage: an object becomes visible only when its upload completes (a single
PUT, or a multipart upload completed at close), so a reader never sees a partial object. The
atomic writers of ``pipeline.io`` write into a local temp file first and upload it whole; the
ledger entry, written last, is the commit record. There is no rename on object storage and none
is needed.

Scratch (COLMAP databases, decoded frames, a video being decoded) always lives on the node's
local temp dir: ``local_copy`` downloads one object there for libraries that need a file name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

#: URI schemes served by pyarrow.fs (``gcs`` is pyarrow's alias of ``gs``)
OBJECT_SCHEMES = ("s3", "gs", "gcs")


@dataclass(frozen=True)
class Options:
    """Network settings of the object-storage clients (``conf/config.yaml: storage``)."""

    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    gcs_anonymous: bool = False


_OPTIONS = Options()
_FS_CACHE: dict[tuple[Any, ...], pafs.FileSystem] = {}
_LOCK = threading.Lock()


def configure(section: dict[str, Any] | None) -> None:
    """Apply the ``storage`` config section (driver and every task call it; idempotent)."""
    global _OPTIONS
    if not section:
        return
    _OPTIONS = Options(connect_timeout_s=float(section["connect_timeout_s"]),
                       request_timeout_s=float(section["request_timeout_s"]),
                       gcs_anonymous=bool(section.get("gcs_anonymous", False)))


def options() -> Options:
    """The storage options in force (for clients built outside this module: the S3 lease)."""
    return _OPTIONS


def scheme_of(p: Any) -> str:
    """``s3``/``gs`` for an object-storage URI, ``""`` for a local path."""
    if isinstance(p, ObjectPath):
        return p.scheme
    text = str(p) if not isinstance(p, (str, os.PathLike)) else os.fspath(p)
    head, sep, _ = str(text).partition("://")
    return head.lower() if sep and head.lower() in OBJECT_SCHEMES else ""


def is_uri(p: Any) -> bool:
    """True for ``s3://...``/``gs://...`` (and ``ObjectPath``), False for local paths."""
    return bool(scheme_of(p))


def unsupported_scheme(p: Any) -> str | None:
    """The scheme of a ``scheme://`` value this layer cannot serve (``http``, ``hdfs``...)."""
    head, sep, _ = str(p).partition("://")
    if sep and head and head.lower() not in (*OBJECT_SCHEMES, "file"):
        return head
    return None


def path(p: Any) -> Any:
    """A ``pathlib.Path`` for a local path, an ``ObjectPath`` for a URI (``ObjectPath`` and
    ``Path`` pass through). ``file://`` URIs become local paths."""
    if isinstance(p, (ObjectPath, Path)):
        return p
    text = os.fspath(p)
    if is_uri(text):
        return ObjectPath(text)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser()  # ``~``: this node's home (see pipeline.config._absolute)


def join(base: Any, *parts: str) -> str:
    """``base / parts`` as a string, for a local path or a URI (``Path`` would collapse
    ``s3://`` to ``s3:/``). A local ``~`` is kept: each node expands it with ``path``."""
    if is_uri(base):
        return str(path(base).joinpath(*parts))
    return os.path.join(os.fspath(base), *parts)


# ---------------------------------------------------------------------- filesystems
def _endpoint(scheme: str) -> str | None:
    if scheme == "gs":
        return os.environ.get("STORAGE_EMULATOR_HOST") or None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _gcs_filesystem(endpoint: str | None) -> pafs.FileSystem:
    """``GcsFileSystem`` takes no per-request timeouts (unlike ``S3FileSystem``): transient
    errors are retried for ``retry_time_limit``, so ``storage.request_timeout_s`` bounds that
    (a wrong endpoint fails after this long). An emulator (``STORAGE_EMULATOR_HOST``) is used
    without credentials, as Google's own clients do; ``storage.gcs_anonymous`` reads public
    buckets without them."""
    kwargs: dict[str, Any] = {
        "retry_time_limit": timedelta(seconds=_OPTIONS.request_timeout_s),
        "anonymous": _OPTIONS.gcs_anonymous or bool(endpoint),
    }
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host.rstrip("/") if sep else endpoint
        kwargs["scheme"] = scheme if sep else "http"
    return pafs.GcsFileSystem(**kwargs)


def filesystem_for(uri: str | ObjectPath) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem serving ``uri`` and the path inside it (``bucket/key``).

    Credentials come from the standard places of the cloud SDK on each node (for S3:
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
    ``~/.aws``, instance roles), the endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
    the region from ``AWS_REGION``/``AWS_DEFAULT_REGION``; never from the config files.
    Pass the returned filesystem to pandas/pyarrow/Ray Data readers (``filesystem=fs``).
    """
    op = uri if isinstance(uri, ObjectPath) else ObjectPath(str(uri))
    scheme = "gs" if op.scheme == "gcs" else op.scheme
    endpoint = _endpoint(scheme)
    # credentials in the key too: a process that switches AWS_PROFILE/keys gets a new client
    key = (scheme, endpoint or "", _OPTIONS, os.environ.get("AWS_ACCESS_KEY_ID", ""),
           os.environ.get("AWS_PROFILE", ""), os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""))
    with _LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            if scheme == "s3":
                kwargs: dict[str, Any] = {
                    "connect_timeout": _OPTIONS.connect_timeout_s,
                    "request_timeout": _OPTIONS.request_timeout_s,
                }
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    kwargs["region"] = region
                if endpoint:
                    kwargs["endpoint_override"] = endpoint
                    if endpoint.startswith("http://"):
                        kwargs["scheme"] = "http"
                fs = pafs.S3FileSystem(**kwargs)
            else:
                fs = _gcs_filesystem(endpoint)
            _FS_CACHE[key] = fs
    return fs, op.key_path


# ---------------------------------------------------------------------- ObjectPath
@dataclass(frozen=True)
class ObjectStat:
    """What ``Path.stat()`` callers read: size and modification time."""

    st_size: int
    st_mtime_ns: int

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9


class ObjectPath:
    """A key (or key prefix) in a bucket, with the ``pathlib`` methods the project uses.

    Object stores have no directories: a "directory" is a prefix with keys under it, ``mkdir``
    does nothing, and a directory's ``stat`` is a digest of its listing (names, sizes, mtimes),
    so adding, removing or replacing a file changes it as adding a file changes a folder's
    mtime on disk.
    """

    __slots__ = ("scheme", "bucket", "key", "_type")

    def __init__(self, uri: str, _type: Any = None):
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme.lower() not in OBJECT_SCHEMES:
            raise ValueError(f"not an object-storage URI: {uri}")
        # only trailing slashes go: ``s3:///x`` has an empty bucket, it is not bucket ``x``
        bucket, _, key = rest.rstrip("/").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri} (expected {scheme}://bucket/prefix)")
        key = key.strip("/")
        self.scheme = scheme.lower()
        self.bucket = bucket
        self.key = posixpath.normpath(key) if key else ""
        if self.key == ".":
            self.key = ""
        self._type = _type  # FileType from a listing (saves a request), else None

    # -- naming
    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: Any) -> ObjectPath:
        return self.joinpath(part)

    def joinpath(self, *parts: Any) -> ObjectPath:
        key = posixpath.join(self.key, *[str(p).strip("/") for p in parts if str(p)])
        return ObjectPath(f"{self.scheme}://{self.bucket}/{key}")

    @property
    def key_path(self) -> str:
        """``bucket/key``: the path inside the pyarrow filesystem."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{self.bucket}/{posixpath.dirname(self.key)}")

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self.scheme}://{self.bucket}", *[p for p in self.key.split("/") if p])

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> ObjectPath:
        return self.parent / (self.stem + suffix)

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def absolute(self) -> ObjectPath:
        return self

    def as_posix(self) -> str:
        return str(self)

    def relative_to(self, other: Any) -> Path:
        base = str(other).rstrip("/") + "/"
        if not str(self).startswith(base):
            raise ValueError(f"{self} is not under {other}")
        return Path(str(self)[len(base):])

    # -- queries
    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem_for(self)[0]

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key_path)

    def _kind(self) -> Any:
        return self._type if self._type is not None else self._info().type

    def exists(self) -> bool:
        return self._kind() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._kind() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._kind() == pafs.FileType.Directory

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.key_path, recursive=recursive, allow_not_found=True)
        return sorted(self.fs.get_file_info(sel), key=lambda i: i.path)

    def _child(self, info: pafs.FileInfo) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{info.path}", info.type)

    def iterdir(self) -> Iterator[ObjectPath]:
        for info in self._list(recursive=False):
            yield self._child(info)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """``*``/``?``/``[]`` per path component, like ``Path.glob`` (no ``**``)."""
        depth = pattern.count("/") + 1
        infos = self._list(recursive=depth > 1)
        base = len(self.key_path) + 1
        for info in infos:
            rel = info.path[base:]
            if rel.count("/") + 1 == depth and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(rel.split("/"), pattern.split("/"))
            ):
                yield self._child(info)

    def stat(self) -> ObjectStat:
        info = self._info()
        if info.type == pafs.FileType.File:
            return ObjectStat(int(info.size or 0), int(info.mtime_ns or 0))
        if info.type == pafs.FileType.Directory:
            import hashlib

            h = hashlib.sha256()
            total = 0
            for child in self._list(recursive=False):
                total += int(child.size or 0)
                h.update(f"{child.path}|{child.size}|{child.mtime_ns}\n".encode())
            return ObjectStat(total, int.from_bytes(h.digest()[:7], "big"))
        raise FileNotFoundError(f"no such object or prefix: {self}")

    # -- reading
    def open(self, mode: str = "r", encoding: str | None = None, **_kw: Any) -> Any:
        if mode in ("rb", "r"):
            try:
                raw = self.fs.open_input_file(self.key_path)
            except FileNotFoundError:
                raise
            except OSError as exc:
                if not self.exists():
                    raise FileNotFoundError(f"no such object: {self}") from exc
                raise
            return raw if mode == "rb" else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        if mode in ("wb", "w"):
            return _Upload(self, text=mode == "w", encoding=encoding or "utf-8")
        raise ValueError(f"unsupported mode {mode!r} for {self} (object storage: r, rb, w, wb)")

    def read_bytes(self) -> bytes:
        with self.open("rb") as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    # -- writing (each call is one complete object: visible only once uploaded)
    def write_bytes(self, data: bytes) -> int:
        with self.fs.open_output_stream(self.key_path) as out:
            out.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: prefixes exist once a key is written under them."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.key_path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete every key under this prefix."""
        if self.is_dir():
            self.fs.delete_dir(self.key_path)

    def upload(self, local: str | os.PathLike) -> None:
        """Upload a finished local file as this object (streamed; one object at completion)."""
        pafs.copy_files(os.fspath(local), self.key_path,
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


class _Upload(io.BytesIO):
    """``open(..., "wb")`` on object storage: bytes are kept until ``close`` and uploaded as one
    object then; leaving a ``with`` block by an exception uploads nothing."""

    def __init__(self, target: ObjectPath, text: bool, encoding: str):
        super().__init__()
        self._target, self._text, self._encoding = target, text, encoding
        self._discard = False

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self._text and isinstance(data, str):
            data = data.encode(self._encoding)
        return super().write(data)

    def close(self) -> None:
        if not self.closed and not self._discard:
            self._target.write_bytes(self.getvalue())
        super().close()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self._discard = True
        self.close()


# ---------------------------------------------------------------------- helpers
def read_bytes(p: Any) -> bytes:
    return path(p).read_bytes()


def scratch_root() -> Path:
    """The node-local temp dir for scratch files (``TMPDIR`` or the system default)."""
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def local_copy(p: Any, suffix: str | None = None) -> Iterator[str]:
    """A local file name for ``p``: the path itself when local, else a copy of the object in the
    node's scratch dir, removed afterwards (for decoders that need a file: videos)."""
    if not is_uri(p):
        yield os.fspath(path(p))
        return
    op = path(p)
    fd, name = tempfile.mkstemp(prefix=".obj-", suffix=suffix or op.suffix,
                                dir=scratch_root())
    os.close(fd)
    try:
        with op.open("rb") as src, open(name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def upload_tree(local_dir: str | os.PathLike, dest: Any) -> None:
    """Copy a local folder's files under ``dest`` (a URI or a local folder)."""
    d = path(dest)
    if not isinstance(d, ObjectPath):
        shutil.copytree(local_dir, d, dirs_exist_ok=True)
        return
    pafs.copy_files(os.fspath(local_dir), d.key_path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=d.fs)


#: where each object store's client takes its credentials and endpoint from (for messages)
_CREDENTIAL_HINT = {
    "s3": "credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
          "~/.aws; the endpoint from AWS_ENDPOINT_URL",
    "gs": "credentials come from GOOGLE_APPLICATION_CREDENTIALS or the machine's service "
          "account, storage.gcs_anonymous=true reads public buckets without them; an emulator "
          "from STORAGE_EMULATOR_HOST",
}


def check_access(uri: str, what: str) -> None:
    """Raise ``OSError`` with one line when ``uri``'s bucket cannot be used: missing bucket,
    wrong credentials, unreachable endpoint. Runs before any stage (the pre-flight)."""
    op = ObjectPath(uri)
    try:
        fs = filesystem_for(op)[0]
        info = fs.get_file_info(op.bucket)
        if info.type == pafs.FileType.NotFound:
            raise OSError(f"{what}={uri}: bucket '{op.bucket}' does not exist (or these "
                          "credentials cannot see it)")
        fs.get_file_info(pafs.FileSelector(op.key_path, allow_not_found=True))
    except OSError as exc:
        msg = " ".join(str(exc).split())
        if msg.startswith(f"{what}="):
            raise
        hint = _CREDENTIAL_HINT["gs" if op.scheme in ("gs", "gcs") else "s3"]
        raise OSError(f"{what}={uri}: cannot access the bucket: {_short(msg)} ({hint})") from None


def _short(msg: str) -> str:
    """The useful part of a cloud SDK error: ``AWS Error X during Y operation: text``, or the
    status of a ``google::cloud::Status(...)`` without its retry metadata."""
    i = msg.find("AWS Error")
    if i >= 0:
        return msg[i:]
    head = "google::cloud::Status("
    i = msg.find(head)
    if i >= 0:
        return msg[i + len(head):].split(" error_info=")[0].rstrip(")")
    return msg


def describe(exc: BaseException) -> str:
    """One line for a storage exception (an ``OSError`` of pyarrow or the OS), keeping the
    object it concerns (``When uploading ... key 'x' in bucket 'b': AWS Error ...``)."""
    msg = " ".join(str(exc).split())
    if "google::cloud::Status(" in msg:
        head = msg.split("google::cloud::Status(")[0]
        msg = head + _short(msg)
    return msg or type(exc).__name__


def append_object(target: Any, local: str | os.PathLike) -> None:
    """Object storage has no append: write ``target`` again as its old bytes followed by the
    local file's (logs only: small, written by one process at a time)."""
    op = path(target)
    try:
        old = op.read_bytes()
    except FileNotFoundError:
        old = b""
    with open(local, "rb") as fh:
        op.write_bytes(old + fh.read())


def read_table(p: Any, columns: list[str] | None = None) -> Any:
    """``pyarrow.parquet.read_table`` of one file on disk or in a bucket."""
    import pyarrow.parquet as pq

    if is_uri(p):
        fs, key = filesystem_for(str(p))
        return pq.read_table(key, columns=columns, filesystem=fs)
    return pq.read_table(path(p), columns=columns)


def read_schema(p: Any) -> Any:
    """``pyarrow.parquet.read_schema`` of one file on disk or in a bucket."""
    import pyarrow.parquet as pq

    if is_uri(p):
        with path(p).open("rb") as fh:
            return pq.read_schema(fh)
    return pq.read_schema(path(p))
