"""Atomic Parquet/JSON writes: a crash can never leave a half-written file under a final name.

Temp files start with ``.`` so Parquet dataset readers (pyarrow, pandas, Ray) ignore them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_path(path: Path, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 is for the temp only


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path`` for any writer (Parquet, torch.save, a video encoder);
    on success it is fsynced and renamed onto ``path``, on error removed. The one atomic-write
    helper of the project. ``suffix``: for writers that pick the format from the name."""
    path = Path(path)
    tmp = _tmp_path(path, suffix)
    try:
        yield tmp
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` via a same-directory temp file and ``os.replace``."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    write_bytes_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of an output; downstream fingerprints chain on it to detect staleness."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stable_hash(obj: Any) -> str:
    """Order-independent hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
