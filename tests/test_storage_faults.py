"""Storage faults as a user meets them: one clear line each, never a raw traceback, never a lost
run log. Fast tests (no pipeline run): object storage is moto's S3 server on 127.0.0.1 (the
session fixture of conftest.py, or a server of the test's own where the test stops it) and a
closed local port stands for an unreachable Google Cloud Storage endpoint.
"""

from __future__ import annotations

import socket

import pytest

from pipeline import storage
from pipeline.cli import main


def _closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def gcs_unreachable(monkeypatch):
    """Google's emulator convention (``STORAGE_EMULATOR_HOST``) pointed at a closed port; fresh
    filesystem clients and storage options, restored afterwards."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(storage, "_FS_CACHE", {})
    monkeypatch.setattr(storage, "_OPTIONS", storage._OPTIONS)


# ------------------------------------------------------------------ gs://
def test_gs_filesystem_is_constructed_without_type_error(gcs_unreachable):
    """The README says gs:// works for reading a dataset: building its client must not fail on
    the installed pyarrow's GcsFileSystem arguments (they differ from S3FileSystem's)."""
    fs, key = storage.filesystem_for("gs://some-bucket/data")
    assert key == "some-bucket/data" and fs.type_name == "gcs"
    op = storage.path("gs://some-bucket/data/train")
    assert op.fs is fs


def test_unreachable_gs_dataset_is_one_line_before_any_stage(gcs_unreachable, tmp_path,
                                                             capsys):
    work = tmp_path / "work"
    code = main(["run", "dataset=re10k", "dataset.root=gs://some-bucket/re10k",
                 f"paths.work_dir={work}", "storage.request_timeout_s=1"])
    err = _one_line(capsys)
    assert code == 2, err
    assert "dataset.root=gs://some-bucket/re10k" in err and "cannot access" in err, err
    assert "GOOGLE_APPLICATION_CREDENTIALS" in err and "AWS" not in err, err
    assert not work.exists(), "something was written before the check"


# ------------------------------------------------------------------ URI without a bucket
@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "gs://", "s3:////"])
@pytest.mark.parametrize("command", ["run", "status"])
def test_uri_without_bucket_is_one_line(uri, command, capsys):
    assert main([command, f"paths.work_dir={uri}"]) == 2
    err = _one_line(capsys)
    assert f"paths.work_dir={uri}" in err and "no bucket" in err, err


def test_object_path_refuses_an_empty_bucket():
    """``s3:///x`` is not bucket ``x``: the empty authority is a missing bucket."""
    for uri in ("s3://", "s3:///x", "gs:///a/b"):
        with pytest.raises(ValueError, match="no bucket"):
            storage.path(uri)
    assert str(storage.path("s3://b/x/")) == "s3://b/x"
