"""Atomic Parquet/JSON writes: a crash can never leave a half-written file under a final name.

Temp files start with ``.`` so Parquet dataset readers (pyarrow, pandas, Ray) ignore them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` via a same-directory temp file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_bytes(data)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
