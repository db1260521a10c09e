"""Storage faults as a user meets them: one clear line each, never a raw traceback, never a lost
run log. Fast tests (no pipeline run): object storage is moto's S3 server on 127.0.0.1 (the
session fixture of conftest.py, or a server of the test's own where the test stops it) and a
closed local port stands for an unreachable Google Cloud Storage endpoint.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import storage
from pipeline.cli import main
from pipeline.runner import Runner
from tests.conftest import ROOT, S3_ENV


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


# ------------------------------------------------------------------ S3 outage mid-run
class OwnS3:
    """A moto S3 server of one test's own, which the test may stop (an outage) while the
    session server of conftest.py keeps serving the other tests."""

    def __init__(self) -> None:
        server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (dev extra)")
        self.server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0,
                                                    verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.up = True

    def stop(self) -> None:
        """The outage: stop serving and close the socket, so connections are refused."""
        if self.up:
            self.up = False
            self.server.stop()
            self.server._server.server_close()


@pytest.fixture
def own_s3(monkeypatch) -> Iterator[tuple[OwnS3, str]]:
    """A function-scoped S3 server with one bucket; the AWS environment points at it."""
    import boto3

    s3 = OwnS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(storage, "_FS_CACHE", {})
    monkeypatch.setattr(storage, "_OPTIONS", storage._OPTIONS)
    bucket = f"ma-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    try:
        yield s3, bucket
    finally:
        s3.stop()


FAST_S3 = ["storage.connect_timeout_s=1", "storage.request_timeout_s=2",
           "storage.lock_ttl_s=30", "progress=false"]


def test_s3_outage_mid_run_is_one_line_and_keeps_the_run_log(own_s3, tmp_path, monkeypatch,
                                                             capsys):
    """The bucket goes away while the driver works: the run stops with one line naming the
    storage failure (exit 1), and the run log, which could not be uploaded, is kept on this
    node with its path in that line. The stages themselves are replaced by the driver's own
    writes (log lines, then a JSON record, as ``plan.json`` and the ledger are written)."""
    from pipeline import log as plog
    from pipeline.io import write_json_atomic

    s3, bucket = own_s3
    uri = f"s3://{bucket}/work"

    def stages(self: Runner, target: str, chain: list[str]) -> dict[str, Any]:
        plog.log.info("work done before the outage")
        s3.stop()
        write_json_atomic({"shards": {}}, self.work_dir / "plan.json")
        raise AssertionError("the write to a stopped server succeeded")

    monkeypatch.setattr(Runner, "_run_locked", stages)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "stage=ingest", f"paths.work_dir={uri}", *FAST_S3])
    err = _one_line(capsys)
    assert code == 1, err
    assert "storage failed" in err and uri in err, err
    kept = re.search(r"kept at (\S+)", err)
    assert kept, err
    text = Path(kept.group(1)).read_text()
    assert "work done before the outage" in text
    assert "Traceback" in text, "the full traceback belongs in the kept run log"
    assert not any(tmp_path.glob("s3*"))
    os.unlink(kept.group(1))
    # status only reads: the same outage is one line too
    assert main(["status", f"paths.work_dir={uri}"]) == 1
    err = _one_line(capsys)
    assert f"cannot read {uri}" in err and "Could not connect" in err, err


def test_lease_lost_to_an_outage_stops_the_run_with_one_line(own_s3, capsys):
    """Renewals of the S3 lease fail while the bucket is down: the run's next check raises a
    ``StorageError`` (exit 1 at the command line), not a configuration error."""
    import time

    from pipeline import work_lock
    from pipeline.errors import StorageError

    s3, bucket = own_s3
    storage.configure({"connect_timeout_s": 1, "request_timeout_s": 1})
    lease = work_lock.acquire(f"s3://{bucket}/work", ttl_s=1.0)
    try:
        s3.stop()
        deadline = time.monotonic() + 30
        while lease._lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(StorageError, match="lost the run lock"):
            lease.check()
    finally:
        lease.close()


# ------------------------------------------------------------------ read-only work dir
def _refuse_writes_under(monkeypatch, root: Path) -> None:
    """What the kernel does in a read-only directory, for a process it would let through (root
    ignores a 0o555 mode): every open for writing under ``root`` fails with EACCES. Covers the
    ways Python creates files: ``open``/``io.open`` (``Path.open``, ``open(...)``) and ``os.open``
    (``tempfile``)."""
    real_os_open, real_open = os.open, builtins.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under(path: Any) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return False

    def denied(path: Any) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & write_flags and under(path):
            raise denied(path)
        return real_os_open(path, flags, *args, **kw)

    def py_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") \
                and under(file):
            raise denied(file)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)


def test_read_only_work_dir_is_one_line_before_any_stage(tmp_path, monkeypatch, capsys):
    """A work dir this user cannot write: one line, exit 2, before any stage runs (it used to
    be a PermissionError traceback from the run lock). The directory is chmod 0o555; tests run
    as root here, where that mode stops nothing, so the kernel's refusal is simulated
    (``_refuse_writes_under``); as another user the mode alone does it.
    ``test_work_dir_on_a_read_only_mount`` checks a real read-only mount where it can."""
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o555)
    if os.geteuid() == 0:
        _refuse_writes_under(monkeypatch, work)
    try:
        code = main(["run", "stage=ingest", f"paths.work_dir={work}", "progress=false"])
        err = _one_line(capsys)
    finally:
        monkeypatch.undo()
        work.chmod(0o755)
    assert code == 2, err
    assert f"paths.work_dir={work}" in err and "not writable" in err, err
    assert list(work.iterdir()) == [], "something was written"


def test_work_dir_on_a_read_only_mount(tmp_path):
    """The real thing: the CLI in a private mount namespace (``unshare -m``) where the work
    dir's parent is a read-only tmpfs (nothing is mounted outside that namespace). Skipped
    where namespaces or mounts are not permitted."""
    unshare = shutil.which("unshare")
    probe = [unshare, "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {tmp_path}"] \
        if unshare else None
    if probe is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs unshare -m and mount rights)")
    work = tmp_path / "work"
    script = (f"mount -t tmpfs -o ro tmpfs {tmp_path} && exec {sys.executable} -m pipeline run "
              f"stage=ingest paths.work_dir={work} progress=false")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    out = subprocess.run([unshare, "-m", "sh", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    err = out.stderr.strip()
    assert out.returncode == 2, out.stdout + err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"paths.work_dir={work}" in err and "not writable" in err, err


# ------------------------------------------------------------------ designer on object storage
@pytest.mark.parametrize("overrides", [
    ["paths.work_dir=s3://some-bucket/work"],
    ["paths.work_dir=s3://some-bucket/work", "image=photo.jpg"],
    ["dataset=re10k", "dataset.root=s3://some-bucket/re10k", "clip=abc"],
])
def test_designer_refuses_object_storage_with_one_line(overrides, tmp_path, monkeypatch,
                                                       capsys):
    """The designer reads images, depth and checkpoints through libraries that take file
    names: an s3:// work dir (or clip dataset) is refused at start-up with one line, where it
    used to become a local folder named 's3:'. The page itself never starts."""
    from pipeline import ui

    def no_page(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the designer page was started")

    monkeypatch.setattr(ui, "DesignerApp", no_page)
    monkeypatch.chdir(tmp_path)
    assert main(["ui", *overrides]) == 2
    err = _one_line(capsys)
    key = overrides[0].split("=")[0] if "work_dir" in overrides[0] else "dataset.root"
    assert key in err and "s3://some-bucket" in err and "local" in err, err
    assert not any(tmp_path.iterdir()), "the designer created local files"


# ------------------------------------------------------------------ stale run locks
LEASE_TTL_S = 600.0  # far in the future: only a dead holder makes these leases stale


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _put_lease(bucket: str, key: str, pid: int, host: str | None = None) -> None:
    """The lease object as a driver writes it (``owner`` is host:pid:token), unexpired."""
    import json
    import time

    import boto3

    body = {"owner": f"{host or socket.gethostname()}:{pid}:feedc0de",
            "expires_at": time.time() + LEASE_TTL_S, "ttl_s": LEASE_TTL_S}
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())


def _lease_exists(bucket: str, key: str) -> bool:
    import boto3

    return boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


@pytest.fixture
def s3_work(s3_server, monkeypatch, tmp_path) -> tuple[str, str]:
    """A fresh prefix in a bucket of the session S3 server, with a plan (status needs one)."""
    import boto3

    monkeypatch.setattr(storage, "_OPTIONS", storage._OPTIONS)
    monkeypatch.chdir(tmp_path)
    bucket = f"ma-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    storage.path(f"s3://{bucket}/work/plan.json").write_text('{"shards": {}}')
    return bucket, f"s3://{bucket}/work"


def _fake_run(monkeypatch) -> None:
    """``run`` without its stages: the lock is taken, the run log set up, and released."""
    def stages(self: Runner, target: str, chain: list[str]) -> dict[str, Any]:
        return {"exit_code": 0, "problems": []}

    monkeypatch.setattr(Runner, "_run_locked", stages)


def test_stale_lease_of_a_dead_driver_on_this_host(s3_work, monkeypatch, capsys):
    """A driver killed with -9 leaves its lease for up to storage.lock_ttl_s. Its host is this
    one and its pid is gone, so: status shows the holder as stale, unlock removes the lease,
    and a run takes it over at once (saying so) instead of waiting for the expiry."""
    bucket, uri = s3_work
    host, pid = socket.gethostname(), _dead_pid()
    _put_lease(bucket, "work/.run.lock", pid)
    assert main(["status", f"paths.work_dir={uri}"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("run lock"))
    assert f"{host}" in line and f"pid {pid}" in line and "stale" in line, line
    assert "expires in" in line and "age" in line, line
    assert "unlock" in line, line

    assert main(["unlock", f"paths.work_dir={uri}"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not _lease_exists(bucket, "work/.run.lock")
    assert main(["unlock", f"paths.work_dir={uri}"]) == 0  # nothing left: says so, exit 0
    assert "no run lock" in capsys.readouterr().out

    _put_lease(bucket, "work/.run.lock", pid)
    _fake_run(monkeypatch)
    assert main(["run", "stage=ingest", f"paths.work_dir={uri}", *FAST_S3]) == 0
    out = capsys.readouterr().out
    assert "took over the run lock" in out and f"pid {pid}" in out, out
    assert not _lease_exists(bucket, "work/.run.lock"), "released at the end"


def test_lease_of_a_live_process_is_not_broken(s3_work, capsys):
    """A holder on this host whose process runs (or any unexpired holder on another host) is
    alive: unlock refuses with one line and exit 1, status says it is held, a run is refused."""
    bucket, uri = s3_work
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for pid, host in ((sleeper.pid, None), (_dead_pid(), "some-other-host")):
            _put_lease(bucket, "work/.run.lock", pid, host)
            assert main(["unlock", f"paths.work_dir={uri}"]) == 1
            err = _one_line(capsys)
            assert "still held" in err and f"pid {pid}" in err, err
            assert _lease_exists(bucket, "work/.run.lock")
            assert main(["status", f"paths.work_dir={uri}"]) == 0
            line = next(ln for ln in capsys.readouterr().out.splitlines()
                        if ln.startswith("run lock"))
            assert "held by" in line and "stale" not in line, line
            assert main(["run", "stage=ingest", f"paths.work_dir={uri}", *FAST_S3]) == 2
            assert "another `run` is using" in _one_line(capsys)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_local_lock_holder_in_status_and_unlock(tmp_path, capsys):
    """The local flock: status names the holder while a run holds it and unlock refuses; a
    record left behind by a killed run (the flock itself died with it) is shown as stale and
    removed by unlock."""
    import json

    from pipeline import work_lock

    work = tmp_path / "work"
    work.mkdir()
    (work / "plan.json").write_text('{"shards": {}}')
    lock = work_lock.acquire(str(work), LEASE_TTL_S)
    try:
        assert main(["status", f"paths.work_dir={work}"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines()
                    if ln.startswith("run lock"))
        assert f"pid {os.getpid()}" in line and socket.gethostname() in line, line
        assert "held by" in line and "stale" not in line, line
        assert main(["unlock", f"paths.work_dir={work}"]) == 1
        assert "still held" in _one_line(capsys)
    finally:
        lock.close()
    assert main(["status", f"paths.work_dir={work}"]) == 0
    assert "run lock" not in capsys.readouterr().out  # released: nothing to show

    pid = _dead_pid()
    (work / ".run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                "started_at": 0.0}))
    assert main(["status", f"paths.work_dir={work}"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run lock"))
    assert "stale" in line and f"pid {pid}" in line, line
    assert main(["unlock", f"paths.work_dir={work}"]) == 0
    assert not (work / ".run.lock").exists()


def test_task_log_is_kept_when_its_upload_fails(own_s3, tmp_path, caplog):
    """A task's log on an object-storage work dir is uploaded when the task ends; with the
    bucket down it stays on the node, and the warning says where."""
    from pipeline.stage import _upload_log

    s3, bucket = own_s3
    storage.configure({"connect_timeout_s": 1, "request_timeout_s": 1})
    local = tmp_path / "metric-align-ingest-shard-0.log"
    local.write_text("what the task did\n")
    s3.stop()
    _upload_log(str(local), f"s3://{bucket}/work/logs/ingest/shard-0.log")
    assert local.read_text() == "what the task did\n"
    assert f"kept at {local}" in caplog.text
