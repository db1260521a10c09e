"""Atomic Parquet/JSON writes: a crash can never leave a half-written file under a final name.

Local disk: a temp file beside the target, fsynced and renamed onto it. Temp files start with
``.`` so Parquet dataset readers (pyarrow, pandas, Ray) ignore them. Object storage
(``s3://``, ``gs://``; see ``pipeline.storage``): the writer fills a temp file in the node's
local temp dir, which is then uploaded as one object; an object is visible only once its upload
completed, so readers of the prefix never see a partial file and nothing needs renaming.
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

from pipeline import storage


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
def atomic_path(path: Any, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path`` for any writer (Parquet, torch.save, a video encoder);
    on success it is fsynced and renamed onto ``path``, on error removed. The one atomic-write
    helper of the project. ``suffix``: for writers that pick the format from the name.
    For an object-storage ``path`` the temp file is in the node's temp dir and is uploaded as
    one object on success (see the module docstring)."""
    if storage.is_uri(path):
        target = storage.path(path)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix,
                                    dir=storage.scratch_root())
        os.close(fd)
        try:
            yield Path(name)
            target.upload(name)
        finally:
            Path(name).unlink(missing_ok=True)
        return
    path = Path(path)
    tmp = _tmp_path(path, suffix)
    try:
        yield tmp
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, path: Any) -> None:
    """Write ``table`` to ``path`` via a same-directory temp file and ``os.replace``."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_bytes_atomic(data: bytes, path: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(obj: Any, path: Any, allow_nan: bool = True) -> None:
    """``allow_nan=False``: strict JSON for files other programs read (a NaN or infinity
    raises ``ValueError`` before anything is written, instead of an unparsable file)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=allow_nan)
    write_bytes_atomic(text.encode(), path)


def read_json(path: Any) -> Any:
    with storage.path(path).open("rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


def file_digest(path: Any) -> str:
    """Content hash of an output; downstream fingerprints chain on it to detect staleness."""
    h = hashlib.sha256()
    with storage.path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _stat_entry(p: Any) -> list[int]:
    st = p.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def files_digest(paths: list[Any]) -> str:
    """Size and modification time of files a stage reads, as one digest (inputs are
    fingerprinted this way, as ingest does: content hashes would read every byte). A folder
    counts every file under it, so a file added, removed or replaced in it is seen; a missing
    path counts as missing, so creating it later is seen too."""
    out: dict[str, Any] = {}
    for raw in sorted({str(x) for x in paths if x}):
        p = storage.path(raw)
        if p.is_dir():
            entries: dict[str, list[int]] = {}
            todo = [p]
            while todo:
                d = todo.pop()
                for child in d.iterdir():
                    if child.is_dir():
                        todo.append(child)
                    else:
                        entries[str(child)[len(str(p)):]] = _stat_entry(child)
            out[raw] = entries
        elif p.exists():
            out[raw] = _stat_entry(p)
        else:
            out[raw] = None
    return stable_hash(out)


def stable_hash(obj: Any) -> str:
    """Order-independent hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
