"""The contract between the runner and a stage: the only thing the engine knows of a stage.

The runner owns shards, the ledger, Ray, logs and resume; a stage declares what it is and turns
its inputs into one output file. Two kinds of stage exist, both run through the same
fingerprint, ledger, ``force`` and ``status``:

- ``sharded``: one task per shard. Every stage's shard ``i`` covers the same clips as the
  source stage's shard ``i``, so a stage reads its upstream outputs for that shard by name from
  ``ShardTask.inputs``.
- ``global``: one task for the whole dataset (training, sampling), shard id ``GLOBAL_SHARD``;
  ``ShardTask.inputs_all`` lists every done upstream shard output and they all fingerprint it.

A sharded stage may also declare a dataset-wide ``finalize`` (curate's metadata and report):
with ``finalize_output`` set, the runner runs it as the stage's global step, recorded in the
ledger under ``GLOBAL_SHARD`` like a global stage.

Failures have a kind. ``input`` (a ``ClipError``: bad data, expected) is cached with the shard
and reported. ``error`` (any other exception for one clip: a bug, an NFS hiccup, out of memory)
keeps the rest of the shard but leaves the shard not fresh: it is retried on the next run, up to
``retry.max_attempts`` attempts, and the run exits non-zero. An exception escaping
``process_shard`` fails the whole shard (also retried, with the same cap).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import resource
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pipeline import ray_utils
from pipeline.errors import ERROR, INPUT, ClipError, FailureKind

__all__ = ["ERROR", "INPUT", "ClipError", "FailureKind"]  # re-exported for stages

log = logging.getLogger(__name__)

#: stage kinds
SHARDED, GLOBAL = "sharded", "global"
StageKind = Literal["sharded", "global"]
#: the shard id of a global stage's task and of a sharded stage's finalize step
GLOBAL_SHARD = "_global"


class StageNotImplemented(RuntimeError):
    """Raised for declared stages whose implementation has not landed yet."""


class Failures(dict):
    """``clip_id -> reason`` (what stages always returned) that also carries each failure's kind,
    so ``ShardResult(failures=...)`` built from ``for_each_clip`` keeps the kinds without any
    change to the stage."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kinds: dict[str, str] = {}

    def add(self, clip_id: str, reason: str, kind: str = INPUT) -> None:
        self[clip_id] = reason
        self.kinds[clip_id] = kind


@dataclass
class ShardTask:
    stage: str
    shard_id: str
    clip_ids: list[str]
    inputs: dict[str, str]  # upstream stage name -> absolute Parquet path of this shard
    output: str  # absolute path this stage must write (atomically)
    cfg: dict[str, Any]  # the whole resolved config as plain containers
    work_dir: str  # absolute
    # dataset-wide values computed on the driver (e.g. curate cut-offs, ingest's sources)
    extra: dict[str, Any] = field(default_factory=dict)
    #: global stages: upstream stage -> every done shard output of it (sorted)
    inputs_all: dict[str, list[str]] = field(default_factory=dict)
    #: this task's fingerprint; global stages keep it beside resumable state (checkpoints)
    fingerprint: str = ""
    #: True when earlier state of this shard must not be resumed (force=true, or the
    #: fingerprint changed since the last attempt)
    restart: bool = False


@dataclass
class ShardResult:
    """What a task returns. ``stats`` are the task's metrics (small JSON-able figures)."""

    n_clips: int
    n_ok: int
    failures: dict[str, str] = field(default_factory=dict)  # clip_id -> reason
    stats: dict[str, Any] = field(default_factory=dict)
    #: clips dropped on purpose (not failures), clip_id -> rule
    filtered: dict[str, str] = field(default_factory=dict)
    #: digest of inputs the output only names by path (frames, videos): chained downstream
    inputs_digest: str | None = None
    #: clip_id -> ``input`` | ``error``; clips missing here are ``input``
    failure_kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kinds = getattr(self.failures, "kinds", None)  # a Failures from for_each_clip
        if kinds:
            self.failure_kinds = {**kinds, **self.failure_kinds}
        self.failures = dict(self.failures)

    def kind_of(self, clip_id: str) -> str:
        return self.failure_kinds.get(clip_id, INPUT)


@dataclass(frozen=True)
class Reads:
    """Everything a stage reads, declared in one place (``Stage.reads``); the engine plans,
    chains and fingerprints exactly this.

    A stage whose reads depend on its own settings (evaluate: which source) overrides
    ``config_view`` / ``file_inputs`` for that part only.
    """

    #: stages whose outputs it reads: the same shard's (sharded) or every done shard (global);
    #: their output digests chain into its fingerprint
    upstream: tuple[str, ...] = ()
    #: config sections (top-level keys) whose values fingerprint its outputs
    config: tuple[str, ...] = ()
    #: dotted paths inside ``config`` left out of the fingerprint: settings it reads that do not
    #: change its outputs (a change there must not redo, or wipe, them)
    config_exclude: tuple[str, ...] = ()
    #: dotted config keys naming files or folders it reads that no upstream output stands for
    #: (an own image, a trajectory file): when set, their sizes and modification times
    #: fingerprint it
    files: tuple[str, ...] = ()


def config_value(cfg: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a plain config, or None where any part is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def stage_config_view(cfg: dict[str, Any], keys: tuple[str, ...],
                      exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The slice of config that fingerprints a stage (so unrelated edits don't invalidate it):
    the sections ``keys`` without the dotted paths ``exclude`` (``"train.sampling"``), settings
    the stage reads that do not change its outputs."""
    view = {k: cfg.get(k) for k in keys}
    if not exclude:
        return view
    view = copy.deepcopy(view)
    for dotted in exclude:
        *parents, last = dotted.split(".")
        node: Any = view
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return view


class Stage:
    """Base class: subclasses declare ``reads`` and the other class attributes and implement
    ``process_shard``.

    Register an instance from the stage's own module with ``pipeline.registry.register``.
    """

    name: str = ""
    kind: StageKind = SHARDED
    #: what it reads (upstream outputs, config sections, files): the one declaration the
    #: engine fingerprints. ``upstream``, ``config_keys`` and ``config_exclude`` below mirror it
    #: (a stage that declares only those, the earlier spelling, gets ``reads`` built from them)
    reads: ClassVar[Reads] = Reads()
    upstream: tuple[str, ...] = ()
    implemented: bool = True
    #: part of ``stage=all`` (the data pipeline); training-like stages say False
    in_all: bool = True
    #: the stage that discovers clips and from whose clips the shards are cut (one per run)
    is_source: bool = False
    #: output directory under the work dir (default: the stage name)
    output_dir: str = ""
    #: global stages: output file name under ``output_dir`` (default ``<shard>.parquet``)
    output_name: str = ""
    #: sharded stages with a dataset-wide ``finalize``: the file it writes under output_dir
    finalize_output: str = ""
    #: config sections (top-level keys) whose values fingerprint this stage's outputs
    config_keys: tuple[str, ...] = ()
    #: dotted paths inside ``config_keys`` left out of the fingerprint: settings the stage reads
    #: that do not change its outputs (a change there must not redo, or wipe, them)
    config_exclude: tuple[str, ...] = ()
    #: bump when the stage's code changes its outputs (fingerprints change, shards re-run)
    version: int = 1
    #: typed schemas of this stage's config sections, checked at compose time
    #: (``{"section": dataclass}``, see ``pipeline.settings``)
    settings: ClassVar[dict[str, type]] = {}
    # Global stages run in the driver process (they may start their own Ray work, e.g. Ray
    # Train); sharded stages run as Ray tasks, or on ``make_executor``'s pool.

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "reads" in cls.__dict__:  # declared: the mirrors follow it
            cls.upstream = cls.reads.upstream
            cls.config_keys = cls.reads.config
            cls.config_exclude = cls.reads.config_exclude
        else:  # the earlier spelling (or inherited): one declaration built from it
            cls.reads = Reads(upstream=tuple(cls.upstream), config=tuple(cls.config_keys),
                              config_exclude=tuple(cls.config_exclude),
                              files=cls.reads.files)

    def out_dir_name(self, cfg: dict[str, Any]) -> str:
        return self.output_dir or self.name

    def config_view(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The settings that fingerprint this stage's outputs: ``reads.config`` minus
        ``reads.config_exclude``. Override when which settings matter depends on the config
        itself (a stage reading another stage's section only in one mode)."""
        return stage_config_view(cfg, self.reads.config, self.reads.config_exclude)

    def output_file(self, cfg: dict[str, Any], shard_id: str) -> str:
        """Path of a shard's output relative to the work dir."""
        name = self.output_name if (self.output_name and shard_id == GLOBAL_SHARD) else (
            f"{shard_id}.parquet")
        return f"{self.out_dir_name(cfg)}/{name}"

    def resources(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Ray options for one shard task (num_cpus, num_gpus, memory...)."""
        return {"num_cpus": 1}

    def check_inputs(self, cfg: dict[str, Any]) -> None:
        """Called on the driver at start-up, before ``check_ready`` and before Ray starts: raise
        ``ConfigError`` for inputs that are not there (a mistyped dataset root...). Cheap checks
        only, so that the most specific problem is reported first and in a second."""

    def check_ready(self, cfg: dict[str, Any]) -> None:
        """Called on the driver before the first stage of a run that includes this stage:
        raise ``ConfigError`` for anything that would fail later (model weights missing...)."""

    def discover(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Source stage only: clip id -> JSON-able description of its inputs."""
        raise NotImplementedError(f"stage '{self.name}' is not a source stage")

    def shard_extra(self, ctx: Any, shard_id: str, clip_ids: list[str]) -> dict[str, Any]:
        """Per-shard values computed on the driver, passed in ``ShardTask.extra`` and folded
        into that shard's fingerprint (the source stage passes each clip's discovered inputs)."""
        return {}

    def process_shard(self, task: ShardTask) -> ShardResult:  # pragma: no cover - abstract
        raise StageNotImplemented(f"stage '{self.name}' is declared but not implemented yet")

    def make_executor(self, cfg: dict[str, Any]) -> Any | None:
        """Return an executor to replace plain Ray tasks, e.g. a GPU actor pool that loads a
        model once (``pipeline.pool.ShardActorPool``, whose actors run tasks through
        ``execute``): ``submit(task)`` returns a key, ``next_done()`` waits for at least one
        submitted task and returns ``[(key, TaskOutcome)]``, ``close()`` releases it;
        ``None`` = Ray tasks."""
        return None

    def output_problem(self, output: Any) -> str | None:
        """Why a done output (its path) can no longer be used, or None; asked by ``run`` and
        ``status`` alike, so it must be cheap (a listing, a file header, never a full read).
        A problem makes the shard stale with the same fingerprint: it is redone, and a global
        stage resumes what it kept (train: from its last readable checkpoint)."""
        return None

    def file_inputs(self, ctx: Any) -> list[str]:
        """Files and folders this stage reads that no upstream output stands for (a user's
        image, a folder of videos, another stage's checkpoints): the runner folds their sizes
        and modification times (every file under a folder) into every shard's fingerprint, so
        editing, adding or removing one makes the outputs stale. By default the values of the
        ``reads.files`` keys that are set."""
        values = (config_value(ctx.cfg, key) for key in self.reads.files)
        return [str(v) for v in values if v]

    def prepare(self, ctx: Any) -> dict[str, Any]:
        """Dataset-wide values computed on the driver before shards run (passed as
        ``ShardTask.extra`` and folded into every shard's fingerprint)."""
        return {}

    def finalize(self, ctx: Any) -> dict[str, Any] | None:
        """Dataset-wide work after the shards (only with ``finalize_output``): returns metrics."""
        return None


# ---------------------------------------------------------------------- per-clip isolation
T = TypeVar("T")


def error_reason(exc: BaseException) -> str:
    """One line for an unexpected exception: type, message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}{where}"


def for_each_clip(
    items: Iterable[tuple[str, T]], fn: Callable[[str, T], Any]
) -> tuple[list[Any], Failures]:
    """Run ``fn`` per clip; one bad clip never takes down its shard.

    ``ClipError`` is an ``input`` failure (reason kept verbatim). Anything else is an ``error``
    failure: the traceback goes to the shard's log file and the shard retries on the next run.
    """
    results: list[Any] = []
    failures = Failures()
    for clip_id, item in items:
        try:
            out = fn(clip_id, item)
        except ClipError as exc:
            failures.add(clip_id, exc.reason, exc.kind)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            log.error("clip %s: unexpected error\n%s", clip_id, traceback.format_exc())
            failures.add(clip_id, error_reason(exc), ERROR)
        else:
            if out is not None:
                results.append(out)
    return results, failures


# ---------------------------------------------------------------------- one execution path
@dataclass
class TaskOutcome:
    """What comes back from any task, wherever it ran (Ray task, actor, driver)."""

    ok: bool
    result: ShardResult | None = None
    error: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    node: str = "?"
    #: the shard this answers (set by ``execute``): a pool that hands results back in the order
    #: they finish, not the order they were submitted, says whose result it is
    shard_id: str | None = None


def shard_log_path(work_dir: str, stage: str, shard_id: str) -> str:
    from pipeline import storage

    return storage.join(work_dir, "logs", stage, f"{shard_id}.log")


def execute(fn: Callable[[ShardTask], ShardResult], task: ShardTask,
            in_worker: bool = False) -> TaskOutcome:
    """Run one task and never raise: errors travel back as text, the full traceback and every
    log record of the task go to ``<work_dir>/logs/<stage>/<shard>.log``.

    ``in_worker`` (a Ray task or actor, never the driver): what the process prints at the file
    descriptor level (COLMAP and other native code) goes to that log file too, instead of
    being forwarded to the driver's console at any moment, also after the run's summary."""
    import contextlib

    from pipeline import storage
    from pipeline.capture import redirect_output

    storage.configure(task.cfg.get("storage"))
    target = shard_log_path(task.work_dir, task.stage, task.shard_id)
    if storage.is_uri(target):  # no append on object storage: a local file, uploaded at the end
        # a visible name: kept, and named in a warning, when the upload fails
        path = os.path.join(storage.scratch_root(), f"metric-align-{task.stage}-{task.shard_id}-"
                                                    f"{os.getpid()}-{time.time_ns()}.log")
    else:
        path = str(storage.path(target))
        os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    t0, c0 = time.perf_counter(), time.process_time()
    log.info("%s shard %s: %d clips", task.stage, task.shard_id, len(task.clip_ids))
    try:
        with redirect_output(path) if in_worker else contextlib.nullcontext():
            result = fn(task)
        out = TaskOutcome(ok=True, result=result)
    except Exception:  # noqa: BLE001 - recorded in the ledger, the shard is retried
        text = traceback.format_exc(limit=8)
        log.error("%s shard %s crashed\n%s", task.stage, task.shard_id, text)
        out = TaskOutcome(ok=False, error=text)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        if storage.is_uri(target):
            _upload_log(path, target)
    out.wall_s = time.perf_counter() - t0
    out.cpu_s = time.process_time() - c0
    out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out.node = ray_utils.node_id()
    out.shard_id = task.shard_id
    return out


def _upload_log(local: str, target: str) -> None:
    """Append a task's local log to its object-storage log (never fails the task). When the
    upload fails the local file stays, named in a warning: storage being down must not lose
    the log that would explain the shard."""
    from pipeline import storage

    try:
        storage.append_object(target, local)
    except Exception as exc:  # noqa: BLE001 - a log upload must not turn a good shard into a failure
        log.warning("could not upload the task log to %s (%s); it is kept at %s on node %s",
                    target, storage.describe(exc), local, ray_utils.node_id())
        return
    try:
        os.unlink(local)
    except OSError:
        pass


# ---------------------------------------------------------------------- reporting
_SIZE = re.compile(r"\b\d+x\d+\b")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")
_SLASHED = re.compile(r"[^\s'\"(),;]*/[^\s'\"(),;]*")
_EXT = re.compile(r"\.\w{1,5}$")


def _path_or_word(m: re.Match) -> str:
    """A token with a slash is a path when it looks like one (absolute or relative start, two
    or more slashes, or a file extension); ``depth/point`` stays a word."""
    tok = m.group(0)
    looks = (tok.startswith(("/", "./", "../", "~/", "file:")) or tok.count("/") >= 2
             or _EXT.search(tok.rstrip("/:")) is not None)
    return "<path>" if looks else tok
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def reason_key(reason: str, clip_id: str | None = None) -> str:
    """A failure reason with what differs between clips taken out (the clip id, paths, sizes,
    numbers), so ``failed.by_reason`` counts one key per kind of problem. Numbers are replaced
    only as whole tokens: ``.mp4`` and ``utf-8`` stay intact."""
    text = reason
    if clip_id:
        text = text.replace(clip_id, "<clip>")
    text = _SLASHED.sub(_path_or_word, text)
    text = _HEX.sub("#", _SIZE.sub("#x#", text))
    return _NUMBER.sub("#", text)
