"""Ray start-up and sizing helpers.

Local Ray by default (CPU count from config, dashboard off, a small object store: shards move
file paths, never frames). ``ray.address`` joins an existing cluster exactly as ``ray start``
users expect. A process that already has Ray initialised (tests, notebooks) keeps its session.
"""

from __future__ import annotations

import os
from typing import Any


def init_ray(cfg: dict[str, Any]) -> None:
    import ray

    if ray.is_initialized():
        return
    rc = cfg["ray"]
    # Ray >= 2.5x turns on token auth for new local clusters; a single-user local run (and a
    # cluster the user started themselves) is reached without one unless they configured it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if rc.get("address"):
        ray.init(address=rc["address"], **kwargs)
        return
    if rc.get("num_cpus") is not None:
        kwargs["num_cpus"] = int(rc["num_cpus"])
    if rc.get("num_gpus") is not None:
        kwargs["num_gpus"] = int(rc["num_gpus"])
    if rc.get("object_store_memory"):
        kwargs["object_store_memory"] = int(rc["object_store_memory"])
    # "local": always a fresh instance, never silently joining another Ray found on this machine
    ray.init(address="local", **kwargs)


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def max_in_flight(cfg: dict[str, Any]) -> int:
    """Enough queued shards to keep every CPU busy, without flooding the scheduler."""
    configured = cfg["ray"].get("max_in_flight")
    return int(configured) if configured else max(2, 2 * cluster_cpus())


def node_id() -> str:
    """The Ray node a shard ran on (ledger ``_node``): shows how work spread over a cluster."""
    try:
        import ray

        if not ray.is_initialized():
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def task_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """Cluster-wide task options; ``SPREAD`` distributes shards over nodes (IO-bound stages).
    ``ray.forward_env`` names driver environment variables every task receives (a cluster's
    workers otherwise see only their own node's environment)."""
    strategy = cfg["ray"].get("scheduling_strategy") or "DEFAULT"
    out: dict[str, Any] = {"scheduling_strategy": strategy}
    env = forwarded_env(cfg)
    if env:
        out["runtime_env"] = {"env_vars": env}
    return out


def forwarded_env(cfg: dict[str, Any]) -> dict[str, str]:
    names = (cfg.get("ray") or {}).get("forward_env") or []
    return {n: os.environ[n] for n in names if n in os.environ}


def check_shared_dir(work_dir: str) -> None:
    """With more than one alive node, every node must see the same ``work_dir``: the driver
    writes a probe file with a random token and a task pinned to each node reads it back.
    Stops with one ``ConfigError`` line otherwise (outputs would be scattered over nodes' disks
    and the driver could not find them)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline import storage
    from pipeline.errors import ConfigError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = uuid.uuid4().hex
    rel = f".shared-probe-{token}"
    probe = storage.path(work_dir) / rel
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)

    def read_probe(root: str, name: str) -> str | None:
        p = storage.path(root) / name
        try:
            return p.read_text()
        except OSError:
            return None

    try:
        remote = ray.remote(read_probe)
        refs = {
            n["NodeID"]: remote.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(work_dir, rel)
            for n in nodes
        }
        seen = {nid: ray.get(ref) for nid, ref in refs.items()}
    finally:
        probe.unlink(missing_ok=True)
    blind = [nid for nid, got in seen.items() if got != token]
    if blind:
        addr = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
        raise ConfigError(
            f"paths.work_dir={work_dir} is not shared by the cluster's {len(nodes)} nodes "
            f"({len(blind)} do not see the driver's files, e.g. node {blind[0][:12]} at "
            f"{addr[blind[0]]}): use a shared filesystem mounted at the same path on every "
            "node, or object storage (paths.work_dir=s3://bucket/prefix)")
