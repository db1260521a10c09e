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
    """Cluster-wide task options; ``SPREAD`` distributes shards over nodes (IO-bound stages)."""
    strategy = cfg["ray"].get("scheduling_strategy") or "DEFAULT"
    return {"scheduling_strategy": strategy}
